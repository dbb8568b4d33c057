"""rlhf.rundir: staging a gs:// output and publishing it with the info file last, resume with the
settings compared (minus RESUME_MAY_CHANGE), and the non-finite guard keeping the last checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from rlhf import checkpoint, storage
from rlhf.errors import UserError
from rlhf.ppo.config import PPOConfig
from rlhf.reward.config import RewardConfig
from rlhf.rundir import CheckpointDir, NonFiniteError, RunDir, settings_fingerprint
from rlhf.tracking import Tracker


@dataclass
class ToyConfig:
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({"log_every", "output_dir"})
    lr: float = 0.1
    modules: tuple = ("a", "b")  # a tuple comes back from state.json as a list: still the same
    log_every: int = 1
    output_dir: str = ""


def _model(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)  # frozen: not in checkpoints
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    return model, opt


def _step(model, opt):
    model(torch.randn(8, 3)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _rows(path):
    return [json.loads(x) for x in open(path).read().splitlines()]


# -- staging and publishing ----------------------------------------------------------------------


def test_gcs_output_is_staged_and_published_with_the_info_file_last(gcs_emulator, gcs_prefix):
    out, tb = f"{gcs_prefix}/run", f"{gcs_prefix}/tensorboard"
    run = RunDir(out)
    assert run.staged and os.path.isdir(run.local) and not run.local.startswith("gs:")
    assert run.checkpoints_dir == f"{out}/checkpoints"
    tb_local = run.stage(tb)
    assert os.path.isdir(tb_local) and tb_local != tb
    with open(os.path.join(tb_local, "events.out.tfevents.1"), "w") as f:
        f.write("tb")
    with run.publish("info.json", {"format": "toy/1", "steps": 3}) as local:
        assert local == run.local
        os.makedirs(os.path.join(local, "model"))
        for name in ("model/weights.bin", "model/config.json", "metrics.json"):
            with open(os.path.join(local, name), "w") as f:
                f.write(name)
        assert not storage.exists(f"{out}/metrics.json")  # nothing leaves the machine before publish

    blobs = {b.name: b for b in gcs_emulator.client().list_blobs(gcs_emulator.bucket,
                                                                   prefix=out.split("/", 3)[3] + "/")}
    names = {name.rsplit("/run/", 1)[1] for name in blobs}
    assert names == {"info.json", "model/weights.bin", "model/config.json", "metrics.json"}
    assert storage.read_text(f"{out}/model/weights.bin") == "model/weights.bin"
    assert storage.read_json(f"{out}/info.json") == {"format": "toy/1", "steps": 3}
    assert storage.read_text(f"{tb}/events.out.tfevents.1") == "tb"
    # Generations are creation times: the info file was created after every other object.
    info = next(b for n, b in blobs.items() if n.endswith("/info.json"))
    tb_blob = gcs_emulator.client().bucket(gcs_emulator.bucket).get_blob(tb.split("/", 3)[3] + "/events.out.tfevents.1")
    others = [b for n, b in blobs.items() if not n.endswith("/info.json")] + [tb_blob]
    assert all(int(info.generation) > int(b.generation) for b in others)
    assert not os.path.exists(run.local) and not os.path.exists(tb_local)  # staging cleaned up


def test_local_output_is_written_in_place_and_a_failed_publish_leaves_no_info_file(tmp_path):
    out = tmp_path / "run"
    run = RunDir(str(out))
    assert not run.staged and run.local == str(out) and out.is_dir()
    assert run.stage(str(tmp_path / "tb")) == str(tmp_path / "tb")
    with run.publish("info.json", {"n": 1}):
        (out / "model.bin").write_text("one")
    assert json.loads((out / "info.json").read_text()) == {"n": 1}

    # A second run into the same directory: its info file goes as soon as the outputs change, and
    # comes back only when they are all written.
    with pytest.raises(RuntimeError, match="disk full"):
        with RunDir(str(out)).publish("info.json", {"n": 2}):
            assert not (out / "info.json").exists()
            (out / "model.bin").write_text("two (half)")
            raise RuntimeError("disk full")
    assert not (out / "info.json").exists()


# -- resume or start -----------------------------------------------------------------------------


def test_resume_with_a_changed_resumable_setting_continues_exactly(tmp_path):
    root = str(tmp_path / "checkpoints")
    jsonl = str(tmp_path / "metrics.jsonl")
    model, opt = _model()
    tracker = Tracker(jsonl_path=jsonl)
    ckpts = CheckpointDir(root, ToyConfig(log_every=1))
    assert ckpts.resume(load_trainable=lambda t: None, optimizer=opt, tracker=tracker) is None
    for step in (1, 2):
        _step(model, opt)
        tracker.log(step, {"loss/total": float(step)})
    ckpts.save(2, trainable=checkpoint.trainable_state_dict(model), optimizer=opt, tracker=tracker,
               state={"sampler": {"position": 7}})
    torch.manual_seed(123)
    _step(model, opt)                    # step 3, then the machine goes away
    tracker.log(3, {"loss/total": 3.0})
    expected = _trainable(model)

    model2, opt2 = _model(seed=5)        # a fresh process: other initial weights
    model2[0].weight.data.copy_(model[0].weight.data)
    tracker2 = Tracker(jsonl_path=jsonl)
    again = CheckpointDir(root, ToyConfig(log_every=50, output_dir="elsewhere"))  # resumable changes
    ckpt = again.resume(load_trainable=lambda t: checkpoint.load_trainable(model2, t), optimizer=opt2,
                        tracker=tracker2)
    assert ckpt.step == 2 and ckpt.state["sampler"] == {"position": 7}
    assert again.last == ckpt.path and ckpt.path.endswith("step-00000002")
    assert [r["step"] for r in _rows(jsonl)] == [1, 2]  # the killed run's step 3 is gone
    torch.manual_seed(123)
    _step(model2, opt2)
    for name, value in _trainable(model2).items():
        assert torch.equal(value, expected[name]), name


def test_resume_with_another_setting_is_refused_naming_it_before_anything_changes(tmp_path):
    root, jsonl = str(tmp_path / "checkpoints"), str(tmp_path / "metrics.jsonl")
    model, opt = _model()
    tracker = Tracker(jsonl_path=jsonl)
    tracker.log(1, {"loss/total": 1.0})
    CheckpointDir(root, ToyConfig(lr=0.1)).save(1, trainable=checkpoint.trainable_state_dict(model),
                                                optimizer=opt, tracker=tracker)
    tracker.log(2, {"loss/total": 2.0})

    other, _ = _model(seed=9)
    before = _trainable(other)
    with pytest.raises(UserError) as e:
        CheckpointDir(root, ToyConfig(lr=0.2, modules=("a", "c"))).resume(
            load_trainable=lambda t: checkpoint.load_trainable(other, t), tracker=Tracker(jsonl_path=jsonl))
    message = str(e.value)
    assert "lr: 0.1 -> 0.2" in message and "modules: ['a', 'b'] -> ['a', 'c']" in message
    assert "log_every" not in message and root in message
    assert "same settings" in message and "new output directory" in message
    assert all(torch.equal(p, before[n]) for n, p in _trainable(other).items())  # nothing loaded
    assert [r["step"] for r in _rows(jsonl)] == [1, 2]                            # nothing truncated


def test_a_fresh_start_starts_fresh_files(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text('{"step": 1, "loss/total": 9.0}\n')  # a run killed before its first checkpoint
    tracker = Tracker(jsonl_path=str(jsonl))
    assert CheckpointDir(str(tmp_path / "checkpoints"), ToyConfig()).resume(
        load_trainable=lambda t: None, tracker=tracker) is None
    tracker.log(1, {"loss/total": 1.0})
    assert _rows(jsonl) == [{"step": 1, "loss/total": 1.0}]


@pytest.mark.parametrize("cls, changes, kept", [
    (RewardConfig, {"checkpoint_every": 7, "log_every": 3, "output_dir": "b"}, {"reward_lora_dim": 8}),
    (PPOConfig, {"reinforcement_learning_train_steps": 9, "sample_count": 1}, {"kl_coeff": 0.3}),
])
def test_each_config_declares_what_may_change_on_resume(cls, changes, kept):
    names = {f.name for f in dataclasses.fields(cls)}
    assert cls.RESUME_MAY_CHANGE <= names, cls.RESUME_MAY_CHANGE - names  # no stale names
    assert "RESUME_MAY_CHANGE" not in names                              # a ClassVar, not a setting
    base = settings_fingerprint(cls())
    assert settings_fingerprint(cls(**changes)) == base
    changed = settings_fingerprint(cls(**kept))
    assert {k for k in base if base[k] != changed[k]} == set(kept)


# -- the non-finite guard ------------------------------------------------------------------------


def test_non_finite_value_stops_naming_the_last_good_checkpoint(tmp_path):
    root = str(tmp_path / "checkpoints")
    model, opt = _model()
    ckpts = CheckpointDir(root, ToyConfig(), keep_last=2)
    with pytest.raises(NonFiniteError, match="step 1: loss/total is not finite.*no checkpoint was written yet"):
        ckpts.check_finite("loss/total", float("nan"), 1, causes="a learning rate too high (--lr)")
    for step in (1, 2):
        ckpts.save(step, trainable=checkpoint.trainable_state_dict(model), optimizer=opt)
    ckpts.check_finite("loss/total", 0.5, 3, causes="x")                       # finite: no error
    ckpts.check_finite("advantages", torch.tensor([[1.0, -2.0]]), 3, causes="x")
    with pytest.raises(NonFiniteError) as e:
        ckpts.check_finite("gradient norm", torch.tensor([1.0, float("inf")]), 3,
                           causes="a learning rate too high (--lr)")
    message = str(e.value)
    assert message.startswith("step 3: gradient norm is not finite ([1.0, inf]...)")
    assert f"the last good checkpoint is {root}/step-00000002" in message
    assert "--lr" in message and isinstance(e.value, UserError)
    assert checkpoint.latest(root).endswith("step-00000002")
    assert sorted(os.listdir(root)) == ["step-00000001", "step-00000002"]
