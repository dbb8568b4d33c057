"""The reward-model loop: pairwise Bradley–Terry training (Stiennon et al. 2020; Ouyang et al. 2022).

Each of ``reward_model_train_steps`` optimizer steps takes ``gradient_accumulation_steps``
micro-batches of ``batch_size`` pairs from the batch plan, scores chosen and rejected, and takes one
AdamW step on the mean loss (gradient clipping, the learning-rate schedule). Held-out metrics every
``eval_every`` steps and at the end; a checkpoint every ``checkpoint_every`` steps and at the end
(``rlhf.rundir``), from which a restarted run continues exactly (weights, optimizer, scheduler, RNG,
data position, metric history). A non-finite loss or gradient norm stops the run before the step is
saved, keeping the last good checkpoint.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Sequence

import numpy as np
import torch

from rlhf import checkpoint
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
def score_pairs(model, collate: Collator, pairs: Sequence[batching.EncodedPair],
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of every pair's chosen and rejected response, in order (eval mode)."""
    was_training = model.training
    model.eval()
    order = np.argsort([p.length(collate.share) for p in pairs], kind="stable")
    chosen, rejected = np.empty(len(pairs)), np.empty(len(pairs))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rc, rr = pair_rewards(model, collate([pairs[i] for i in idx]))
        chosen[idx], rejected[idx] = rc.cpu().numpy(), rr.cpu().numpy()
    model.train(was_training)
    return chosen, rejected


def train_step(model, collate: Collator, batches: Sequence[Sequence[batching.EncodedPair]],
               optimizer, scheduler, config: RewardConfig) -> dict[str, float]:
    """One optimizer step over ``batches`` (the gradient-accumulation micro-batches); returns the
    step's metrics, averaged over its pairs. Skips the update when the loss or the gradient norm is
    not finite (the caller stops the run), so the weights stay the last good ones."""
    n_pairs = sum(len(b) for b in batches)
    sums = {"loss/total": 0.0, "loss/bt": 0.0, "loss/center": 0.0, "train/accuracy": 0.0,
            "train/margin": 0.0, "reward/chosen": 0.0, "reward/rejected": 0.0}
    for pairs in batches:
        rc, rr = pair_rewards(model, collate(pairs))
        loss, parts = bradley_terry_loss(rc, rr, config.margin, config.center_rewards_coefficient)
        weight = len(pairs) / n_pairs  # mean over the step's pairs, whatever the batch sizes
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
    writing metrics under ``run`` and checkpoints to ``run.checkpoints_dir``."""

    def __init__(self, config: RewardConfig, parts: RewardSetup, run: RunDir):
        self.cfg, self.parts = config, parts
        self.checkpoints = CheckpointDir(run.checkpoints_dir, config, keep_last=config.keep_checkpoints)
        self.tracker = Tracker(total_steps=config.reward_model_train_steps,
                               tensorboard_dir=run.stage(config.tensorboard_dir or run.path("tensorboard")),
                               jsonl_path=run.path("metrics.jsonl"), log_every=config.log_every,
                               item_name="pairs", show=SHOWN)
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
                sums = train_step(p.model, p.collate, batches, p.optimizer, p.scheduler, cfg)
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
