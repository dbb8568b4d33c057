"""Run a step on every device of the machine: `launch.run(step, config)`.

`rlhf train-reward|tune|evaluate` and their KFP components call their step through this. With
``config.devices`` > 1 (default: every visible GPU, ``torch.cuda.device_count()``; 1 on CPU) it
starts that many processes with PyTorch's own launcher (``torch.distributed.launcher.api
.elastic_launch``, what ``torchrun --standalone --nproc_per_node N`` runs), each running
``step(config)`` on its own GPU (NCCL; gloo on CPU), and returns rank 0's result. Inside a process
that is already one of several (``WORLD_SIZE`` set: an outer ``torchrun``) it just runs the step.

What each step does with its processes is in ``rlhf.distributed`` (DDP, reductions, sharding);
only rank 0 writes outputs. A worker's UserError (a bad input, a non-finite loss) comes back as
the same UserError, so the command still exits 2 with one line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable, Optional

from rlhf.errors import UserError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def resolve_devices(requested: Optional[int], device: str = "") -> int:
    """The number of processes to run: ``requested`` when given (checked against the GPUs
    visible), else every visible GPU, else 1. ``device`` cpu or one named GPU (``cuda:N``) means 1
    unless ``requested`` says otherwise."""
    prefer = device or os.environ.get("RLHF_DEVICE") or ""
    if requested is not None and requested < 1:
        raise UserError(f"--devices {requested}: must be a positive integer")
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested is not None:
        if requested > 1 and prefer != "cpu" and 0 < gpus < requested:
            raise UserError(f"--devices {requested}: only {gpus} GPU(s) visible; give --devices {gpus} or less")
        return requested
    if prefer not in ("", "cuda"):
        return 1  # cpu, or one GPU by name
    return max(gpus, 1)


def inside_launched_worker() -> bool:
    return "WORLD_SIZE" in os.environ


def reports() -> bool:
    """Whether this process prints the step's result: the launching process, or rank 0 of an
    outer ``torchrun``."""
    return os.environ.get("RANK", "0") == "0"


def run(step: Callable[..., Any], config, *args, **kwargs) -> Any:
    """``step(config, *args, **kwargs)`` on ``config.devices`` processes (see module doc); returns
    rank 0's result. ``step`` must be a module-level function and its arguments picklable."""
    if inside_launched_worker():
        return step(config, *args, **kwargs)
    n = resolve_devices(getattr(config, "devices", None), getattr(config, "device", ""))
    if n <= 1:
        return step(config, *args, **kwargs)
    return launch(n, step, config, *args, **kwargs)


def launch(nproc: int, step: Callable[..., Any], *args, **kwargs) -> Any:
    """``step(*args, **kwargs)`` in ``nproc`` local processes started by PyTorch's elastic launcher
    (c10d rendezvous on a free local port, no restarts: a preempted task is restarted whole and
    resumes from its checkpoint). Returns rank 0's return value."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    errors = tempfile.mkdtemp(prefix="rlhf-launch-")
    threads = int(os.environ.get("OMP_NUM_THREADS") or max((os.cpu_count() or 1) // nproc, 1))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          start_method="spawn")
    log.info("launching %d processes (world size %d)", nproc, nproc)
    try:
        results = elastic_launch(config, _worker)(step, errors, threads, args, kwargs)
    except ChildFailedError:
        user_error = _first_user_error(errors)
        if user_error:
            raise UserError(user_error) from None
        raise
    finally:
        shutil.rmtree(errors, ignore_errors=True)
    return results[0]


def _worker(step, errors: str, threads: int, args, kwargs):
    """One launched process: logging (INFO on rank 0 only, so the log is read once), threads, the
    step; a UserError is recorded for the parent and re-raised (the launcher stops the others)."""
    import torch
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=LOG_FORMAT,
                        datefmt="%H:%M:%S", force=True)
    torch.set_num_threads(threads)
    try:
        result = step(*args, **kwargs)
    except UserError as e:
        with open(os.path.join(errors, f"rank-{rank}.json"), "w", encoding="utf-8") as f:
            json.dump({"rank": rank, "message": str(e)}, f)
        raise
    return result if rank == 0 else None


def _first_user_error(errors: str) -> Optional[str]:
    found = []
    for name in sorted(os.listdir(errors)):
        with open(os.path.join(errors, name), encoding="utf-8") as f:
            found.append(json.load(f))
    if not found:
        return None
    first = min(found, key=lambda e: e["rank"])
    return first["message"] if first["rank"] == 0 else f"(process {first['rank']}) {first['message']}"
