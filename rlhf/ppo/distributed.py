"""Optional data parallelism over several GPUs (or CPU processes), launched with torchrun:

    torchrun --nproc_per_node 8 -m rlhf tune --prompt-dataset ... --reward-model ... --output-dir ...

Each process holds the full (shared-base) model, samples its own ``batch_size`` episodes, and the
trainer averages the LoRA/value-head gradients with one all-reduce per optimizer step: with
adapters of a few MB this costs little, and it needs no DeepSpeed/FSDP. Rank 0 writes metrics,
samples, checkpoints and outputs. Metrics are rank 0's (not gathered). Resume restores weights,
optimizer, KL coefficient and data position; the sampling streams are reseeded per rank, so a
resumed multi-process run is statistically, not bitwise, equal to an uninterrupted one
(single-process runs resume exactly). Models that do not fit one device need sharding, which this
path does not do.
"""

from __future__ import annotations

import os

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device_preference=None) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initializes torch.distributed when launched by torchrun."""
    from rlhf.models import pick_device
    world = world_size()
    if world <= 1:
        return 0, 1, pick_device(device_preference)
    import torch.distributed as dist
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_preference != "cpu":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), world, device


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist
        dist.barrier()


def shutdown() -> None:
    if world_size() > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
