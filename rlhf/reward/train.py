"""The reward-model training loop: ``train_reward_model(RewardConfig) -> RewardResult``.

Steps: check the settings, read (and if needed validate) the data, tokenize, hold out a split,
load the base model with LoRA, then ``reward_model_train_steps`` AdamW steps of
``batch_size × gradient_accumulation_steps`` pairs with the Bradley–Terry loss; held-out metrics
every ``eval_every`` steps; checkpoints every ``checkpoint_every`` steps under
``OUTPUT_DIR/checkpoints``, from which a restarted run continues exactly (weights, optimizer,
scheduler, RNG, data position, metric history); at the end the reward mean/std over training pairs
and the model files (``rlhf.reward.outputs``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from rlhf import checkpoint, models, storage
from rlhf.errors import UserError
from rlhf.reward import batching, data, outputs
from rlhf.reward.config import RewardConfig
from rlhf.reward.losses import bradley_terry_loss
from rlhf.reward.metrics import preference_metrics, scalar_metrics
from rlhf.reward.modeling import attention_kind, build_reward_model, pair_rewards
from rlhf.tracking import Tracker

log = logging.getLogger(__name__)

# Settings that may change between a run and its resumption without changing the result.
_RESUMABLE = {"output_dir", "log_every", "checkpoint_every", "keep_checkpoints", "tensorboard_dir",
              "device", "save_merged_model", "preference_dataset", "eval_dataset"}


@dataclass
class RewardResult:
    output_dir: str
    metrics: dict = field(default_factory=dict)     # final scalars and confusion matrices
    normalization: dict = field(default_factory=dict)
    steps: int = 0
    resumed_from: Optional[int] = None
    roc: dict = field(default_factory=dict)          # prefix -> (fpr, tpr, thresholds)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(total: int, warmup: int, kind: str):
    def f(step: int) -> float:  # `step` optimizer steps done
        if warmup and step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warmup) / max(total - warmup, 1)
        return max(0.0, 1 - progress) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


class Collator:
    """Chooses the layout the attention kernel supports (a 4D mask for SDPA/eager)."""

    def __init__(self, model, pad_id: int, share_prompt: bool, device):
        kind = attention_kind(model)
        self.share = share_prompt and kind in ("sdpa", "eager")
        if share_prompt and not self.share:
            log.info("attention %s takes no custom mask: scoring chosen and rejected as two rows", kind)
        dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
        self.mask_dtype = torch.bool if kind == "sdpa" else dtype
        self.pad_id = pad_id
        self.multiple = 8 if getattr(device, "type", "cpu") == "cuda" else None  # tensor-core shapes

    def __call__(self, pairs: Sequence[batching.EncodedPair]) -> dict:
        if self.share:
            return batching.collate_shared(pairs, self.pad_id, self.mask_dtype, self.multiple)
        return batching.collate_rows(pairs, self.pad_id, self.multiple)


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


def _fingerprint(config: RewardConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in _RESUMABLE}


def _check_same_settings(saved: dict, config: RewardConfig, root: str) -> None:
    now = _fingerprint(config)
    changed = sorted(k for k in set(now) | set(saved) if now.get(k) != saved.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise UserError(f"{root} holds checkpoints of a run with other settings ({details}); resume "
                        f"with the same settings or use a new output_dir")


def _evaluate(model, collate, sets: dict, config: RewardConfig) -> tuple[dict, dict]:
    """Metrics for every non-empty set: ``{prefix/name: value}`` and ``{prefix: roc curve}``."""
    from rlhf.reward.metrics import roc_curve
    out, roc = {}, {}
    for prefix, pairs in sets.items():
        if pairs:
            rc, rr = score_pairs(model, collate, pairs, config.batch_size)
            out.update(preference_metrics(rc, rr, config.margin, prefix=prefix))
            roc[prefix] = roc_curve(rc, rr)
    return out, roc


def train_step(model, collate: Collator, batches: Sequence[Sequence[batching.EncodedPair]],
               optimizer, scheduler, config: RewardConfig) -> dict[str, float]:
    """One optimizer step over ``batches`` (the gradient-accumulation micro-batches); returns the
    step's metrics, averaged over its pairs. Skips the update when the loss is not finite."""
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
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    sums["optim/grad_norm"] = float(grad_norm)
    return sums


def train_reward_model(config: RewardConfig) -> RewardResult:
    """Train (or resume) and write the reward model to ``config.output_dir``."""
    config.check()
    set_seed(config.seed)
    device = models.pick_device(config.device or None)

    # Data first: a bad file should fail before a model is loaded.
    all_pairs, eval_rows = data.load_datasets(config.preference_dataset, config.eval_dataset,
                                              config.instruction)
    tokenizer = models.load_tokenizer(config.large_model_reference, padding_side="right",
                                      trust_remote_code=config.trust_remote_code)
    use_chat = (models.has_chat_template(tokenizer) if config.use_chat_template is None
                else config.use_chat_template)
    if use_chat and not models.has_chat_template(tokenizer):
        raise UserError(f"use_chat_template is set but the tokenizer of {config.large_model_reference} "
                        f"has no chat template")
    encode = dict(prompt_sequence_length=config.prompt_sequence_length,
                  target_sequence_length=config.target_sequence_length, use_chat_template=use_chat,
                  instruction=config.instruction)
    encoded, stats = batching.encode_pairs(tokenizer, all_pairs, **encode)
    eval_encoded, _ = batching.encode_pairs(tokenizer, eval_rows, **encode)
    if stats.truncated_prompts or stats.truncated_responses:
        log.warning("truncated %d prompts to %d tokens and %d responses to %d tokens",
                    stats.truncated_prompts, config.prompt_sequence_length,
                    stats.truncated_responses, config.target_sequence_length)
    train_idx, heldout_idx = data.split_heldout(len(encoded), config.heldout_fraction,
                                                config.max_heldout_pairs, config.seed)
    train_set = [encoded[i] for i in train_idx]
    eval_sets = {"heldout": [encoded[i] for i in heldout_idx], "eval": eval_encoded}
    log.info("%d training pairs, %d held out, %d eval pairs", len(train_set), len(heldout_idx),
             len(eval_encoded))

    dtype = None if config.dtype == "auto" else config.dtype
    model = build_reward_model(
        config.large_model_reference, tokenizer, lora_rank=config.reward_lora_dim,
        lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules), device=device, dtype=dtype,
        gradient_checkpointing=config.gradient_checkpointing,
        trust_remote_code=config.trust_remote_code, seed=config.seed)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total = config.reward_model_train_steps
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, config.lr_scheduler))
    collate = Collator(model, tokenizer.pad_token_id, config.share_prompt, device)
    plan = batching.BatchPlan([p.length(collate.share) for p in train_set], config.batch_size, config.seed)

    remote = storage.is_gcs(config.output_dir)
    local_out = tempfile.mkdtemp(prefix="rlhf-reward-") if remote else config.output_dir
    os.makedirs(local_out, exist_ok=True)
    tb_dir = config.tensorboard_dir or os.path.join(local_out, "tensorboard")
    tb_local = tempfile.mkdtemp(prefix="rlhf-tb-") if storage.is_gcs(tb_dir) else tb_dir
    tracker = Tracker(total_steps=total, tensorboard_dir=tb_local,
                      jsonl_path=os.path.join(local_out, "metrics.jsonl"), log_every=config.log_every,
                      item_name="pairs",
                      show=["loss/total", "train/accuracy", "train/margin", "heldout/accuracy", "eval/accuracy"])

    ckpt_root = storage.join(config.output_dir, "checkpoints")
    start, resumed_from = 0, None
    last = checkpoint.latest(ckpt_root)
    if last:
        saved = checkpoint.load(last, optimizer=optimizer, scheduler=scheduler)
        _check_same_settings(saved.state.get("config", {}), config, ckpt_root)
        checkpoint.load_trainable(model, saved.trainable)
        tracker.load_state_dict(saved.state.get("tracker", {}), saved.step)
        start = resumed_from = saved.step
        log.info("resuming from %s (step %d of %d)", last, start, total)
    else:
        tracker.load_state_dict({}, 0)  # a fresh run starts fresh files

    last_eval_step, evaluated, roc = -1, {}, {}
    loop_start, loop_cpu, eval_seconds, eval_cpu = time.perf_counter(), time.process_time(), 0.0, 0.0
    for step in range(start, total):
        t0 = time.perf_counter()
        first = step * config.gradient_accumulation_steps
        batches = [[train_set[i] for i in plan.batch(k)]
                   for k in range(first, first + config.gradient_accumulation_steps)]
        n_pairs = sum(len(b) for b in batches)
        sums = train_step(model, collate, batches, optimizer, scheduler, config)
        if not math.isfinite(sums["loss/total"]):
            raise UserError(f"the loss became {sums['loss/total']} at step {step + 1}: lower "
                            f"reward_model_learning_rate_multiplier (now "
                            f"{config.reward_model_learning_rate_multiplier}); restarting resumes "
                            f"from the last checkpoint")
        sums["time/step_s"] = time.perf_counter() - t0
        done = step + 1
        step_eval = {}
        if done % config.eval_every == 0 or done == total:
            t_eval, c_eval = time.perf_counter(), time.process_time()
            step_eval, roc = _evaluate(model, collate, eval_sets, config)
            evaluated = step_eval
            last_eval_step = done
            eval_seconds += time.perf_counter() - t_eval
            eval_cpu += time.process_time() - c_eval
        tracker.log(done, {**sums, **scalar_metrics(step_eval)}, items=n_pairs)
        if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == total):
            checkpoint.save(ckpt_root, done, trainable=checkpoint.trainable_state_dict(model),
                            optimizer=optimizer, scheduler=scheduler, keep_last=config.keep_checkpoints,
                            state={"config": _fingerprint(config), "tracker": tracker.state_dict(),
                                   "data_position": (step + 1) * config.gradient_accumulation_steps})
    tracker.flush()
    # Wall time of this process's training steps (evaluations excluded), for throughput reports.
    train_seconds = time.perf_counter() - loop_start - eval_seconds

    final = tracker.summary()
    final["time/train_s"] = train_seconds
    final["time/train_cpu_s"] = time.process_time() - loop_cpu - eval_cpu  # all threads' CPU time
    if last_eval_step != total:  # resumed from the final checkpoint: matrices and ROC again
        evaluated, roc = _evaluate(model, collate, eval_sets, config)
    final.update(evaluated)
    norm = normalization_stats(model, collate, train_set, config)
    final["reward/normalization_mean"], final["reward/normalization_std"] = norm["mean"], norm["std"]
    info = {
        "base_model": config.large_model_reference,
        "base_model_resolved": models.resolve_model(config.large_model_reference),
        "architecture": type(model.get_base_model()).__name__,
        "prompt_sequence_length": config.prompt_sequence_length,
        "target_sequence_length": config.target_sequence_length,
        "use_chat_template": use_chat,
        "instruction": config.instruction,
        "response_encoding": "prompt tokens, then response tokens, then EOS; reward read at the last token",
        "normalization": norm,
        "lora": {"r": config.reward_lora_dim, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                 "target_modules": sorted(model.peft_config["default"].target_modules or [])},
        "train_steps": total,
        "pairs_per_step": config.pairs_per_step,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "metrics": scalar_metrics(final),
    }
    model.peft_config["default"].base_model_name_or_path = config.large_model_reference
    outputs.save(model, tokenizer, local_out, info, merged=config.save_merged_model)
    storage.write_json(os.path.join(local_out, "metrics.json"), final)
    tracker.close()
    if tb_local != tb_dir:
        storage.upload_dir(tb_local, tb_dir)
    if remote:  # reward_model.json last: a reader that sees it sees a complete model
        info_text = storage.read_text(os.path.join(local_out, outputs.INFO_FILE))
        os.remove(os.path.join(local_out, outputs.INFO_FILE))
        storage.upload_dir(local_out, config.output_dir)
        storage.write_text(storage.join(config.output_dir, outputs.INFO_FILE), info_text)
        shutil.rmtree(local_out, ignore_errors=True)
    return RewardResult(output_dir=config.output_dir, metrics=final, normalization=norm, steps=total,
                        resumed_from=resumed_from, roc=roc)


def normalization_stats(model, collate, train_set, config: RewardConfig) -> dict:
    """Mean and std of the rewards of up to ``normalization_pairs`` training pairs (both responses),
    saved with the model so PPO can use ``(r − mean) / std``."""
    if not config.normalization_pairs:
        return {"mean": 0.0, "std": 1.0, "pairs": 0}
    rng = np.random.default_rng([config.seed, 11])
    pick = rng.permutation(len(train_set))[:config.normalization_pairs]
    rc, rr = score_pairs(model, collate, [train_set[i] for i in pick], config.batch_size)
    scores = np.concatenate([rc, rr])
    return {"mean": float(scores.mean()), "std": float(scores.std()), "pairs": int(len(pick))}
