"""The SFT loop: each optimizer step takes ``gradient_accumulation_steps`` micro-batches of
``batch_size`` examples from a length-bucketed batch plan and takes one AdamW step on the mean
negative log-likelihood of the step's response tokens (``rlhf.sft.batching``). The loop,
checkpoints, resume and the split over processes are ``rlhf.policy_training.trainer``'s, shared
with DPO.

On N processes each takes its contiguous share of every micro-batch and scales its summed loss by
world size / the step's tokens, so DDP's gradient average is the token mean of the whole step,
whatever the split.
"""

from __future__ import annotations

import contextlib
import math

import torch

from rlhf import distributed
from rlhf.policy_training.trainer import PolicyTrainer
from rlhf.reward.trainer import finish_step
from rlhf.sft.batching import EncodedExample, collate, response_nll


class SFTTrainer(PolicyTrainer):
    """Runs ``config.sft_train_steps`` steps on ``model`` (a ``SharedBaseModel``: its policy adapter
    is what trains) over ``train_set`` (``EncodedExample``s), writing under ``layout``."""

    ITEM_NAME = "examples"
    SHOWN = ["loss/total", "optim/grad_norm"]
    NON_FINITE_CAUSES = ("a learning rate too high (--sft-learning-rate-multiplier), or fp16/bf16 overflow in "
                         "the base (try --dtype fp32)")

    @property
    def train_steps(self) -> int:
        return self.cfg.sft_train_steps

    def length(self, example: EncodedExample) -> int:
        return len(example.prompt) + len(example.response)

    def train_step(self, micro_batches: list[list[int]]) -> dict[str, float]:
        step_tokens = sum(len(self.train_set[i].response) for b in micro_batches for i in b)
        scale = distributed.world_size() / step_tokens  # DDP divides by the world size
        micro_batches, counts = self.shard(micro_batches)
        sums = {"loss/total": 0.0}
        for k, (indices, count) in enumerate(zip(micro_batches, counts)):
            rows = collate([self.train_set[i] for i in indices], self.pad_id, self.device)
            weight = scale if count else 0.0
            with contextlib.nullcontext() if k == len(micro_batches) - 1 else self.forward.no_sync():
                logprobs, _ = self.forward(rows)
                nll = -logprobs
                (nll.sum() * weight).backward()
            sums["loss/total"] += nll.detach().sum().item() * weight
        metrics = finish_step(sums, self.forward, self.optimizer, self.scheduler, self.cfg)
        metrics["tokens/step"] = float(step_tokens)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Token-mean NLL and perplexity of the held-out answers (every process scores all of them:
        they are few)."""
        if not self.heldout:
            return {}
        nll_total = tokens = 0.0
        for start in range(0, len(self.heldout), self.cfg.batch_size):
            rows = collate(self.heldout[start:start + self.cfg.batch_size], self.pad_id, self.device)
            nll, count = response_nll(self.model, rows)
            nll_total, tokens = nll_total + nll.sum().item(), tokens + count.sum().item()
        loss = nll_total / tokens
        return {"heldout/loss": loss, "heldout/perplexity": math.exp(min(loss, 50.0)),
                "heldout/examples": len(self.heldout)}
