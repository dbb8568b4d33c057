"""A trainer's run directory: where its outputs are written while it runs, how it resumes after a
kill, and how its outputs are published. Every trainer (reward, PPO; next SFT, DPO) uses it the same
way, so each one reads like the others:

    run = RunDir(config.output_dir, prefix="rlhf-reward-")         # staged locally when gs://
    ckpts = CheckpointDir(run.checkpoints_dir, config)               # resume or start
    tracker = Tracker(jsonl_path=run.path("metrics.jsonl"), tensorboard_dir=run.stage(tb_dir))
    ckpt = ckpts.resume(load_trainable=..., optimizer=opt, scheduler=sched, tracker=tracker)
    step = ckpt.step if ckpt else 0
    while step < total:
        ...                                                            # one step
        ckpts.check_finite("loss/total", loss, step + 1, causes="...")  # before anything is saved
        step += 1
        ckpts.save(step, trainable=..., optimizer=opt, scheduler=sched, tracker=tracker)
    with run.publish("reward_model.json", info):                      # the info file last
        write the final files under run.local

**Staging.** Cloud Storage has no rename and no append, so a ``gs://`` output is built in a local
temporary directory (``run.local``) and uploaded by ``publish``. A local or mounted ``/gcs/`` output
is written in place. Checkpoints always go straight to ``<output_dir>/checkpoints``: they must
outlive the machine, and ``rlhf.checkpoint`` makes each one atomic on its own.

**Resume.** A checkpoint records the run's settings (``settings_fingerprint``): every field of the
config dataclass except those in its ``RESUME_MAY_CHANGE`` class attribute (paths, logging,
checkpoint cadence: what does not change the result so far). A restart with other settings is
refused with a UserError naming each one, so two runs are never mixed in one directory.

**Publishing.** Readers treat the info file (``reward_model.json``, PPO's ``summary.json``) as "the
run is complete": ``publish`` removes a previous run's copy before the new files are written and
writes the new one after everything else is in place.

**Non-finite guard.** ``check_finite`` stops the run at the first NaN or inf, before that step is
saved, so the newest checkpoint is the last good one; the message names the value, the step, that
checkpoint and the usual causes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
from typing import Callable, Iterator, Mapping, Optional

from rlhf import checkpoint, storage
from rlhf.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"


class NonFiniteError(UserError):
    """A NaN or inf in a score, loss or gradient: the run stopped before saving that step."""


# ----------------------------------------------------------------------------------------------
# Settings a checkpoint must match


def settings_fingerprint(config) -> dict:
    """``config``'s fields minus its class's ``RESUME_MAY_CHANGE``, as JSON values (a tuple becomes a
    list, as it comes back from ``state.json``), so a saved and a current fingerprint compare equal."""
    may_change = type(config).RESUME_MAY_CHANGE
    values = {k: v for k, v in dataclasses.asdict(config).items() if k not in may_change}
    return json.loads(json.dumps(values))


def check_same_settings(saved: Mapping, config, where: str) -> None:
    """UserError naming every setting that differs between ``saved`` (a checkpoint's fingerprint) and
    ``config``, with both values and the two ways out."""
    now = settings_fingerprint(config)
    changed = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise UserError(f"{where} holds checkpoints of a run with other settings ({details}); resume "
                        f"with the same settings, or use a new output directory")


# ----------------------------------------------------------------------------------------------
# Checkpoints: resume or start, save, stop on non-finite values


def _finite(value) -> tuple[bool, list]:
    """Whether every element is finite, and the first few for the message."""
    if isinstance(value, numbers.Real):
        return math.isfinite(value), [float(value)]
    import torch
    tensor = torch.as_tensor(value).detach()
    return bool(torch.isfinite(tensor).all()), tensor.flatten()[:4].tolist()


class CheckpointDir:
    """The checkpoints of one run (``rlhf.checkpoint`` directories under ``root``) for ``config``'s
    settings. ``last`` is the newest good checkpoint this process wrote or resumed from."""

    def __init__(self, root: str, config, keep_last: int = 2):
        self.root, self.config, self.keep_last = root, config, keep_last
        self.last: Optional[str] = None

    def resume(self, *, load_trainable: Callable[[Mapping], None], optimizer=None, scheduler=None,
               tracker=None) -> Optional[checkpoint.Checkpoint]:
        """Restore the newest checkpoint, if any: trainable tensors (through ``load_trainable``),
        optimizer, scheduler, RNG states and the tracker's history; returns it (its ``state`` holds
        what the trainer saved) or None for a fresh start. The settings are compared first, before
        anything is loaded or any file is touched."""
        path = checkpoint.latest(self.root)
        if path is None:
            if tracker is not None:
                tracker.load_state_dict({}, 0)  # a fresh run starts fresh files
            return None
        check_same_settings(checkpoint.read_state(path).get("config", {}), self.config, self.root)
        ckpt = checkpoint.load(path, optimizer=optimizer, scheduler=scheduler)
        load_trainable(ckpt.trainable)
        if tracker is not None:
            tracker.load_state_dict(ckpt.state.get("tracker", {}), ckpt.step)
        self.last = path
        log.info("resuming from %s (step %d)", path, ckpt.step)
        return ckpt

    def save(self, step: int, *, trainable: Mapping, optimizer=None, scheduler=None, tracker=None,
             state: Optional[Mapping] = None) -> str:
        """Checkpoint ``step`` (atomic: ``rlhf.checkpoint.save``) with the settings fingerprint, the
        tracker's history and the trainer's own ``state`` (JSON); returns its path."""
        full = {**dict(state or {}), "config": settings_fingerprint(self.config)}
        if tracker is not None:
            full["tracker"] = tracker.state_dict()
        self.last = checkpoint.save(self.root, step, trainable=trainable, optimizer=optimizer,
                                    scheduler=scheduler, state=full, keep_last=self.keep_last)
        return self.last

    def check_finite(self, name: str, value, step: int, causes: str) -> None:
        """NonFiniteError when ``value`` (a number or tensor) holds a NaN or inf at ``step`` (the step
        being computed, 1-based). ``causes``: what usually causes it here and which flag to change."""
        ok, shown = _finite(value)
        if ok:
            return
        where = (f"the last good checkpoint is {self.last}; a restart resumes from it" if self.last
                 else "no checkpoint was written yet")
        raise NonFiniteError(
            f"step {step}: {name} is not finite ({shown}...). The run stopped without saving this step; "
            f"{where}. Usual causes: {causes}; change one before restarting.")


# ----------------------------------------------------------------------------------------------
# Staging and publishing


def publish_dir(local_dir: str, uri: str) -> None:
    """Put a finished local directory at ``uri`` so readers never see half of it: a local target is
    swapped in by rename; a gs:// target is uploaded file by file (objects appear whole)."""
    if storage.is_gcs(uri):
        storage.upload_dir(local_dir, uri)
        return
    parent = os.path.dirname(os.path.abspath(uri))
    os.makedirs(parent, exist_ok=True)
    staged = tempfile.mkdtemp(dir=parent, prefix=".tmp-publish-")
    shutil.rmtree(staged)
    shutil.copytree(local_dir, staged)
    old = None
    if os.path.exists(uri):
        old = tempfile.mkdtemp(dir=parent, prefix=".tmp-old-")
        shutil.rmtree(old)
        os.rename(uri, old)
    os.rename(staged, uri)
    if old:
        shutil.rmtree(old, ignore_errors=True)


class RunDir:
    """``output_dir`` as a trainer sees it: ``local`` is where files are written during the run
    (``output_dir`` itself, or a temporary directory when it is on gs://); ``publish`` puts them in
    place with the info file last. See the module docstring."""

    def __init__(self, output_dir: str, prefix: str = "rlhf-run-"):
        self.output_dir = output_dir
        self.staged = storage.is_gcs(output_dir)
        self.local = tempfile.mkdtemp(prefix=prefix) if self.staged else output_dir
        os.makedirs(self.local, exist_ok=True)
        self._apart: list[tuple[str, str]] = []  # (local stand-in, gs:// target) from stage()

    @property
    def checkpoints_dir(self) -> str:
        """Always the final location: checkpoints must outlive a preempted machine."""
        return storage.join(self.output_dir, CHECKPOINTS)

    def path(self, *parts: str) -> str:
        """A path under ``local``."""
        return os.path.join(self.local, *parts)

    def stage(self, uri: str) -> str:
        """A local directory to write for ``uri``, an output kept apart from ``output_dir`` (e.g.
        TensorBoard's): ``uri`` itself unless it is on gs://; then a temporary directory, uploaded
        by ``publish``."""
        if not storage.is_gcs(uri):
            return uri
        local = tempfile.mkdtemp(prefix="rlhf-staged-")
        self._apart.append((local, uri))
        return local

    @contextlib.contextmanager
    def publish(self, info_file: str, info: Mapping) -> Iterator[str]:
        """``with run.publish(name, info) as out:`` write the final files under ``out`` (= ``local``).
        On entry a previous run's ``info_file`` is removed (the directory is about to change); on a
        normal exit staged files are uploaded, then ``info_file`` (``info`` as JSON) is written last,
        so a reader that sees it sees every other file. An exception leaves no info file."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.local, info_file))
        yield self.local
        for local, uri in self._apart:
            storage.upload_dir(local, uri)
            shutil.rmtree(local, ignore_errors=True)
        self._apart = []
        if self.staged:
            storage.upload_dir(self.local, self.output_dir)
        storage.write_json(storage.join(self.output_dir, info_file), dict(info))
        if self.staged:
            shutil.rmtree(self.local, ignore_errors=True)
