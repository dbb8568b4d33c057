"""Reward-model quality on scored preference pairs (held-out split or eval data).

Given the rewards of each pair's chosen and rejected response:

- ``accuracy``: fraction of pairs with ``r_chosen > r_rejected`` (ties count as wrong);
- ``margin``: mean ``r_chosen − r_rejected``; ``loss``: mean Bradley–Terry loss (with the margin);
- ``precision``, ``recall``, ``f1``, the confusion matrix and ``roc_auc`` treat every *response* as
  one binary example, "this response was the preferred one of its pair" (chosen = positive,
  rejected = negative), predicted positive when its reward is above the mean reward of all scored
  responses (a label-free threshold; half the responses are positive by construction). Pairwise
  scores presented in both orders would make precision = recall = accuracy by symmetry, which says
  nothing new; this pointwise view instead shows whether a reward is meaningful on its own, as PPO
  uses it. ``roc_auc`` is the probability that a random chosen response outscores a random rejected
  one (ties count half): threshold-free.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

LABELS = ["rejected", "chosen"]  # confusion-matrix order: index = label


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann–Whitney U / (n_pos · n_neg), ties counted half."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    scores = np.concatenate([positive, negative])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = len(positive), len(negative)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_curve(r_chosen: Sequence[float], r_rejected: Sequence[float], points: int = 21):
    """(fpr, tpr, thresholds) at ``points`` reward quantiles, descending thresholds."""
    pos, neg = np.asarray(r_chosen, float), np.asarray(r_rejected, float)
    scores = np.concatenate([pos, neg])
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, points)))[::-1]
    tpr = [float((pos >= t).mean()) for t in thresholds]
    fpr = [float((neg >= t).mean()) for t in thresholds]
    return fpr, tpr, [float(t) for t in thresholds]


def preference_metrics(r_chosen: Sequence[float], r_rejected: Sequence[float], margin: float = 0.0,
                       prefix: str = "eval") -> dict:
    """Metrics named ``{prefix}/accuracy`` etc., plus ``{prefix}/confusion_matrix`` (rows: actual
    rejected, chosen; columns: predicted) as a nested list."""
    pos = np.asarray(r_chosen, dtype=np.float64)
    neg = np.asarray(r_rejected, dtype=np.float64)
    if len(pos) != len(neg) or len(pos) == 0:
        raise ValueError("need the same, non-zero number of chosen and rejected rewards")
    diff = pos - neg
    scores = np.concatenate([pos, neg])
    threshold = scores.mean()
    tp = int((pos > threshold).sum())
    fn = len(pos) - tp
    fp = int((neg > threshold).sum())
    tn = len(neg) - fp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {
        "accuracy": float((diff > 0).mean()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": _auc(pos, neg),
        "margin": float(diff.mean()),
        "loss": float(np.logaddexp(0.0, -(diff - margin)).mean()),  # -log σ(d − m), stably
        "reward_mean": float(scores.mean()),
        "reward_std": float(scores.std()),
        "pairs": float(len(pos)),
    }
    named = {f"{prefix}/{k}": v for k, v in out.items()}
    named[f"{prefix}/confusion_matrix"] = [[tn, fp], [fn, tp]]
    return named


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Drop the non-scalar entries (confusion matrices) for logs, TensorBoard and KFP Metrics."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def classification_metrics(logits, labels: Sequence[int], classes: Sequence[str], positive: int,
                           prefix: str = "eval") -> dict:
    """Classifier quality on ``logits`` [N, C] against integer ``labels`` [N]: ``accuracy``, mean
    cross-entropy ``loss``, per class ``{class}/precision|recall|f1|roc_auc`` (one class against the
    rest; ROC AUC ranks the class's softmax probability), their macro means ``precision``, ``recall``,
    ``f1``, the positive class's ``roc_auc`` and ``positive_probability`` (mean), and
    ``{prefix}/confusion_matrix`` (rows: actual class, columns: predicted)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError("need logits [N, C] and N > 0 labels")
    log_probs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    probs = np.exp(log_probs)
    predicted = logits.argmax(1)
    n_classes = logits.shape[1]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    out = {"accuracy": float((predicted == labels).mean()),
           "loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
           "examples": float(len(labels))}
    per_class = {"precision": [], "recall": [], "f1": []}
    for c, name in enumerate(classes):
        tp = confusion[c, c]
        precision = tp / confusion[:, c].sum() if confusion[:, c].sum() else 0.0
        recall = tp / confusion[c].sum() if confusion[c].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        values = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                  "roc_auc": _auc(probs[labels == c, c], probs[labels != c, c])}
        for k, v in values.items():
            out[f"{name}/{k}"] = v
        for k in per_class:
            per_class[k].append(values[k])
    out.update({k: float(np.mean(v)) for k, v in per_class.items()})
    out["roc_auc"] = out[f"{classes[positive]}/roc_auc"]
    out["positive_probability"] = float(probs[:, positive].mean())
    named = {f"{prefix}/{k}": v for k, v in out.items()}
    named[f"{prefix}/confusion_matrix"] = confusion.tolist()
    return named
