"""The reward step with its frozen base sharded over 2 gloo processes (FSDP2, `--shard-base`), on CPU,
against the same 2-process run replicated (DDP).

The sharded run computes what the replicated one does: the same shares of every micro-batch, the
same base weights (gathered per layer around each forward and backward), the trainable LoRA and head
parameters whole on both processes and their gradients averaged by one all-reduce (DDP's bucketed
all-reduce in the replicated run). Only summation order differs, so metrics and weights agree to
1e-5 (absolute) after 6 steps. It writes the same files, and a killed sharded run resumes to the
uninterrupted sharded result (1e-6). PPO does not shard yet (it refuses a sharded plan).
"""

from __future__ import annotations

import json
import os

import pytest
from safetensors.torch import load_file

from test_multiprocess import (_run_killed_after, close, history, no_strays, reward_args,  # noqa: F401
                               reward_inputs, reward_weights, run_rlhf, weights_close)

pytestmark = pytest.mark.usefixtures("one_thread")


def files(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and "tensorboard" not in p.parts)


def test_sharded_reward_run_matches_replicated_and_resumes(reward_inputs, tmp_path):
    replicated, sharded, killed = tmp_path / "replicated", tmp_path / "sharded", tmp_path / "killed"
    run_rlhf(reward_args(reward_inputs, replicated, 2) + ["--save-merged-model"])
    done = run_rlhf(reward_args(reward_inputs, sharded, 2) + ["--save-merged-model", "--shard-base"])
    assert "frozen base sharded over 2 processes" in done.stderr

    assert files(replicated) == files(sharded)
    no_strays(sharded)
    close(history(replicated / "metrics.jsonl"), history(sharded / "metrics.jsonl"), atol=1e-5)
    weights_close(reward_weights(replicated), reward_weights(sharded), atol=1e-5)
    for name in ("score_head.safetensors", "merged/model.safetensors"):
        weights_close(load_file(str(replicated / name)), load_file(str(sharded / name)), atol=1e-5)
    for step in ("step-00000004", "step-00000006"):
        weights_close(load_file(str(replicated / "checkpoints" / step / "trainable.safetensors")),
                      load_file(str(sharded / "checkpoints" / step / "trainable.safetensors")), atol=1e-5)
    info1, info2 = (json.loads((d / "reward_model.json").read_text()) for d in (replicated, sharded))
    for key in ("mean", "std"):
        assert info1["normalization"][key] == pytest.approx(info2["normalization"][key], abs=1e-5)

    args = reward_args(reward_inputs, killed, 2) + ["--save-merged-model", "--shard-base"]
    _run_killed_after(args, killed / "checkpoints" / "step-00000002" / "state.json")
    assert not (killed / "reward_model.json").exists()
    again = run_rlhf(args)
    assert json.loads(again.stdout[again.stdout.index("{"):])["resumed_from"] >= 2
    close(history(sharded / "metrics.jsonl"), history(killed / "metrics.jsonl"), atol=1e-6)
    weights_close(reward_weights(sharded), reward_weights(killed), atol=1e-6)
    no_strays(killed)
    assert os.path.exists(killed / "merged" / "model.safetensors")
