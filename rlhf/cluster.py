"""Which machines a step runs on: `ClusterLayout.from_environment()`.

A training step started by a job scheduler on several machines ("nodes") learns its place from the
environment the scheduler sets; `rlhf.launch` then starts PyTorch's launcher with it on every node.
Read in this order:

- ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``, ``PET_MASTER_PORT``, ``PET_NPROC_PER_NODE``
  (Kubeflow Trainer; they are ``torchrun``'s own flags as variables, so a stock ``torchrun`` in the
  same container reads the same layout);
- ``CLUSTER_SPEC`` (Vertex AI custom jobs): ``{"cluster": {"workerpool0": ["host:port"],
  "workerpool1": ["host:port", ...]}, "task": {"type": "workerpool1", "index": 0}}``. Worker pool 0
  holds the one primary replica: node rank 0, and the master address and port are its entry. Pool 1
  replica ``i`` is node rank ``1 + i``. Pools 2 and 3 (reduction server, evaluators) are not nodes of
  the job;
- nothing: one machine.

Processes per node are not the scheduler's to say on Vertex AI: ``--devices``, else
``PET_NPROC_PER_NODE`` when given, else every local GPU (``rlhf.launch.resolve_devices``).
A malformed value is a UserError naming the variable.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Optional

from rlhf.errors import UserError

PET_VARIABLES = ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NPROC_PER_NODE")
TORCHRUN_DEFAULT_PORT = 29500  # what torchrun uses when PET_MASTER_PORT is not set


@dataclasses.dataclass(frozen=True)
class ClusterLayout:
    """This node's place in the job. ``nproc_per_node`` None: decided on the node (``--devices``, else
    every local GPU). ``source`` names the variables it came from ("" for one machine)."""

    nnodes: int = 1
    node_rank: int = 0
    nproc_per_node: Optional[int] = None
    master_addr: str = ""
    master_port: int = 0
    source: str = ""

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def rendezvous_endpoint(self) -> str:
        """``host:port`` of node 0 (brackets around an IPv6 address)."""
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"{host}:{self.master_port}"

    def describe(self) -> str:
        """``2 nodes x 4 processes = world size 8`` (every node runs as many processes as this one)."""
        n = self.nproc_per_node or 1
        nodes = f"{self.nnodes} node{'s' if self.nnodes != 1 else ''}"
        return f"{nodes} x {n} process{'es' if n != 1 else ''} = world size {self.nnodes * n}"

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> "ClusterLayout":
        env = os.environ if environ is None else environ
        if any(env.get(name, "").strip() for name in PET_VARIABLES):
            return _from_pet(env)
        if env.get("CLUSTER_SPEC", "").strip():
            return _from_cluster_spec(env["CLUSTER_SPEC"])
        return cls()


# -- Kubeflow Trainer ---------------------------------------------------------------------------


def _int(env: Mapping[str, str], name: str, low: int, high: Optional[int] = None, default=None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        if default is not None:
            return default
        raise UserError(f"{name} is not set, but {_set_pet(env)} are: Kubeflow Trainer sets all of "
                        f"{', '.join(PET_VARIABLES[:4])}; set {name} too")
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r}: expected a whole number") from None
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise UserError(f"{name}={raw!r}: expected a number {bound}")
    return value


def _set_pet(env: Mapping[str, str]) -> str:
    return ", ".join(n for n in PET_VARIABLES if env.get(n, "").strip())


def _from_pet(env: Mapping[str, str]) -> ClusterLayout:
    raw_nodes = env.get("PET_NNODES", "").strip()
    if ":" in raw_nodes:  # torchrun's elastic MIN:MAX form; a fixed N:N is N
        low, _, high = raw_nodes.partition(":")
        if low.strip() != high.strip():
            raise UserError(f"PET_NNODES={raw_nodes!r}: an elastic range of nodes; these jobs have a fixed "
                            f"size: give one number")
        env = {**env, "PET_NNODES": low}
    nnodes = _int(env, "PET_NNODES", 1, default=1)
    node_rank = _int(env, "PET_NODE_RANK", 0, nnodes - 1, default=0 if nnodes == 1 else None)
    nproc = _nproc(env.get("PET_NPROC_PER_NODE", "").strip())
    if nnodes == 1:
        return ClusterLayout(nproc_per_node=nproc, source="PET_*")
    addr = env.get("PET_MASTER_ADDR", "").strip()
    if not addr:
        raise UserError(f"PET_MASTER_ADDR is not set, but PET_NNODES={nnodes}: every node must be told "
                        f"node 0's address")
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    port = _int(env, "PET_MASTER_PORT", 1, 65535, default=TORCHRUN_DEFAULT_PORT)
    return ClusterLayout(nnodes, node_rank, nproc, addr, port, "PET_*")


def _nproc(raw: str) -> Optional[int]:
    if raw in ("", "auto", "gpu"):
        return None  # every local GPU (1 on CPU), or --devices
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"PET_NPROC_PER_NODE={raw!r}: expected a positive number of processes, or "
                        f"'auto'/'gpu' (one per local GPU)")
    return value


# -- Vertex AI ----------------------------------------------------------------------------------


SPEC_SHAPE = ('{"cluster": {"workerpool0": ["host:port"], "workerpool1": ["host:port", ...]}, '
              '"task": {"type": "workerpool0", "index": 0}}')


def _spec_error(why: str) -> UserError:
    return UserError(f"CLUSTER_SPEC {why}; Vertex AI sets it as {SPEC_SHAPE}")


def _host_port(entry, where: str) -> tuple[str, int]:
    if not isinstance(entry, str) or ":" not in entry:
        raise _spec_error(f"{where} is {entry!r}, not 'host:port'")
    host, _, port = entry.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _spec_error(f"{where} is {entry!r}, not 'host:port' with a port from 1 to 65535")
    return host, int(port)


def _from_cluster_spec(raw: str) -> ClusterLayout:
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _spec_error(f"is not JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(spec, dict):
        raise _spec_error(f"is a JSON {type(spec).__name__}, not an object")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise _spec_error('has no "cluster" and "task" objects')
    pools = {}
    for name in ("workerpool0", "workerpool1"):
        entries = cluster.get(name, [])
        if not isinstance(entries, list):
            raise _spec_error(f'"cluster.{name}" is {entries!r}, not a list')
        pools[name] = [_host_port(e, f'"cluster.{name}[{i}]"') for i, e in enumerate(entries)]
    if len(pools["workerpool0"]) != 1:
        raise _spec_error(f'"cluster.workerpool0" has {len(pools["workerpool0"])} replicas; the primary '
                          f"pool holds exactly one")
    kind, index = task.get("type"), task.get("index", 0)
    if kind in ("workerpool2", "workerpool3"):
        raise _spec_error(f'"task.type" is {kind!r}: training runs in workerpool0 and workerpool1 only '
                          f"(pool 2 is for a reduction server or parameter servers, pool 3 for evaluators)")
    if kind not in pools:
        raise _spec_error(f'"task.type" is {kind!r}, not "workerpool0" or "workerpool1"')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(pools[kind]):
        raise _spec_error(f'"task.index" is {index!r}: {kind} has {len(pools[kind])} replica(s), '
                          f"numbered from 0")
    nnodes = 1 + len(pools["workerpool1"])
    if nnodes == 1:
        return ClusterLayout(source="CLUSTER_SPEC")
    addr, port = pools["workerpool0"][0]
    node_rank = 0 if kind == "workerpool0" else 1 + index
    return ClusterLayout(nnodes, node_rank, None, addr, port, "CLUSTER_SPEC")
