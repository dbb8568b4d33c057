"""`rlhf dpo --devices 2` (two gloo processes of one thread on CPU, started by `rlhf.launch`) against
the same run on one process: each process takes half of every micro-batch and DDP averages the
adapter's gradients, so metrics and weights agree up to float summation order (1e-4 after 4 steps,
as for the reward trainer); rank 0 alone writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy_trainer_checks import check_two_processes_match_one
from test_multiprocess import run_rlhf
from test_reward_helpers import build_tiny_model, synthetic_rows, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def dpo_args(tiny_dir: Path, data: Path, out: Path, devices: int) -> list[str]:
    return ["dpo", "--preference-dataset", str(data), "--output-dir", str(out), "--large-model-reference",
            str(tiny_dir), "--reinforcement-learning-train-steps", "4", "--batch-size", "6",
            "--gradient-accumulation-steps", "2", "--reinforcement-learning-rate-multiplier", "20",
            "--checkpoint-every", "2", "--log-every", "1", "--sample-count", "2",
            "--lora-target-modules", "q_proj", "v_proj", "--prompt-sequence-length", "64",
            "--target-sequence-length", "16", "--devices", str(devices)]


def test_dpo_on_two_processes_matches_one(tmp_path):
    tiny_dir = build_tiny_model(tmp_path / "tiny", hidden=32)
    data = write_jsonl(tmp_path / "pref.jsonl", synthetic_rows(60, seed=5))
    one, two = tmp_path / "one", tmp_path / "two"
    run_rlhf(dpo_args(tiny_dir, data, one, 1))
    done = run_rlhf(dpo_args(tiny_dir, data, two, 2))
    assert done.stderr.count("; world size 2") == 1  # rank 0 logs it, once
    s1, s2 = check_two_processes_match_one(one, two)
    assert s1["heldout/accuracy"] == pytest.approx(s2["heldout/accuracy"], abs=1e-6)
    assert s1["heldout/margin"] == pytest.approx(s2["heldout/margin"], abs=1e-4)
