"""PPO on several GPUs (or CPU processes): data parallel, one process per device.

    rlhf tune --devices 8 --prompt-dataset ... --reward-model ... --output-dir ...

(the default is every visible GPU; the KFP component runs on what its task was given; under an
outer ``torchrun`` the step just runs). ``rlhf.launch`` starts the processes; each holds the whole
shared-base model (policy, reference, value and reward on one copy of the base) and, per step:

- samples its share of the step's ``batch_size`` episodes (``batch_size / N`` each: the global
  batch is the setting, so N devices train with the batch one device would, and a restart may
  change N without changing what the run means);
- whitens rewards and advantages over every process's tokens (``masked_whiten`` below), so the
  advantages are those of the global batch;
- runs its share of each minibatch through ``DistributedDataParallel`` (``rlhf.distributed.wrap``
  around ``update_pass``): the LoRA and value-head gradients are averaged in the backward pass
  of a minibatch's last micro-batch; the frozen base is left out of DDP. Each process's loss is
  the mean over its own tokens, so the average is the global token mean when the processes hold
  as many response tokens, and weights each process equally otherwise (as TRL and OpenRLHF do);
- moves the adaptive KL controller with the KL of every episode (``global_mean``), so β stays the
  same on every process, and reduces the logged metrics over the processes
  (``rlhf.distributed.reduce_metrics``).

Rank 0 alone writes metrics, samples, checkpoints and the outputs. The sampling stream of each
process is seeded by (seed, rank, step) at every step, so a killed N-process run resumes to the
result of an uninterrupted one.

A base that does not fit one device (the memory plan says "sharded", or ``--shard-base``) is sharded
over the processes instead of replicated (``SharedBaseModel.shard_base``, FSDP2): the policy adapter
and value head stay whole on each process, their gradients averaged by one all-reduce after each
minibatch's last micro-batch (``reduce_gradients``) instead of DDP; the rollout decodes in step on
every process (``rollout.generate``); every process runs the sample generations; rank 0 writes the
adapter and merged model from an unsharded copy (``rlhf.ppo.run.unsharded_copy``).
"""

from __future__ import annotations

import torch

# The process-group helpers every step shares, used by the PPO step under these names too.
from rlhf.distributed import (active, all_sum, barrier, global_mean, init, rank, reduce_metrics,  # noqa: F401
                              shutdown, world_size, wrap)
from rlhf.ppo import whiten


def update_pass(model, input_ids, attention_mask, prompt_width: int, temperature: float,
                with_entropy: bool = False):
    """The pass a PPO minibatch backpropagates through (LoRA dropout on: ``training_pass``): the
    policy's log-probs (and entropies) of the response tokens and the values (from the head, or
    from the value adapter). One function of the model, so that DDP runs it as one ``forward``."""
    with model.training_pass():
        logprobs, entropy, values = model.response_pass(input_ids, attention_mask, prompt_width, temperature,
                                                        with_entropy=with_entropy)
        if model.value_model == "adapter":
            values = model.value_pass(input_ids, attention_mask, prompt_width)
    return logprobs, entropy, values


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """``rlhf.ppo.whiten.masked_whiten`` with the mean and variance of every process's masked
    elements (the plain function in a single process)."""
    if not active():
        return whiten.masked_whiten(values, mask, shift_mean, eps)
    m = mask.to(values.dtype)
    total, count = all_sum([float((values * m).sum()), float(m.sum())])
    mean = total / max(count, 1.0)
    (squares,) = all_sum([float((((values - mean) ** 2) * m).sum())])
    var = squares / max(count, 1.0)
    if count > 1:
        var = var * count / (count - 1)
    whitened = (values - mean) * (var + eps) ** -0.5
    if not shift_mean:
        whitened = whitened + mean
    return whitened * m


def seed_step(seed: int, step: int) -> None:
    """Seed this process's sampling for ``step`` (several processes: distinct streams per rank,
    and a resumed run draws what an uninterrupted one drew)."""
    torch.manual_seed(seed + 1_000_003 * rank() + 7_919 * step)
