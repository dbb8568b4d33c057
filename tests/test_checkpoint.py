"""rlhf.checkpoint: atomic save, exact restore (weights, optimizer, scheduler, RNG), pruning."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from rlhf import checkpoint
from rlhf.errors import UserError


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    model[0].weight.requires_grad_(False)  # a frozen "base" tensor
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (s + 1))
    return model, opt, sched


def _train(model, opt, sched, steps):
    for _ in range(steps):
        x = torch.randn(16, 4)
        noise = float(np.random.rand()) + random.random()
        loss = (model(torch.nn.functional.dropout(x, 0.5)) - noise).pow(2).mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_resume_continues_exactly(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    model, opt, sched = _setup()
    _train(model, opt, sched, 3)
    path = checkpoint.save(str(tmp_path), 3, trainable=checkpoint.trainable_state_dict(model),
                           optimizer=opt, scheduler=sched, state={"data_position": 12})
    _train(model, opt, sched, 4)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model2, opt2, sched2 = _setup(seed=99)  # different init: everything must come from the checkpoint
    model2[0].weight.data.copy_(model[0].weight.data)  # the frozen base is not in a checkpoint
    assert checkpoint.latest(str(tmp_path)) == path
    c = checkpoint.load(path, optimizer=opt2, scheduler=sched2)
    checkpoint.load_trainable(model2, c.trainable)
    assert c.step == 3 and c.state["data_position"] == 12
    assert set(c.trainable) == {"0.bias", "1.weight", "1.bias"}
    _train(model2, opt2, sched2, 4)
    for name, value in model2.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_keep_last_incomplete_and_temporary_directories(tmp_path):
    model, opt, sched = _setup()
    for step in (1, 2, 3):
        checkpoint.save(str(tmp_path), step, trainable=checkpoint.trainable_state_dict(model), keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["step-00000002", "step-00000003"]
    # A directory without state.json (killed before the marker) is not a checkpoint.
    (tmp_path / "step-00000009").mkdir()
    (tmp_path / ".tmp-step-00000010-x").mkdir()
    assert checkpoint.latest(str(tmp_path)).endswith("step-00000003")
    checkpoint.save(str(tmp_path), 4, trainable=checkpoint.trainable_state_dict(model), keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["step-00000004"]
    assert checkpoint.latest(str(tmp_path / "missing")) is None


def test_trainable_mismatch_is_a_user_error(tmp_path):
    model, _, _ = _setup()
    with pytest.raises(UserError, match="different configuration"):
        checkpoint.load_trainable(model, {"1.weight": torch.zeros(1, 8)})


def test_gcs_checkpoints(gcs_emulator, tmp_path):
    root = gcs_emulator.uri(f"ckpt-{os.getpid()}-{random.randrange(10**6)}")
    model, opt, sched = _setup()
    checkpoint.save(root, 5, trainable=checkpoint.trainable_state_dict(model), optimizer=opt,
                    scheduler=sched, state={"x": 1})
    checkpoint.save(root, 7, trainable=checkpoint.trainable_state_dict(model), optimizer=opt, scheduler=sched)
    assert checkpoint.latest(root) == root + "/step-00000007"
    c = checkpoint.load(checkpoint.latest(root), optimizer=opt, scheduler=sched)
    assert c.step == 7 and torch.equal(c.trainable["1.weight"], model[1].weight.detach())
