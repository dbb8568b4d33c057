"""The DPO loop: each optimizer step takes ``gradient_accumulation_steps`` micro-batches of
``batch_size`` pairs from the batch plan, scores chosen and rejected under the policy adapter and
takes one AdamW step on the mean DPO loss (``rlhf.dpo.losses``). The loop, checkpoints, resume and
the split over processes are ``rlhf.policy_training.trainer``'s, shared with SFT.

The reference is the same base with the adapter disabled (``SharedBaseModel.reference``): no second
copy. It is frozen, so each pair's reference log-probs are computed the first time the pair is
drawn and cached (a resumed run recomputes them: the same numbers).

On N processes DDP averages the adapter's gradients weighted by each share's pairs (as the reward
trainer).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional, Sequence

import torch

from rlhf import distributed
from rlhf.dpo.batching import chosen_rejected, collate, sequence_logprobs
from rlhf.dpo.config import DPOConfig
from rlhf.dpo.losses import dpo_loss
from rlhf.policy_training.trainer import PolicyTrainer
from rlhf.ppo.outputs import OutputLayout, write_samples
from rlhf.ppo.prompts import left_pad
from rlhf.reward.trainer import finish_step

log = logging.getLogger(__name__)

class DPOTrainer(PolicyTrainer):
    """Runs ``config.reinforcement_learning_train_steps`` steps of DPO on ``model`` (a
    ``SharedBaseModel``) over ``train_set`` (``EncodedPair``s), writing under ``layout``."""

    ITEM_NAME = "pairs"
    SHOWN = ["loss/total", "reward/accuracy", "reward/margin", "policy/kl"]
    NON_FINITE_CAUSES = ("a learning rate too high (--reinforcement-learning-rate-multiplier), a beta too "
                         "small for ipo, or data that tokenizes to empty responses")

    def __init__(self, config: DPOConfig, model, train_set: Sequence, pad_id: int, layout: OutputLayout,
                 heldout: Sequence = (), tokenizer=None, tensorboard_dir: Optional[str] = None):
        super().__init__(config, model, train_set, pad_id, layout, heldout, tensorboard_dir)
        self.tokenizer = tokenizer
        self.reference_cache: dict[tuple[str, int], tuple[float, float]] = {}

    @property
    def train_steps(self) -> int:
        return self.cfg.reinforcement_learning_train_steps

    def length(self, pair) -> int:
        return len(pair.prompt) + max(len(pair.chosen), len(pair.rejected))

    # -- reference log-probs ---------------------------------------------------------------------

    @torch.no_grad()
    def reference_logprobs(self, split: str, indices: Sequence[int], pairs: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's sequence log-probs of these pairs, computed once per pair and cached."""
        missing = [k for k, i in enumerate(indices) if (split, i) not in self.reference_cache]
        if missing:
            rows = collate([pairs[indices[k]] for k in missing], self.pad_id, self.device)
            with self.model.reference():
                chosen, rejected = sequence_logprobs(self.model, rows, self.cfg.loss_type == "ipo")
            for k, c, r in zip(missing, chosen.tolist(), rejected.tolist()):
                self.reference_cache[(split, indices[k])] = (c, r)
        values = torch.tensor([self.reference_cache[(split, i)] for i in indices], device=self.device)
        return values[:, 0], values[:, 1]

    # -- the step ---------------------------------------------------------------------------------

    def train_step(self, micro_batches: list[list[int]]) -> dict[str, float]:
        cfg, average = self.cfg, self.cfg.loss_type == "ipo"
        # Each share's weight in the step's mean loss, times the world size (DDP divides by it).
        total = sum(len(b) for b in micro_batches)
        world = distributed.world_size() if distributed.active() else 1
        micro_batches, counts = self.shard(micro_batches)
        shares = [world * n / total for n in counts]
        sums = dict.fromkeys(("loss/total", "reward/chosen", "reward/rejected", "reward/margin",
                              "reward/accuracy", "policy/kl", "logps/chosen", "logps/rejected"), 0.0)
        for k, (indices, weight) in enumerate(zip(micro_batches, shares)):
            pairs = [self.train_set[i] for i in indices]
            ref_c, ref_r = self.reference_logprobs("train", indices, self.train_set)
            rows = collate(pairs, self.pad_id, self.device)
            with contextlib.nullcontext() if k == len(micro_batches) - 1 else self.forward.no_sync():
                pol_c, pol_r = chosen_rejected(self.forward(rows, average)[0])
                losses, rc, rr = dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, cfg.loss_type, cfg.label_smoothing)
                (losses.mean() * weight).backward()
            for name, value in (("loss/total", losses.detach()), ("reward/chosen", rc), ("reward/rejected", rr),
                                ("reward/margin", rc - rr), ("reward/accuracy", (rc > rr).float()),
                                # log π/π_ref on the data, chosen and rejected alike: how far the policy moved
                                ("policy/kl", (rc + rr) / (2 * cfg.beta)),
                                ("logps/chosen", pol_c.detach()), ("logps/rejected", pol_r.detach())):
                sums[name] += value.mean().item() * weight
        return finish_step(sums, self.forward, self.optimizer, self.scheduler, cfg)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss, accuracy and margin of the implicit rewards on the held-out pairs (every process
        scores all of them: they are few)."""
        if not self.heldout:
            return {}
        cfg, totals = self.cfg, {"heldout/loss": 0.0, "heldout/accuracy": 0.0, "heldout/margin": 0.0}
        for start in range(0, len(self.heldout), cfg.batch_size):
            indices = list(range(start, min(start + cfg.batch_size, len(self.heldout))))
            ref_c, ref_r = self.reference_logprobs("heldout", indices, self.heldout)
            rows = collate([self.heldout[i] for i in indices], self.pad_id, self.device)
            pol_c, pol_r = sequence_logprobs(self.model, rows, cfg.loss_type == "ipo")
            losses, rc, rr = dpo_loss(pol_c, pol_r, ref_c, ref_r, cfg.beta, cfg.loss_type, cfg.label_smoothing)
            totals["heldout/loss"] += losses.sum().item()
            totals["heldout/accuracy"] += (rc > rr).float().sum().item()
            totals["heldout/margin"] += (rc - rr).sum().item()
        return {**{k: v / len(self.heldout) for k, v in totals.items()}, "heldout/pairs": len(self.heldout)}

    def at_checkpoint(self) -> None:
        self.write_samples()

    def write_samples(self) -> None:
        """Generations for the first ``sample_count`` training prompts, seeded by the step so they
        never disturb the training random stream."""
        n = min(self.cfg.sample_count, len(self.train_set))
        if n == 0 or not self.is_main or self.tokenizer is None:
            return
        from rlhf.ppo.rollout import generate
        prompts = [self.train_set[i].prompt for i in range(n)]
        ids, mask = left_pad(prompts, self.pad_id, self.device)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.cfg.seed + self.step)
            r = generate(self.model, ids, mask, self.cfg.target_sequence_length, self.tokenizer.eos_token_id,
                         self.pad_id, temperature=0.7)
        write_samples(self.layout.samples_path(self.step), (
            {"step": self.step, "prompt": self.tokenizer.decode(p, skip_special_tokens=True),
             "response": self.tokenizer.decode(r.response_ids[i][r.response_mask[i] > 0].tolist(),
                                               skip_special_tokens=True)}
            for i, p in enumerate(prompts)))
