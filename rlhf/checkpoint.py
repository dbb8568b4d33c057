"""Checkpoints for exact resume (preemptible VMs): save every N steps, restart with the same output
location, and the run ends with the same weights and metrics as an uninterrupted one.

A checkpoint is a directory ``<root>/step-00000120/`` holding

- ``trainable.safetensors``: the trainable tensors only (LoRA adapters, score/value heads);
- ``optimizer.pt`` / ``scheduler.pt``: their ``state_dict()``s (tensors and numbers, read back with
  ``torch.load(weights_only=True)``, so no code runs on load);
- ``rng.pt``: Python, NumPy, torch CPU and CUDA random states;
- ``state.json``: ``{"step": 120, ...}`` plus what the trainer adds (data position, tracking
  history, a config fingerprint). It is written **last**: a directory without it is incomplete and
  ignored, which keeps checkpoints safe even where a directory rename is not atomic (Cloud Storage
  FUSE). Files are first written to ``<root>/.tmp-step-...`` and renamed into place.

Only the newest ``keep_last`` complete checkpoints are kept. ``root`` is a local path, a ``/gcs/``
FUSE path or a ``gs://`` URI (built locally, then uploaded; old ones are not pruned there).

Trainers use it through ``rlhf.rundir.CheckpointDir``, which adds the settings check on resume, the
tracker's history and the non-finite guard. Used alone::

    ckpt = checkpoint.latest(root)
    if ckpt:
        c = checkpoint.load(ckpt, optimizer=opt, scheduler=sched)   # restores RNG states too
        checkpoint.load_trainable(model, c.trainable)
        start = c.step
    ...
    checkpoint.save(root, step, trainable=checkpoint.trainable_state_dict(model),
                    optimizer=opt, scheduler=sched, state={"tracker": tracker.state_dict()})
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Mapping, Optional

from rlhf import storage
from rlhf.errors import StorageError, UserError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    path: str
    step: int
    trainable: dict = field(default_factory=dict)  # name -> tensor (CPU)
    state: dict = field(default_factory=dict)      # everything from state.json


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


# ----------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict:
    """Every random state a training step can touch."""
    import numpy as np
    import torch
    py = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Mapping) -> None:
    import numpy as np
    import torch
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Trainable tensors


def trainable_state_dict(model) -> dict:
    """``{name: tensor}`` of the parameters that require grad, copied to CPU."""
    return {n: p.detach().to("cpu", copy=True).contiguous()
            for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, tensors: Mapping) -> None:
    """Copy saved trainable tensors back into ``model``; every trainable parameter must be present."""
    import torch
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    missing, unexpected = wanted - set(tensors), set(tensors) - set(params)
    if missing or unexpected:
        raise UserError(f"the checkpoint does not match the model (missing {sorted(missing)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}): it was written by a different "
                        f"configuration; use a new output location or the same settings")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


# ----------------------------------------------------------------------------------------------
# Save / find / load


def _complete_local(root: str) -> list[tuple[int, str]]:
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = _NAME.match(name)
        if m and os.path.exists(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(found)


def _complete_gcs(root: str) -> list[tuple[int, str]]:
    try:
        states = storage.expand(storage.join(root, "step-*", STATE_FILE))
    except StorageError:
        return []
    found = []
    for uri in states:
        directory = uri[: -len(STATE_FILE) - 1]
        m = _NAME.match(directory.rstrip("/").rsplit("/", 1)[-1])
        if m:
            found.append((int(m.group(1)), directory))
    return sorted(found)


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as sorted ``(step, path)``."""
    return _complete_gcs(root) if storage.is_gcs(root) else _complete_local(root)


def latest(root: str) -> Optional[str]:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def _write_files(directory: str, trainable: Mapping, optimizer, scheduler) -> None:
    import torch
    from safetensors.torch import save_file
    save_file(dict(trainable), os.path.join(directory, "trainable.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    if scheduler is not None:
        torch.save(scheduler.state_dict(), os.path.join(directory, "scheduler.pt"))
    torch.save(rng_state(), os.path.join(directory, "rng.pt"))


def save(root: str, step: int, *, trainable: Mapping, optimizer=None, scheduler=None,
         state: Optional[Mapping] = None, keep_last: int = 2) -> str:
    """Write checkpoint ``step`` under ``root`` (see module docstring); returns its path.
    ``state`` must be JSON-serializable."""
    payload = json.dumps({**dict(state or {}), "step": int(step)})
    name = step_dir_name(step)
    if storage.is_gcs(root):
        with tempfile.TemporaryDirectory(prefix="rlhf-ckpt-") as tmp:
            _write_files(tmp, trainable, optimizer, scheduler)
            final = storage.join(root, name)
            storage.upload_dir(tmp, final)
            storage.write_text(storage.join(final, STATE_FILE), payload)
        return final
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(dir=root, prefix=f".tmp-{name}-")
    try:
        _write_files(tmp, trainable, optimizer, scheduler)
        if os.path.exists(final):  # the same step saved again after a resume
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    storage.write_text(os.path.join(final, STATE_FILE), payload)  # completion marker, last
    _prune(root, keep_last)
    return final


def _prune(root: str, keep_last: int) -> None:
    complete = _complete_local(root)
    keep = {p for _, p in complete[-max(keep_last, 1):]}
    for name in os.listdir(root):
        path = os.path.join(root, name)
        stale_tmp = name.startswith(".tmp-step-")
        old = _NAME.match(name) and path not in keep
        if (stale_tmp or old) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


def read_state(path: str) -> dict:
    """The ``state.json`` of the checkpoint at ``path`` alone: enough to compare settings before
    downloading and loading the tensors."""
    return json.loads(storage.read_text(storage.join(path, STATE_FILE)))


def load(path: str, *, optimizer=None, scheduler=None, restore_rng: bool = True) -> Checkpoint:
    """Read a checkpoint: returns its step, trainable tensors and state; loads the optimizer and
    scheduler states into the objects given and restores the RNG states."""
    import torch
    from safetensors.torch import load_file
    if storage.is_gcs(path):
        local = tempfile.mkdtemp(prefix="rlhf-ckpt-")
        storage.download_dir(path, local)
    else:
        local = path
    state = json.loads(storage.read_text(os.path.join(local, STATE_FILE)))
    trainable = load_file(os.path.join(local, "trainable.safetensors"))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(local, "optimizer.pt"), weights_only=True,
                                             map_location="cpu"))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(os.path.join(local, "scheduler.pt"), weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(os.path.join(local, "rng.pt"), weights_only=True))
    if local != path:
        shutil.rmtree(local, ignore_errors=True)
    return Checkpoint(path=path, step=int(state["step"]), trainable=trainable, state=state)
