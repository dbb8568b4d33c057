"""Run a step on every device of the machine, or of every machine of a job: `launch.run(step, config)`.

`rlhf train-reward|tune|evaluate` and their KFP components call their step through this. With
``config.devices`` > 1 (default: every visible GPU, ``torch.cuda.device_count()``; 1 on CPU) it
starts that many processes with PyTorch's own launcher (``torch.distributed.launcher.api
.elastic_launch``, what ``torchrun --standalone --nproc_per_node N`` runs), each running
``step(config)`` on its own GPU (NCCL; gloo on CPU), and returns rank 0's result. Inside a process
that is already one of several (an outer ``torchrun``: ``LOCAL_RANK`` and ``WORLD_SIZE`` set) it just
runs the step.

**Several machines.** When the scheduler describes a job of several nodes (``rlhf.cluster``:
Vertex AI's ``CLUSTER_SPEC``, Kubeflow Trainer's ``PET_*``), the same command on every node starts
that node's processes as one job: ``torchrun --nnodes N --node-rank R --master-addr A --master-port
P`` (static rendezvous). Static, not c10d, because these jobs have a fixed size and no restarts in
place (a failed or preempted job is restarted whole and resumes from its checkpoint), and the
scheduler already numbers the nodes: node 0 is Vertex's primary replica (pool 0), so global rank 0,
which writes the outputs, runs there; c10d numbers the nodes itself, in an order of its own.
It is also what ``torchrun`` does with these variables, and needs no run id shared by the nodes.

What each step does with its processes is in ``rlhf.distributed`` (DDP, reductions, sharding);
only global rank 0 writes outputs. A worker's UserError (a bad input, a non-finite loss) comes back
as the same UserError, so the command still exits 2 with one line. A job that stops for another
reason does too (``JobFailed``), where PyTorch's launcher would print tracebacks: a process that
lost the others (another node died: the first failure's own error when that node could leave it in
the job's store), a process killed by a signal, a node sent SIGTERM (preempted, cancelled), nodes
that could not meet within ``RLHF_RENDEZVOUS_TIMEOUT_S``. A crash (a bug) keeps its traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from typing import Any, Callable, Optional

from rlhf import storage
from rlhf.cluster import ClusterLayout
from rlhf.errors import UserError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# How long node 0 waits for every node to join, and the others for node 0 (seconds): nodes of one
# job may start minutes apart (image pulls, a cluster adding GPU machines). PyTorch's default;
# $RLHF_RENDEZVOUS_TIMEOUT_S changes it.
RENDEZVOUS_TIMEOUT_S = 900

# What a collective says when the process at the other end is gone (gloo's and NCCL's words).
PEER_LOST_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout",
                   "Timed out waiting", "remote process exited", "NCCL communicator was aborted")

RESTART = "restart the job with the same --output-dir: a training step resumes from its last checkpoint"


class JobFailed(UserError):
    """The job stopped because a process lost the others (another node failed, was preempted or
    stopped). One line, like every stopped run; the failed process's own log has the details."""


def resolve_devices(requested: Optional[int], device: str = "", flag: str = "--devices ") -> int:
    """The number of processes to run: ``requested`` when given (checked against the GPUs
    visible), else every visible GPU, else 1. ``device`` cpu or one named GPU (``cuda:N``) means 1
    unless ``requested`` says otherwise. ``flag`` names where ``requested`` came from, in messages."""
    prefer = device or os.environ.get("RLHF_DEVICE") or ""
    if requested is not None and requested < 1:
        raise UserError(f"{flag}{requested}: must be a positive integer")
    import torch
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested is not None:
        if requested > 1 and prefer != "cpu" and 0 < gpus < requested:
            raise UserError(f"{flag}{requested}: only {gpus} GPU(s) visible; give --devices {gpus} or less")
        return requested
    if prefer not in ("", "cuda"):
        return 1  # cpu, or one GPU by name
    return max(gpus, 1)


def inside_launched_worker() -> bool:
    """Whether this process is already one of several: started by a launcher (``torchrun``, ours:
    ``LOCAL_RANK`` and ``WORLD_SIZE`` set), or by a scheduler that sets ``WORLD_SIZE``/``RANK`` per
    pod and no layout of nodes (one process per pod). A scheduler that sets them beside a layout
    (``PET_*``, ``CLUSTER_SPEC``) is not a launcher, even for one node: the Training Operator gives a
    one-replica PyTorchJob ``WORLD_SIZE=1``, ``RANK=0`` and ``PET_NNODES=1`` per pod
    (``pkg/controller.v1/pytorch/envvar.go``), and the node's GPUs still need a process each."""
    if "WORLD_SIZE" not in os.environ:
        return False
    return "LOCAL_RANK" in os.environ or not ClusterLayout.from_environment().source


def reports() -> bool:
    """Whether this process prints the step's result: global rank 0, i.e. the launching process of
    node 0, or rank 0 of an outer ``torchrun``."""
    if inside_launched_worker():
        return os.environ.get("RANK", "0") == "0"
    return ClusterLayout.from_environment().node_rank == 0


def node_layout(config) -> ClusterLayout:
    """This node's layout (``rlhf.cluster``) with its processes resolved: ``config.devices``, else
    the scheduler's ``PET_NPROC_PER_NODE``, else every local GPU (1 on CPU)."""
    layout = ClusterLayout.from_environment()
    requested, flag = getattr(config, "devices", None), "--devices "
    if requested is None and layout.nproc_per_node is not None:
        requested, flag = layout.nproc_per_node, "PET_NPROC_PER_NODE="
    n = resolve_devices(requested, getattr(config, "device", ""), flag)
    return dataclasses.replace(layout, nproc_per_node=n)


def run(step: Callable[..., Any], config, *args, **kwargs) -> Any:
    """``step(config, *args, **kwargs)`` on every process of the job (see module doc); returns rank
    0's result (None on the other nodes). ``step`` must be a module-level function and its arguments
    picklable."""
    if inside_launched_worker():
        return step(config, *args, **kwargs)
    layout = node_layout(config)
    if not layout.multi_node and layout.nproc_per_node <= 1:
        return step(config, *args, **kwargs)
    output = getattr(config, "output_dir", "")
    if layout.multi_node and output and not (storage.is_gcs(output) or output.startswith("/gcs/")):
        log.warning("--output-dir %s is a path on this machine: every node must see the same directory "
                    "(a shared file system, or Vertex AI's /gcs/ mount), or the nodes resume from different "
                    "checkpoints; a gs:// URI needs nothing shared", config.output_dir)
    return launch_on(layout, step, config, *args, **kwargs)


def launch(nproc: int, step: Callable[..., Any], *args, **kwargs) -> Any:
    """``step(*args, **kwargs)`` in ``nproc`` processes on this machine alone; see ``launch_on``."""
    return launch_on(ClusterLayout(nproc_per_node=nproc), step, *args, **kwargs)


def launch_on(layout: ClusterLayout, step: Callable[..., Any], *args, **kwargs) -> Any:
    """``step(*args, **kwargs)`` in ``layout.nproc_per_node`` processes on this node, started by
    PyTorch's elastic launcher as one job of ``layout.nnodes`` nodes, no restarts (a failed or
    preempted job is restarted whole and resumes from its checkpoint). One machine: c10d rendezvous
    on a free local port (``torchrun --standalone``). Several: static rendezvous at node 0's address,
    node rank from the scheduler (``torchrun --nnodes N --node-rank R --master-addr A --master-port
    P``), so global rank 0, the one that writes, is on node 0: the replica the scheduler reports
    as primary. Returns rank 0's return value (None on the other nodes)."""
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch
    nproc = layout.nproc_per_node or 1
    threads = int(os.environ.get("OMP_NUM_THREADS") or max((os.cpu_count() or 1) // nproc, 1))
    if layout.multi_node:
        rendezvous = dict(rdzv_backend="static", rdzv_endpoint=layout.rendezvous_endpoint, run_id="rlhf",
                          rdzv_configs={"rank": layout.node_rank, "timeout": rendezvous_timeout()})
        log.info("%s; this is node %d, rendezvous at node 0's %s (from %s)", layout.describe(),
                 layout.node_rank, layout.rendezvous_endpoint, layout.source)
    else:
        rendezvous = dict(rdzv_backend="c10d", rdzv_endpoint="localhost:0", run_id=str(uuid.uuid4()))
        log.info("%s", layout.describe())
    config = LaunchConfig(min_nodes=layout.nnodes, max_nodes=layout.nnodes, nproc_per_node=nproc,
                          max_restarts=0, start_method="spawn", **rendezvous)
    errors = tempfile.mkdtemp(prefix="rlhf-launch-")
    quiet = _QuietFailures(errors)  # the launcher's own traceback of a failure already explained
    agent_log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    agent_log.addFilter(quiet)
    try:
        results = elastic_launch(config, _worker)(step, errors, threads, args, kwargs)
    except ChildFailedError as e:
        failure = _first_failure(_records(errors), layout, _deaths(e))
        if failure is None:
            raise  # a crash: the worker's traceback is in the log above
        raise failure from None
    except SignalException as e:  # this node was told to stop (a preempted VM, a cancelled job)
        raise JobFailed(f"{'node %d of %d' % (layout.node_rank, layout.nnodes) if layout.multi_node else 'the step'} "
                        f"was stopped by {e.sigval.name}; {RESTART}") from None
    except DistError as e:  # the launchers of the nodes could not meet (before any worker started)
        if not layout.multi_node:
            raise
        raise JobFailed(f"node {layout.node_rank} of {layout.nnodes} could not meet the others at node 0's "
                        f"{layout.rendezvous_endpoint} (from {layout.source}): {_first_line(e)}. Check that "
                        f"every node was started and reaches that address and port; nodes that start more "
                        f"than {rendezvous_timeout()} s apart need a larger RLHF_RENDEZVOUS_TIMEOUT_S") from None
    finally:
        agent_log.removeFilter(quiet)
        shutil.rmtree(errors, ignore_errors=True)
    return results.get(0)


def rendezvous_timeout() -> int:
    raw = os.environ.get("RLHF_RENDEZVOUS_TIMEOUT_S", "").strip()
    if not raw:
        return RENDEZVOUS_TIMEOUT_S
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"RLHF_RENDEZVOUS_TIMEOUT_S={raw!r}: expected a positive number of seconds")
    return int(raw)


def _worker(step, errors: str, threads: int, args, kwargs):
    """One launched process: logging (INFO on global rank 0 only, so the log is read once), threads,
    the step. A failure is recorded for this node's launching process (``errors``) and for the other
    nodes (``_tell_the_others``). A UserError or a lost peer (``_lost_peer``) then ends the process
    quietly (the launching process prints one line; the launcher stops the others); anything else is
    re-raised, so its traceback is logged."""
    import torch
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=LOG_FORMAT,
                        datefmt="%H:%M:%S", force=True)
    torch.set_num_threads(threads)
    try:
        result = step(*args, **kwargs)
    except Exception as e:
        kind = "user" if isinstance(e, UserError) else "peer" if _lost_peer(e) else "error"
        record = {"rank": rank, "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
                  "node": int(os.environ.get("GROUP_RANK", "0")), "kind": kind, "type": type(e).__name__,
                  "message": str(e) if kind == "user" else _short(str(e))}
        if kind == "peer":
            record["cause"] = _why_the_others_stopped()
        else:
            _tell_the_others(record)
        # Written whole, then renamed: the launcher may stop this process mid-write (the others failed).
        path = os.path.join(errors, f"rank-{rank}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        if kind == "error":
            raise
        # No traceback through the collectives, and no teardown of a broken process group (it aborts).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return result if rank == 0 else None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")


def _short(message: str) -> str:
    """A collective's error in one line: gloo's ``[file.cc:553] Connection closed by peer [addr]:port.
    This is typically ...`` -> ``Connection closed by peer [addr]:port``."""
    line = (message.strip().splitlines() or [""])[0]
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)
    return line.split(". ")[0].rstrip(".")


def _lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process is gone: the store or the
    network gone, or a backend error (gloo, NCCL) that says so. Other backend errors are crashes."""
    import torch.distributed as dist
    if isinstance(e, (dist.DistNetworkError, dist.DistStoreError)):
        return True
    return isinstance(e, RuntimeError) and any(sign in str(e) for sign in PEER_LOST_SIGNS)


FAILURE_KEY = "rlhf/first-failure"


def _tell_the_others(record: dict) -> None:
    """Leave this process's failure in the job's store (hosted by node 0's launcher), so a process
    that then loses contact can say why. Best effort: the store may be gone too."""
    try:
        import torch.distributed as dist
        if dist.is_initialized():
            store = dist.distributed_c10d._get_default_store()
            store.compare_set(FAILURE_KEY, "", json.dumps(record))  # the first failure wins
    except Exception:  # noqa: BLE001  (the failure itself is what must come out)
        pass


def _why_the_others_stopped() -> Optional[dict]:
    try:
        import torch.distributed as dist
        store = dist.distributed_c10d._get_default_store()
        if store.check([FAILURE_KEY]):
            return json.loads(store.get(FAILURE_KEY))
    except Exception:  # noqa: BLE001
        pass
    return None


def _records(errors: str) -> list[dict]:
    found = []
    for name in sorted(n for n in os.listdir(errors) if n.endswith(".json")):
        with open(os.path.join(errors, name), encoding="utf-8") as f:
            found.append(json.load(f))
    return found


def _deaths(error) -> dict[int, str]:
    """Global rank -> how it ended, for this node's processes the launcher saw fail."""
    out = {}
    for rank, failure in getattr(error, "failures", {}).items():
        how = (f"killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exit code {failure.exitcode}")
        out[rank] = how
    return out


def _first_failure(found: list[dict], layout: ClusterLayout,
                   deaths: Optional[dict[int, str]] = None) -> Optional[UserError]:
    """The error this node's command ends with: the first UserError of its processes; else, when a
    process of this node died without a word (``deaths`` not in ``found``: a signal, the system's
    out-of-memory killer), a JobFailed naming it; else, when every failed process lost contact with
    the others, a JobFailed saying so (and why, when the process that failed first said); else None
    (a crash, whose traceback is in the log)."""
    users = [e for e in found if e["kind"] == "user"]
    if users:
        first = min(users, key=lambda e: e["rank"])
        return UserError(first["message"] if first["rank"] == 0 else f"(process {first['rank']}) {first['message']}")
    if any(e["kind"] == "error" for e in found):
        return None
    where = f" on node {layout.node_rank} of {layout.nnodes}" if layout.multi_node else ""
    silent = sorted(set(deaths or {}) - {e["rank"] for e in found})
    if silent:
        return JobFailed(f"process {silent[0]}{where} died ({deaths[silent[0]]}) without an error of its own "
                         f"(stopped by a signal, the system's out-of-memory killer, or a watchdog after "
                         f"another node failed: the logs of this node and of the others say which); {RESTART}")
    if not found:
        return None
    first = min(found, key=lambda e: e["rank"])
    cause = first.get("cause")
    if cause:
        why = (f"process {cause['rank']} (node {cause['node']}) had stopped: {cause['type']}: "
               f"{cause['message']}")
    else:
        why = "another process or node failed, was preempted or was stopped: its own log says why"
    return JobFailed(f"process {first['rank']}{where} lost contact with the rest of the job ({first['message']}); "
                     f"{why}; {RESTART}")


class _QuietFailures(logging.Filter):
    """Drops the launcher's traceback of a worker whose failure ``_first_failure`` explains in one
    line (a UserError, a lost peer); a crash keeps it (it carries the worker's traceback)."""

    def __init__(self, errors: str):
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("failed (exitcode") or not isinstance(record.args, tuple):
            return True
        local_rank = record.args[1] if len(record.args) > 1 else None
        try:
            explained = {e["local_rank"] for e in _records(self.errors) if e["kind"] != "error"}
        except (OSError, ValueError):
            return True
        return local_rank not in explained
