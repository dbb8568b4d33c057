"""Several processes, one step: the process group and the few collectives the steps use.

A step launched on N devices (``rlhf.launch``) runs N copies of itself, one per device; this module
is what those copies share. Every helper is a no-op (or the identity) in a single process, so the
steps call them unconditionally:

- ``init(device)``: (rank, world size, device); joins the process group (NCCL on GPU, gloo on CPU)
  when launched, and pins each process to its own GPU (``LOCAL_RANK``);
- ``wrap(module, fn)``: PyTorch's ``DistributedDataParallel`` around ``fn(module, ...)``: the
  gradients of the trainable parameters are averaged over the processes in the backward pass of
  the last micro-batch (``no_sync`` for the others). The frozen base is left out of DDP (it is
  loaded identically by every process, so nothing of it is broadcast or reduced);
- ``shard_frozen(model)``: FSDP2 (``fully_shard``) over the frozen base, per decoder layer and then
  the whole model, for a base that does not fit one device; the trainable parameters (LoRA, heads)
  are left out of FSDP (``ignored_params``): whole on every process, averaged by ``wrap``'s
  ``reduce_gradients`` after the step's last backward pass instead of DDP;
- ``everyone(flag)``: whether a flag holds on every process, so sharded decoding loops stop together;
- ``reduce_metrics`` / ``global_mean`` / ``all_sum``: metrics and statistics over every process
  (means weighted by counts), so every process takes the same decisions (the KL controller) and
  rank 0 logs what all of them did;
- ``shard`` / ``gather``: split a list of work over the processes, put the results back in order.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from rlhf.errors import UserError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def _dist():
    import torch.distributed as dist
    return dist


def active() -> bool:
    """Whether this process is one of several in an initialized process group."""
    return world_size() > 1 and _dist().is_initialized()


def init(device_preference: Optional[str] = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device). In a launched worker: joins the process group (NCCL when the
    device is a GPU, gloo on CPU) and pins the process to GPU ``LOCAL_RANK``. Alone: the device
    ``rlhf.models.pick_device`` picks."""
    from rlhf.models import pick_device
    world = world_size()
    if world <= 1:
        return 0, 1, pick_device(device_preference)
    prefer = device_preference or os.environ.get("RLHF_DEVICE") or ""
    if prefer not in ("", "cpu", "cuda"):
        raise UserError(f"--device {prefer!r} names one device, but this step runs on {world} processes, each "
                        f"on its own GPU: give --device cuda (or leave it empty), or --devices 1")
    dist = _dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if prefer != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"process {local_rank} has no GPU: {torch.cuda.device_count()} visible, "
                            f"{world} processes asked for (--devices)")
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, **kwargs)
    return dist.get_rank(), world, device


def barrier() -> None:
    if active():
        _dist().barrier()


def shutdown() -> None:
    if active():
        _dist().destroy_process_group()


# -- gradients ----------------------------------------------------------------------------------


class Passes(nn.Module):
    """``fn(module, *args)`` as a module's ``forward``. DDP averages gradients only for outputs
    computed through its own ``forward``; the trainers' passes are functions of the model
    (``pair_rewards``, PPO's training pass), so this gives them one."""

    def __init__(self, module: nn.Module, fn: Callable):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *args, **kwargs):
        return self.fn(self.module, *args, **kwargs)


class Local:
    """What ``wrap`` returns in a single process: the same calls, no DDP."""

    def __init__(self, module: nn.Module, fn: Callable):
        self.module, self.fn = module, fn

    def __call__(self, *args, **kwargs):
        return self.fn(self.module, *args, **kwargs)

    def no_sync(self):
        import contextlib
        return contextlib.nullcontext()

    def reduce_gradients(self) -> None:
        """Nothing to do: DDP (or a single process) has averaged them in the backward pass."""


class ShardedPasses(Local):
    """What ``wrap`` returns for a model whose frozen base is sharded (``shard_frozen``): plain calls
    (FSDP2 gathers each layer's base weights around its forward and backward), and
    ``reduce_gradients()``, to call after the step's last backward pass, averages the gradients of
    the trainable parameters (whole on every process) over the processes, as DDP would."""

    def reduce_gradients(self) -> None:
        average_gradients(self.module)


def average_gradients(module: nn.Module) -> None:
    """Each trainable parameter's gradient averaged over the processes (one all-reduce of them all;
    a missing gradient counts as zeros so every process sends the same layout)."""
    if not active():
        return
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).to(torch.float32) for g in grads])
    _dist().all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def is_sharded(module) -> bool:
    """Whether ``module`` was sharded by ``shard_frozen`` (FSDP2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_frozen(model: nn.Module, device: torch.device, root: Optional[nn.Module] = None) -> bool:
    """Shard ``model``'s frozen parameters over the processes with FSDP2: ``fully_shard`` on every
    decoder layer (the classes the model names in ``_no_split_modules``), then on ``root``: the
    module whose ``forward`` the passes call (default the whole model; the reward passes call the
    trunk, then the small score head, which stays whole).
    Trainable parameters are ignored by FSDP: they stay whole (and plain tensors) on every process,
    so the optimizer, gradient clipping, checkpoints and adapter files are those of an unsharded
    model. Every process must then run the same number of forward passes. Returns False (nothing
    done) in a single process."""
    if not active():
        return False
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (world_size(),))
    root = model if root is None else root
    trainable = {p for p in model.parameters() if p.requires_grad}
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in root.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(f"cannot shard {type(model).__name__}: its decoder layers are unknown "
                        f"(no _no_split_modules); use --devices 1 or a larger device")
    for layer in layers:
        fully_shard(layer, mesh=mesh, ignored_params=trainable)
    fully_shard(root, mesh=mesh, ignored_params=trainable)
    return True


def wrap(module: nn.Module, fn: Callable, find_unused_parameters: bool = False):
    """A callable ``f(*args) = fn(module, *args)`` whose backward averages the gradients of
    ``module``'s trainable parameters over the processes (``DistributedDataParallel``); alone, the
    plain call. Use ``f.no_sync()`` around every micro-batch but the last of an optimizer step.
    Parameters that do not require grad (the frozen base) and buffers are left out of DDP: every
    process loads the same base, so there is nothing to broadcast or average."""
    if not active():
        return Local(module, fn)
    if is_sharded(module):  # FSDP2 over the frozen base: no DDP, gradients averaged by reduce_gradients
        return ShardedPasses(module, fn)
    from torch.nn.parallel import DistributedDataParallel as DDP
    passes = Passes(module, fn)
    frozen = [f"module.{n}" for n, p in module.named_parameters() if not p.requires_grad]
    frozen += [f"module.{n}" for n, _ in module.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(passes, frozen)
    device = next(p for p in module.parameters() if p.requires_grad).device
    return DDP(passes, device_ids=[device.index] if device.type == "cuda" else None,
               broadcast_buffers=False, find_unused_parameters=find_unused_parameters)


# -- reductions ---------------------------------------------------------------------------------


def all_sum(values: Sequence[float], device=None) -> list[float]:
    """Each value summed over the processes (float64)."""
    if not active():
        return [float(v) for v in values]
    dist = _dist()
    device = device or (torch.device("cuda", torch.cuda.current_device())
                        if dist.get_backend() == "nccl" else torch.device("cpu"))
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_max(values: Sequence[float]) -> list[float]:
    if not active():
        return [float(v) for v in values]
    return [-v for v in all_min([-float(x) for x in values])]


def all_min(values: Sequence[float]) -> list[float]:
    if not active():
        return [float(v) for v in values]
    dist = _dist()
    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.tolist()


def everyone(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one all-reduce): how processes whose sharded
    forward passes must stay in step agree to stop a loop together."""
    if not active():
        return bool(flag)
    return all_min([1.0 if flag else 0.0])[0] > 0


def global_mean(total: float, count: float) -> float:
    """Σ total / Σ count over the processes: the mean of every process's items."""
    total, count = all_sum([total, count])
    return total / count if count else float("nan")


def reduce_metrics(metrics: Mapping[str, float], weight: float = 1.0,
                   weights: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """One process's metrics -> the same metrics over every process, identical on all of them:
    ``time/*`` the slowest process's (the step waits for it), ``perf/*`` summed (throughput of
    the whole job), every other metric the mean of the processes' values weighted by ``weight``
    (the items each process averaged over: episodes, pairs) or by ``weights[name]`` (tokens for a
    per-token mean). Every process must pass the same names."""
    if not active():
        return dict(metrics)
    names = sorted(metrics)
    weights = weights or {}
    means = [n for n in names if not n.startswith(("time/", "perf/"))]
    sums = [n for n in names if n.startswith("perf/")]
    maxes = [n for n in names if n.startswith("time/")]
    w = [float(weights.get(n, weight)) for n in means]
    reduced = all_sum([metrics[n] * wi for n, wi in zip(means, w)] + w + [metrics[n] for n in sums])
    out = {n: (reduced[i] / reduced[len(means) + i] if reduced[len(means) + i] else float("nan"))
           for i, n in enumerate(means)}
    out.update({n: reduced[2 * len(means) + i] for i, n in enumerate(sums)})
    out.update(dict(zip(maxes, all_max([metrics[n] for n in maxes]))))
    return {n: out[n] for n in metrics}


# -- sharding -----------------------------------------------------------------------------------


def shard_bounds(n: int, rank_: Optional[int] = None, world: Optional[int] = None) -> tuple[int, int]:
    """[start, end) of this process's contiguous share of ``n`` items (sizes differ by at most 1)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return r * n // w, (r + 1) * n // w


def gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order, on every process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def gather_in_order(items: Iterable[tuple[int, Any]], n: int) -> list[Any]:
    """``(index, value)`` pairs computed by the processes (each its own indices) -> the list of
    ``n`` values in index order, on every process."""
    out: list[Any] = [None] * n
    seen = 0
    for part in gather(list(items)):
        for index, value in part:
            out[index] = value
            seen += 1
    if seen != n:
        raise RuntimeError(f"gathered {seen} results for {n} items: the shards overlap or miss some")
    return out
