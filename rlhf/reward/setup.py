"""Everything the reward loop needs, built in the order that fails cheapest first: the seed, the
data (a bad file fails before a model is loaded), the tokenizer and encoding, the held-out split,
then the LoRA model, the optimizer, the learning-rate schedule, the batch layout and the batch plan."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from rlhf import distributed, encoding, models
from rlhf.errors import UserError
from rlhf.reward import batching, data, modeling
from rlhf.reward.config import RewardConfig
from rlhf.reward.modeling import attention_kind, build_reward_model

log = logging.getLogger(__name__)


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


@dataclass
class RewardSetup:
    """What ``prepare`` built: the encoded data, the model and what trains it."""
    tokenizer: object
    use_chat_template: bool
    train_set: list                    # EncodedPair, the training split
    eval_sets: dict                    # {"heldout": [...], "eval": [...]}: metrics prefix -> pairs
    model: object                      # peft sequence classifier (LoRA + score head)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    collate: Collator
    plan: batching.BatchPlan           # which pairs form micro-batch k (restartable at any k)
    sharded: bool = False              # the frozen base is sharded over the processes (FSDP2)
    classes: list = field(default_factory=list)  # classifier: class index -> name; pairwise: empty
    positive: int = 0                  # classifier: the index of positive_label


def prepare(config: RewardConfig) -> RewardSetup:
    """Seed, data, tokenizer, split, model, optimizer, schedule and batch plan for ``config``."""
    set_seed(config.seed)  # the same on every process: the same split, plan and initial weights
    rank, world, device = distributed.init(config.device or None)  # several processes: one GPU each

    classes, positive = [], 0
    if config.classifier:
        from rlhf.reward import classifier
        examples = data.load_labeled(config.labeled_dataset, config.instruction)
        classes = classifier.class_names(examples)
        what = f"labeled_dataset {config.labeled_dataset}"
        positive = classifier.positive_index(classes, config.positive_label, what)
        if len(classes) < 2:
            raise UserError(f"{what} has one class ({classes[0]!r}); a classifier needs examples of at "
                            "least two classes")
    else:
        all_pairs, eval_rows = data.load_datasets(config.preference_dataset, config.eval_dataset,
                                                  config.instruction)
    tokenizer = models.load_tokenizer(config.large_model_reference, padding_side="right",
                                      trust_remote_code=config.trust_remote_code)
    use_chat = (encoding.has_chat_template(tokenizer) if config.use_chat_template is None
                else config.use_chat_template)
    if use_chat and not encoding.has_chat_template(tokenizer):
        raise UserError(f"use_chat_template is set but the tokenizer of {config.large_model_reference} "
                        f"has no chat template")
    encode = dict(prompt_sequence_length=config.prompt_sequence_length,
                  target_sequence_length=config.target_sequence_length, use_chat_template=use_chat,
                  instruction=config.instruction)
    if config.classifier:  # eval rows carry no labels: held-out examples only
        encoded, stats = classifier.encode_examples(tokenizer, examples, classes, **encode)
        eval_encoded = []
    else:
        encoded, stats = batching.encode_pairs(tokenizer, all_pairs, **encode)
        eval_encoded, _ = batching.encode_pairs(tokenizer, eval_rows, **encode)
    if stats.truncated_prompts or stats.truncated_responses:
        log.warning("truncated %d prompts to %d tokens and %d responses to %d tokens",
                    stats.truncated_prompts, config.prompt_sequence_length,
                    stats.truncated_responses, config.target_sequence_length)
    if config.classifier:  # every class in the held-out set, however rare
        train_idx, heldout_idx = data.split_stratified([e.label for e in encoded], config.heldout_fraction,
                                                       config.max_heldout_pairs, config.seed)
    else:
        train_idx, heldout_idx = data.split_heldout(len(encoded), config.heldout_fraction,
                                                    config.max_heldout_pairs, config.seed,
                                                    groups=[tuple(e.prompt) for e in encoded])
    train_set = [encoded[i] for i in train_idx]
    eval_sets = {"heldout": [encoded[i] for i in heldout_idx], "eval": eval_encoded}
    unit = "examples" if config.classifier else "pairs"
    log.info("%d training %s, %d held out, %d eval %s; world size %d (%s %s per step on each "
             "process)", len(train_set), unit, len(heldout_idx), len(eval_encoded), unit, world,
             f"{config.pairs_per_step / world:g}", unit)

    dtype = None if config.dtype == "auto" else config.dtype
    from rlhf import memory_plan  # refuse a model that cannot fit before loading it (CUDA only)
    plan = memory_plan.check_device("reward", config.large_model_reference,
                                    memory_plan.Workload.from_configs(reward=config), device, world,
                                    can_shard=True)
    model = build_reward_model(
        config.large_model_reference, tokenizer, lora_rank=config.reward_lora_dim,
        lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules), device=device, dtype=dtype,
        gradient_checkpointing=config.gradient_checkpointing or bool(plan and plan.settings.get("gradient_checkpointing")),
        trust_remote_code=config.trust_remote_code, seed=config.seed, labels=classes or None)
    sharded = (config.shard_base or bool(plan and plan.strategy == "sharded")) and distributed.shard_frozen(
        model, device, root=modeling.parts(model)[0])
    if sharded:
        log.info("frozen base sharded over %d processes (FSDP2); adapters and score head whole on each", world)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total = config.reward_model_train_steps
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, config.lr_scheduler))
    if config.classifier:
        weights = classifier.class_weights([e.label for e in train_set], len(classes), config.class_weighting)
        log.info("class weights %s", dict(zip(classes, (round(w, 3) for w in weights))))
    collate = (classifier.ClassifierCollator(tokenizer.pad_token_id, device, weights) if config.classifier
               else Collator(model, tokenizer.pad_token_id, config.share_prompt, device))
    # No length buckets for a classifier: length often follows the class, and batches of one class
    # swing the bias back and forth instead of teaching the classes apart.
    plan = batching.BatchPlan([p.length(collate.share) for p in train_set], config.batch_size, config.seed,
                              bucket=not config.classifier)
    return RewardSetup(tokenizer=tokenizer, use_chat_template=use_chat, train_set=train_set,
                       eval_sets=eval_sets, model=model, optimizer=optimizer, scheduler=scheduler,
                       collate=collate, plan=plan, sharded=sharded, classes=classes, positive=positive)


def unsharded_copy(config: RewardConfig, model, tokenizer, labels=None):
    """A whole copy of a sharded reward model on CPU, for writing its files (adapter, score head,
    merged model) exactly as an unsharded run does: the base loaded again from the reference (it is
    frozen, so it is what training saw) in the training dtype, and the trained parameters, which
    are whole on every process, copied in. No collective: rank 0 calls it alone."""
    from rlhf import checkpoint
    dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
    copy = build_reward_model(
        config.large_model_reference, tokenizer, lora_rank=config.reward_lora_dim,
        lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules), device=torch.device("cpu"), dtype=dtype,
        gradient_checkpointing=False, trust_remote_code=config.trust_remote_code, seed=config.seed,
        labels=labels)
    checkpoint.load_trainable(copy, checkpoint.trainable_state_dict(model))
    return copy.eval()
