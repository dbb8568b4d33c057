"""``PolicyTrainer``: the loop every LoRA-policy step on fixed data shares (DPO, SFT).

Each optimizer step takes ``gradient_accumulation_steps`` micro-batches of ``batch_size`` items from
the reward trainer's length-bucketed ``BatchPlan``; a subclass turns them into its loss and metrics
(``train_step``) and scores its held-out items (``evaluate``). Checkpoints, resume and the
non-finite guard are ``rlhf.rundir``'s; the optimizer step (clip, skip on non-finite) is the reward
trainer's ``finish_step``. On N processes (``rlhf.launch``) each takes its contiguous share of every
micro-batch (``shard``); the metrics are reduced over the processes and rank 0 alone writes.
"""

from __future__ import annotations

import time
from typing import ClassVar, Optional, Sequence

import torch

from rlhf import distributed
from rlhf.ppo.outputs import OutputLayout
from rlhf.policy_training.rows import training_pass
from rlhf.reward.batching import BatchPlan
from rlhf.reward.setup import lr_lambda
from rlhf.rundir import CheckpointDir
from rlhf.tracking import Tracker


class PolicyTrainer:
    """Runs ``train_steps`` optimizer steps on ``model`` (a ``SharedBaseModel``: its policy adapter
    is what trains) over ``train_set``, writing under ``layout``. A subclass names its step count,
    each item's length (for the batch plan), its loss (``train_step``) and held-out metrics."""

    ITEM_NAME: ClassVar[str] = "examples"  # what the log lines count
    SHOWN: ClassVar[list[str]] = ["loss/total"]  # metrics on each log line
    NON_FINITE_CAUSES: ClassVar[str] = ""  # likely causes, in the non-finite guard's message

    def __init__(self, config, model, train_set: Sequence, pad_id: int, layout: OutputLayout,
                 heldout: Sequence = (), tensorboard_dir: Optional[str] = None):
        self.cfg, self.model, self.train_set, self.heldout = config, model, list(train_set), list(heldout)
        self.pad_id, self.layout, self.device = pad_id, layout, model.device
        self.is_main = distributed.is_main()
        self.optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.learning_rate, weight_decay=0.0)
        total = self.train_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(total, int(config.warmup_ratio * total), config.lr_scheduler))
        self.plan = BatchPlan([self.length(item) for item in self.train_set], config.batch_size, config.seed)
        self.checkpoints = CheckpointDir(layout.checkpoints_dir, config, keep_last=config.keep_checkpoints)
        self.tracker = Tracker(total_steps=total,
                               tensorboard_dir=(tensorboard_dir or layout.tensorboard_dir) if self.is_main else None,
                               jsonl_path=layout.metrics_path if self.is_main else None,
                               log_every=config.log_every, item_name=self.ITEM_NAME, show=self.SHOWN)
        # The policy's value head is not used here: DDP must not wait for its gradient.
        self.forward = distributed.wrap(model, training_pass, find_unused_parameters=True)
        self.step = 0

    # -- what a step defines -----------------------------------------------------------------------

    @property
    def train_steps(self) -> int:
        """The optimizer steps of a whole run (read from the config: a restart may raise it)."""
        raise NotImplementedError

    def length(self, item) -> int:
        """An item's token count, for the batch plan's length buckets."""
        raise NotImplementedError

    def train_step(self, micro_batches: list[list[int]]) -> dict[str, float]:
        """Backward passes over the step's micro-batches (item indices; ``shard`` them) and the
        optimizer step (``finish_step``); returns the step's metrics."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics at the end of training."""
        return {}

    def at_checkpoint(self) -> None:
        """Called just before each checkpoint is saved (e.g. to write sample generations)."""

    # -- resume and checkpoints ------------------------------------------------------------------

    def resume(self) -> int:
        ckpt = self.checkpoints.resume(load_trainable=self.model.load_trainable_state_dict,
                                       optimizer=self.optimizer, scheduler=self.scheduler, tracker=self.tracker)
        self.step = ckpt.step if ckpt else 0
        return self.step

    def save_checkpoint(self) -> None:
        if self.is_main:
            self.checkpoints.save(self.step, trainable=self.model.trainable_state_dict(),
                                  optimizer=self.optimizer, scheduler=self.scheduler, tracker=self.tracker)

    # -- the loop ---------------------------------------------------------------------------------

    def step_indices(self, step: int) -> list[list[int]]:
        """The micro-batches (item indices) of optimizer step ``step``: a pure function of the step,
        so a resumed run reads the data where the killed one stopped."""
        first = step * self.cfg.gradient_accumulation_steps
        return [list(self.plan.batch(k)) for k in range(first, first + self.cfg.gradient_accumulation_steps)]

    def shard(self, micro_batches: list[list[int]]) -> tuple[list[list[int]], list[int]]:
        """This process's contiguous share of each micro-batch and how many of its items count; an
        empty share runs one item that counts for nothing (0) so every process joins DDP's reduction."""
        if not distributed.active():
            return micro_batches, [len(b) for b in micro_batches]
        mine, counts = [], []
        for micro in micro_batches:
            start, end = distributed.shard_bounds(len(micro))
            mine.append(micro[start:end] or micro[:1])
            counts.append(end - start)
        return mine, counts

    def train(self) -> dict[str, float]:
        """The remaining steps; returns the last value of every metric and the held-out metrics."""
        total, every = self.train_steps, self.cfg.checkpoint_every
        try:
            while self.step < total:
                t0 = time.perf_counter()
                micro = self.step_indices(self.step)
                metrics = self.train_step(micro)
                for name in ("loss/total", "optim/grad_norm"):
                    if name in metrics:
                        self.checkpoints.check_finite(name, metrics[name], self.step + 1, self.NON_FINITE_CAUSES)
                metrics["time/step_s"] = time.perf_counter() - t0
                self.step += 1
                self.tracker.log(self.step, metrics, items=sum(len(b) for b in micro))
                if self.step == total or (every and self.step % every == 0):
                    self.at_checkpoint()
                    self.save_checkpoint()
        finally:
            self.tracker.close()
        return {**self.tracker.summary(), **self.evaluate()}
