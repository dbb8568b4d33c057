"""`rlhf sft --devices 2` (two gloo processes of one thread on CPU, started by `rlhf.launch`) against
the same run on one process: each process takes half of every micro-batch and scales its summed loss
by the step's tokens, so losses and weights agree up to float summation order; rank 0 alone writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from policy_trainer_checks import check_two_processes_match_one
from test_multiprocess import run_rlhf, weights_close
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def sft_args(tiny_dir: Path, data: Path, out: Path, devices: int) -> list[str]:
    # Uneven micro-batches (5 examples on 2 processes) and answers of different lengths test the
    # token weighting; no LoRA dropout, whose masks depend on the split.
    return ["sft", "--sft-dataset", str(data), "--output-dir", str(out), "--large-model-reference", str(tiny_dir),
            "--sft-train-steps", "4", "--batch-size", "5", "--gradient-accumulation-steps", "2",
            "--sft-learning-rate-multiplier", "20", "--checkpoint-every", "2", "--log-every", "1",
            "--lora-dropout", "0", "--lora-target-modules", "q_proj", "v_proj", "--prompt-sequence-length", "32",
            "--target-sequence-length", "16", "--heldout-fraction", "0.1", "--devices", str(devices)]


def test_sft_on_two_processes_matches_one(tmp_path):
    tiny_dir = build_tiny_model(tmp_path / "tiny", hidden=32)
    rows = [{"input_text": r["messages"][0]["content"], "output_text": r[k]}
            for r in synthetic_rows(30, seed=5) for k in ("chosen", "rejected")]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    one, two = tmp_path / "one", tmp_path / "two"
    run_rlhf(sft_args(tiny_dir, data, one, 1))
    done = run_rlhf(sft_args(tiny_dir, data, two, 2))
    assert done.stderr.count("examples; world size 2") == 1  # rank 0 logs the step's line, once
    s1, s2 = check_two_processes_match_one(one, two)
    merged = [load_file(str(d / "merged_model" / "model.safetensors")) for d in (one, two)]
    weights_close(*merged, atol=1e-4)
    assert s1["heldout/loss"] == pytest.approx(s2["heldout/loss"], abs=1e-4)
