"""Checks of the loop DPO and SFT share (``rlhf.policy_training.trainer.PolicyTrainer``), run by
each step's tests on its own trainer and toy data (this module holds no tests).

``make(config, out_dir)`` builds a fresh trainer on a fresh tiny model; ``config(**overrides)``
builds the step's toy config; ``steps`` names its step-count field."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.rundir import NonFiniteError
from test_multiprocess import close, history, no_strays, weights_close


def check_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, make, config, steps: str, refused: dict,
                                                           refusal: tuple[type, str], **settings):
    """3 steps, killed, resumed to 6 ends where 6 uninterrupted steps end; a restart with other
    ``refused`` settings in the same directory raises ``refusal`` (type, message pattern)."""
    full = make(config(**{steps: 6}, checkpoint_every=3, **settings), str(tmp_path / "full"))
    full.train()
    make(config(**{steps: 3}, checkpoint_every=3, **settings), str(tmp_path / "split")).train()
    second = make(config(**{steps: 6}, checkpoint_every=3, **settings), str(tmp_path / "split"))
    assert second.resume() == 3
    second.train()
    for name, value in full.model.trainable_state_dict().items():
        torch.testing.assert_close(second.model.trainable_state_dict()[name], value, atol=1e-6, rtol=0)
    assert [r["loss/total"] for r in second.tracker.history] == pytest.approx(
        [r["loss/total"] for r in full.tracker.history], abs=1e-6)
    error, pattern = refusal
    with pytest.raises(error, match=pattern):  # other settings in the same directory are refused
        make(config(**refused, checkpoint_every=3), str(tmp_path / "split")).resume()


def check_a_non_finite_loss_stops_the_run_before_saving(tmp_path, make, config, steps: str, poisoned: str):
    """After 2 good steps, a NaN in the first parameter whose name contains ``poisoned`` stops step
    3 with the last good checkpoint named, and no checkpoint of the bad step."""
    trainer = make(config(checkpoint_every=1), str(tmp_path))
    trainer.cfg = config(checkpoint_every=1, **{steps: 2})
    trainer.train()
    trainer.cfg = config(checkpoint_every=1, **{steps: 4})
    with torch.no_grad():
        next(p for n, p in trainer.model.named_parameters() if poisoned in n).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="step 3: loss/total is not finite.*step-00000002"):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step")) == [
        "step-00000001", "step-00000002"]


def check_two_processes_match_one(one: Path, two: Path) -> tuple[dict, dict]:
    """The same 4-step run, checkpointing every 2 steps, on one process (in ``one``) and on two (in
    ``two``): the same metrics and adapter, no stray files; returns both summaries."""
    assert [r["step"] for r in history(two / "metrics.jsonl")] == [1, 2, 3, 4]
    assert sorted(os.listdir(two / "checkpoints")) == ["step-00000002", "step-00000004"]
    no_strays(two)
    close(history(one / "metrics.jsonl"), history(two / "metrics.jsonl"), atol=1e-4)
    weights = [load_file(str(d / "policy_adapter" / "adapter_model.safetensors")) for d in (one, two)]
    weights_close(*weights, atol=1e-4)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    return s1, s2
