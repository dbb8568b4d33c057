"""The reward-model loop: pairwise Bradley–Terry training (Stiennon et al. 2020; Ouyang et al. 2022).

Each of ``reward_model_train_steps`` optimizer steps takes ``gradient_accumulation_steps``
micro-batches of ``batch_size`` pairs from the batch plan, scores chosen and rejected, and takes one
AdamW step on the mean loss (gradient clipping, the learning-rate schedule). Held-out metrics every
``eval_every`` steps and at the end; a checkpoint every ``checkpoint_every`` steps and at the end
(``rlhf.rundir``), from which a restarted run continues exactly (weights, optimizer, scheduler, RNG,
data position, metric history). A non-finite loss or gradient norm stops the run before the step is
saved, keeping the last good checkpoint.

On N processes (``rlhf.launch``) the step's pairs stay ``batch_size × gradient_accumulation_steps``:
each process takes its contiguous share of every micro-batch (``batches``), DDP averages the
gradients (``rlhf.distributed.wrap`` around ``pair_rewards``) with each share weighted by its pairs,
so the update is the single-process one up to rounding (with the frozen base sharded by FSDP2,
``rlhf.distributed.shard_frozen``, the same average is one all-reduce after the last micro-batch); metrics are reduced over the processes,
evaluation and normalization scores are computed batch by batch on the processes and gathered
(``score_pairs``), and rank 0 alone writes metrics and checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Optional, Sequence

import numpy as np
import torch

from rlhf import checkpoint, distributed, storage
from rlhf.reward import batching
from rlhf.reward.config import RewardConfig
from rlhf.reward.losses import bradley_terry_loss
from rlhf.reward.metrics import preference_metrics, roc_curve, scalar_metrics
from rlhf.reward.modeling import pair_rewards
from rlhf.reward.setup import Collator, RewardSetup
from rlhf.rundir import CheckpointDir, RunDir
from rlhf.tracking import Tracker

SHOWN = ["loss/total", "train/accuracy", "train/margin", "heldout/accuracy", "eval/accuracy"]

NON_FINITE_CAUSES = ("a learning rate too high (--reward-model-learning-rate-multiplier), fp16 overflow "
                     "(--dtype bf16 or fp32), or data that tokenizes to empty responses")


@torch.no_grad()
def score_items(model, collate, items: Sequence, batch_size: int, forward) -> np.ndarray:
    """``forward(model, batch)`` ([B, ...] per batch) for every item, in order (eval mode), batched
    by length. On several processes each scores every N-th batch (the batches one process would
    form, so the scores are the same) and every process gets all of them."""
    was_training = model.training
    model.eval()
    order = np.argsort([p.length(collate.share) for p in items], kind="stable")
    out: Optional[np.ndarray] = None
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    mine = []
    for idx in batches[distributed.rank()::distributed.world_size()] if distributed.active() else batches:
        values = forward(model, collate([items[i] for i in idx])).float().cpu().numpy()
        if out is None:
            out = np.empty((len(items),) + values.shape[1:])
        out[idx] = values
        mine.append(idx)
    if distributed.is_sharded(model) and batches:  # FSDP: every process runs as many forward passes
        for _ in range(-(-len(batches) // distributed.world_size()) - len(mine)):
            forward(model, collate([items[i] for i in batches[0]]))  # a stand-in, discarded
    model.train(was_training)
    if distributed.active():
        for part in distributed.gather([(idx, out[idx]) for idx in mine]):
            for idx, values in part:
                if out is None:  # this process had no batch of its own
                    out = np.empty((len(items),) + values.shape[1:])
                out[idx] = values
    return out if out is not None else np.empty((0,))


def score_pairs(model, collate: Collator, pairs: Sequence[batching.EncodedPair],
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of every pair's chosen and rejected response, in order (``score_items``)."""
    if not len(pairs):
        return np.empty(0), np.empty(0)
    scores = score_items(model, collate, pairs, batch_size, lambda m, b: torch.stack(pair_rewards(m, b), -1))
    return scores[:, 0], scores[:, 1]


def train_step(model, collate: Collator, batches: Sequence[Sequence[batching.EncodedPair]],
               optimizer, scheduler, config: RewardConfig, forward=None,
               shares: Optional[Sequence[float]] = None) -> dict[str, float]:
    """One optimizer step over ``batches`` (the gradient-accumulation micro-batches); returns the
    step's metrics, averaged over its pairs. Skips the update when the loss or the gradient norm is
    not finite (the caller stops the run), so the weights stay the last good ones.

    Several processes: ``forward`` is the DDP-wrapped ``pair_rewards`` (``rlhf.distributed.wrap``)
    and ``shares`` each micro-batch's weight in the step's loss times the world size (DDP averages
    the processes' gradients); the metrics come back reduced over the processes."""
    forward = forward or distributed.Local(model, pair_rewards)
    n_pairs = sum(len(b) for b in batches)
    shares = list(shares) if shares is not None else [len(b) / n_pairs for b in batches]
    sums = {"loss/total": 0.0, "loss/bt": 0.0, "loss/center": 0.0, "train/accuracy": 0.0,
            "train/margin": 0.0, "reward/chosen": 0.0, "reward/rejected": 0.0}
    for k, (pairs, weight) in enumerate(zip(batches, shares)):  # weight: mean over the step's pairs
        with contextlib.nullcontext() if k == len(batches) - 1 else forward.no_sync():  # DDP: sync the last
            rc, rr = forward(collate(pairs))
            loss, parts = bradley_terry_loss(rc, rr, config.margin, config.center_rewards_coefficient)
            (loss * weight).backward()
        d = (rc - rr).detach()
        sums["loss/total"] += loss.item() * weight
        for name, value in parts.items():
            sums[name] += value.item() * weight
        sums["train/accuracy"] += (d > 0).float().mean().item() * weight
        sums["train/margin"] += d.mean().item() * weight
        sums["reward/chosen"] += rc.detach().mean().item() * weight
        sums["reward/rejected"] += rr.detach().mean().item() * weight
    if not config.center_rewards_coefficient:
        del sums["loss/center"]
    return finish_step(sums, forward, optimizer, scheduler, config)


def finish_step(sums: dict[str, float], forward, optimizer, scheduler, config: RewardConfig) -> dict[str, float]:
    """After the micro-batches' backward passes: reduce gradients and metrics over the processes,
    clip, and take the optimizer step unless the loss or the gradient norm is not finite."""
    if hasattr(forward, "reduce_gradients"):  # a sharded base: average the trainable gradients now
        forward.reduce_gradients()
    sums = distributed.reduce_metrics(sums)  # each process's part of the step's mean, × world size
    sums["optim/lr"] = scheduler.get_last_lr()[0]
    if not math.isfinite(sums["loss/total"]):
        optimizer.zero_grad(set_to_none=True)
        return sums
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm or float("inf"))
    sums["optim/grad_norm"] = float(grad_norm)
    if math.isfinite(sums["optim/grad_norm"]):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return sums


def normalization_stats(model, collate: Collator, train_set, config: RewardConfig) -> dict:
    """Mean and std of the rewards of up to ``normalization_pairs`` training pairs (both responses),
    saved with the model so PPO can use ``(r − mean) / std``."""
    if not config.normalization_pairs:
        return {"mean": 0.0, "std": 1.0, "pairs": 0}
    rng = np.random.default_rng([config.seed, 11])
    pick = rng.permutation(len(train_set))[:config.normalization_pairs]
    rc, rr = score_pairs(model, collate, [train_set[i] for i in pick], config.batch_size)
    scores = np.concatenate([rc, rr])
    return {"mean": float(scores.mean()), "std": float(scores.std()), "pairs": int(len(pick))}


class RewardTrainer:
    """Runs ``config.reward_model_train_steps`` steps on ``parts`` (``rlhf.reward.setup.prepare``),
    writing metrics under ``run`` and checkpoints to ``run.checkpoints_dir``. The loss and the
    evaluation are the pairwise model's; ``rlhf.reward.classifier.ClassifierTrainer`` swaps them."""

    FORWARD = staticmethod(pair_rewards)   # model, batch -> what the step's loss reads
    TRAIN_STEP = staticmethod(train_step)  # one optimizer step, as ``train_step``

    def __init__(self, config: RewardConfig, parts: RewardSetup, run: RunDir):
        self.cfg, self.parts = config, parts
        self.is_main = distributed.is_main()  # rank 0 writes metrics and checkpoints
        self.checkpoints = CheckpointDir(run.checkpoints_dir, config, keep_last=config.keep_checkpoints)
        self.tracker = Tracker(total_steps=config.reward_model_train_steps,
                               tensorboard_dir=(run.stage(config.tensorboard_dir or run.path("tensorboard"))
                                                if self.is_main else None),
                               jsonl_path=run.path("metrics.jsonl") if self.is_main else None,
                               log_every=config.log_every, item_name="pairs", show=SHOWN)
        # The step's pass; with several processes, DDP averages the trainable parameters' gradients.
        self.forward = distributed.wrap(parts.model, self.FORWARD)
        self.step = 0
        self.evaluated: dict = {}  # the last evaluation: scalars and confusion matrices
        self.roc: dict = {}        # prefix -> (fpr, tpr, thresholds) of the last evaluation
        self._evaluated_at = -1

    # -- resume ---------------------------------------------------------------------------------

    def resume(self) -> int:
        """Restore the newest checkpoint, if any; returns its step (0: a fresh start)."""
        p = self.parts
        ckpt = self.checkpoints.resume(load_trainable=functools.partial(checkpoint.load_trainable, p.model),
                                       optimizer=p.optimizer, scheduler=p.scheduler, tracker=self.tracker)
        self.step = ckpt.step if ckpt else 0
        return self.step

    def save_checkpoint(self) -> None:
        p = self.parts
        if not self.is_main:  # rank 0 writes; the others name its checkpoint in their messages
            self.checkpoints.last = storage.join(self.checkpoints.root, checkpoint.step_dir_name(self.step))
            return
        self.checkpoints.save(self.step, trainable=checkpoint.trainable_state_dict(p.model),
                              optimizer=p.optimizer, scheduler=p.scheduler, tracker=self.tracker,
                              state={"data_position": self.step * self.cfg.gradient_accumulation_steps})

    # -- the loop -------------------------------------------------------------------------------

    def batches(self, step: int) -> list[list[batching.EncodedPair]]:
        """The micro-batches of optimizer step ``step`` (0-based): a pure function of the step, so a
        resumed run reads the data exactly where the killed one stopped."""
        accumulate = self.cfg.gradient_accumulation_steps
        first = step * accumulate
        return [[self.parts.train_set[i] for i in self.parts.plan.batch(k)]
                for k in range(first, first + accumulate)]

    def shard(self, batches: list[list[batching.EncodedPair]]) -> tuple[list[list], list[float]]:
        """This process's contiguous share of each micro-batch, and each share's weight in the
        step's mean loss times the world size (DDP divides by it). A share left empty (a micro-batch
        shorter than the world) runs a stand-in pair with weight 0, so every process runs as many
        backward passes."""
        world = distributed.world_size() if distributed.active() else 1
        if world == 1:
            return batches, [len(b) / sum(len(b) for b in batches) for b in batches]
        total = sum(len(b) for b in batches)
        mine, shares = [], []
        for micro in batches:
            start, end = distributed.shard_bounds(len(micro))
            mine.append(micro[start:end] or micro[:1])
            shares.append(world * (end - start) / total)
        return mine, shares

    def train(self) -> dict:
        """The remaining steps; returns the final metrics: the last value of every tracked metric,
        the training time (evaluations excluded) and the final evaluation."""
        cfg, p = self.cfg, self.parts
        total = cfg.reward_model_train_steps
        start, cpu_start, eval_s, eval_cpu = time.perf_counter(), time.process_time(), 0.0, 0.0
        try:
            while self.step < total:
                t0 = time.perf_counter()
                batches = self.batches(self.step)
                mine, shares = self.shard(batches)
                sums = self.TRAIN_STEP(p.model, p.collate, mine, p.optimizer, p.scheduler, cfg, self.forward, shares)
                for name in ("loss/total", "optim/grad_norm"):
                    if name in sums:
                        self.checkpoints.check_finite(name, sums[name], self.step + 1, NON_FINITE_CAUSES)
                sums["time/step_s"] = time.perf_counter() - t0
                self.step += 1
                step_eval = {}
                if self.step % cfg.eval_every == 0 or self.step == total:
                    t_eval, c_eval = time.perf_counter(), time.process_time()
                    step_eval = self.evaluate()
                    eval_s += time.perf_counter() - t_eval
                    eval_cpu += time.process_time() - c_eval
                self.tracker.log(self.step, {**sums, **scalar_metrics(step_eval)},
                                 items=sum(len(b) for b in batches))
                if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == total):
                    self.save_checkpoint()
        finally:
            self.tracker.close()
        final = self.tracker.summary()
        # Wall time of this process's training steps (evaluations excluded), for throughput reports.
        final["time/train_s"] = time.perf_counter() - start - eval_s
        final["time/train_cpu_s"] = time.process_time() - cpu_start - eval_cpu  # all threads' CPU time
        if self._evaluated_at != total:  # resumed from the final checkpoint: matrices and ROC again
            self.evaluate()
        final.update(self.evaluated)
        return final

    def evaluate(self) -> dict:
        """Metrics for every non-empty evaluation set (``{prefix/name: value}``); keeps them and the
        ROC curves as ``evaluated`` and ``roc``."""
        p, out, roc = self.parts, {}, {}
        for prefix, pairs in p.eval_sets.items():
            if pairs:
                rc, rr = score_pairs(p.model, p.collate, pairs, self.cfg.batch_size)
                out.update(preference_metrics(rc, rr, self.cfg.margin, prefix=prefix))
                roc[prefix] = roc_curve(rc, rr)
        self.evaluated, self.roc, self._evaluated_at = out, roc, self.step
        return out
