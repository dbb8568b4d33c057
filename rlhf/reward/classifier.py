"""The classifier reward model (``reward_model_type=classifier``): a sequence classifier with one
output per class, trained with cross-entropy on labeled responses; the reward is its positive
class's logit, or that class's log-probability (``reward_from``).

Inputs are encoded as the pairwise reward model's (prompt tokens, response tokens, EOS; logits read
at the last token, ``rlhf.reward.modeling.score_sequences``), so PPO scores its own rollouts the same
way, on a shared base too. Classes: integer labels 0..max (class i is label i, named ``"i"``) or the
sorted class names; ``labels`` in ``reward_model.json`` lists them by class index.

The training loop is the pairwise one (``rlhf.reward.trainer.RewardTrainer``: checkpoints, resume,
several processes, the non-finite guard) with this module's forward pass, loss and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rlhf.data.canonical import LabeledExample, prompt_messages
from rlhf.errors import UserError
from rlhf.reward.batching import EncodeStats, PromptIds, collate_sequences, response_ids
from rlhf.reward.config import RewardConfig
from rlhf.reward.metrics import classification_metrics, roc_curve
from rlhf.reward.modeling import score_sequences
from rlhf.reward.trainer import RewardTrainer, finish_step, score_items


@dataclass
class EncodedExample:
    ids: list[int]  # prompt tokens, response tokens, EOS
    label: int      # class index

    def length(self, share_prompt: bool = True) -> int:
        return len(self.ids)


def class_names(examples: Sequence[LabeledExample]) -> list[str]:
    """Class index -> name: integer labels give "0".."max" (so class i is label i), names are sorted."""
    labels = {e.label for e in examples}
    if all(isinstance(label, int) for label in labels):
        return [str(i) for i in range(max(labels) + 1)]
    return sorted(str(label) for label in labels)


def positive_index(classes: Sequence[str], positive_label: str, what: str) -> int:
    """The class index of ``positive_label``; UserError naming the classes when it is not one."""
    if str(positive_label) not in classes:
        raise UserError(f"positive_label {positive_label!r} is not a class of {what} (its classes: "
                        f"{', '.join(repr(c) for c in classes)}); set positive_label to the class whose "
                        "score is the reward")
    return list(classes).index(str(positive_label))


def encode_examples(tokenizer, examples: Sequence[LabeledExample], classes: Sequence[str],
                    prompt_sequence_length: int, target_sequence_length: int,
                    use_chat_template: Optional[bool] = None,
                    instruction: str = "") -> tuple[list[EncodedExample], EncodeStats]:
    """Token ids and class index of every example; ``instruction`` applies to rows without their own."""
    index = {name: i for i, name in enumerate(classes)}
    stats = EncodeStats(pairs=len(examples))
    prompt_ids = PromptIds(tokenizer, prompt_sequence_length, use_chat_template, stats)
    out = []
    for ex in examples:
        if instruction and not ex.instruction:
            ex = LabeledExample(ex.messages, ex.response, ex.label, ex.source, instruction)
        response = response_ids(tokenizer, ex.response, target_sequence_length, stats)
        out.append(EncodedExample(prompt_ids(prompt_messages(ex)) + response, index[str(ex.label)]))
    return out, stats


def class_weights(labels: Sequence[int], n_classes: int, weighting: str = "balanced") -> list[float]:
    """Per-class loss weights: ``balanced`` gives class c the weight n / (C · n_c) (scikit-learn's
    "balanced"), so every class carries the same total weight and the mean weight over the examples
    is 1; ``none`` gives 1 to all. A class without training examples gets 1 (it never appears)."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes)
    if weighting == "none":
        return [1.0] * n_classes
    present = int((counts > 0).sum())
    return [len(labels) / (present * c) if c else 1.0 for c in counts.tolist()]


class ClassifierCollator:
    """Right-padded rows, their class indices (``labels``) and loss weights (``weights``)."""

    share = False  # one row per example: the batch plan's lengths are the rows'

    def __init__(self, pad_id: int, device=None, weights: Optional[Sequence[float]] = None):
        self.pad_id = pad_id
        self.multiple = 8 if getattr(device, "type", "cpu") == "cuda" else None  # tensor-core shapes
        self.weights = list(weights) if weights is not None else None

    def __call__(self, examples: Sequence[EncodedExample]) -> dict:
        batch = collate_sequences([e.ids for e in examples], self.pad_id, self.multiple)
        batch["labels"] = torch.tensor([e.label for e in examples])
        batch["weights"] = torch.tensor([self.weights[e.label] if self.weights else 1.0 for e in examples])
        return batch


def class_logits(model, batch: dict) -> torch.Tensor:
    """Logits [N, C] (fp32) at each row's last token."""
    return score_sequences(model, batch["input_ids"], batch["attention_mask"])


def reward_from_logits(logits: torch.Tensor, positive: int, reward_from: str = "logit") -> torch.Tensor:
    """The reward [N]: the positive class's logit, or its log-probability over the classes."""
    logits = logits.float()
    if reward_from == "logprob":
        return torch.log_softmax(logits, dim=-1)[:, positive]
    return logits[:, positive]


def positive_probability(logits: torch.Tensor, positive: int) -> np.ndarray:
    """P(positive class) of each row of [N, classes] logits."""
    return torch.softmax(logits.float(), dim=-1)[:, positive].double().numpy()


def train_step(model, collate: ClassifierCollator, batches: Sequence[Sequence[EncodedExample]],
               optimizer, scheduler, config: RewardConfig, forward=None,
               shares: Optional[Sequence[float]] = None) -> dict[str, float]:
    """One optimizer step of mean class-weighted cross-entropy over the step's examples (each
    example's loss times its class weight, ``class_weights``; ``shares`` as the pairwise
    ``rlhf.reward.trainer.train_step``); returns the step's metrics."""
    from rlhf import distributed
    forward = forward or distributed.Local(model, class_logits)
    n = sum(len(b) for b in batches)
    shares = list(shares) if shares is not None else [len(b) / n for b in batches]
    sums = {"loss/total": 0.0, "train/accuracy": 0.0}
    for k, (examples, weight) in enumerate(zip(batches, shares)):
        import contextlib
        with contextlib.nullcontext() if k == len(batches) - 1 else forward.no_sync():  # DDP: sync the last
            batch = collate(examples)
            logits = forward(batch)
            labels = batch["labels"].to(logits.device)
            # Per-example weights, averaged over the examples (not normalized by the batch's weight
            # sum as cross_entropy(weight=...) would): a micro-batch's share stays its example count.
            loss = (F.cross_entropy(logits, labels, reduction="none") * batch["weights"].to(logits.device)).mean()
            (loss * weight).backward()
        sums["loss/total"] += loss.item() * weight
        sums["train/accuracy"] += (logits.detach().argmax(-1) == labels).float().mean().item() * weight
    return finish_step(sums, forward, optimizer, scheduler, config)


def score_examples(model, collate: ClassifierCollator, examples: Sequence[EncodedExample],
                   batch_size: int) -> np.ndarray:
    """Logits [N, C] of every example, in order (eval mode; several processes share the work)."""
    return score_items(model, collate, examples, batch_size, class_logits)


class ClassifierTrainer(RewardTrainer):
    """The reward loop with cross-entropy; evaluation reports ``classification_metrics`` and the
    positive class's ROC curve. ``classes`` and ``positive`` come from the setup."""

    FORWARD = staticmethod(class_logits)
    TRAIN_STEP = staticmethod(train_step)

    def __init__(self, config: RewardConfig, parts, run, classes: Sequence[str], positive: int):
        super().__init__(config, parts, run)
        self.classes, self.positive = list(classes), positive

    def evaluate(self) -> dict:
        p, out, roc = self.parts, {}, {}
        for prefix, examples in p.eval_sets.items():
            if examples:
                logits = score_examples(p.model, p.collate, examples, self.cfg.batch_size)
                labels = np.array([e.label for e in examples])
                out.update(classification_metrics(logits, labels, self.classes, self.positive, prefix=prefix))
                score = logits[:, self.positive]
                if (labels == self.positive).any() and (labels != self.positive).any():
                    roc[prefix] = roc_curve(score[labels == self.positive], score[labels != self.positive])
        self.evaluated, self.roc, self._evaluated_at = out, roc, self.step
        return out
