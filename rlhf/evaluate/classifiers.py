"""Classifier scores in evaluation (``eval_classifiers``): each classifier's probability of one
class (say ``positive`` of a sentiment model) for the base and the tuned responses (and the SFT
model's, when one is compared).

A classifier is ``REF=LABEL``: ``REF`` a classifier reward model trained by ``rlhf train-reward
--reward-model-type classifier`` or an existing Hugging Face sequence classifier (alias, local or
``gs://`` directory; ``rlhf.reward.scorer.load_scorer``), ``LABEL`` the class to report. Per
classifier: the mean probability of each group, the share of responses above 0.5, the change
(tuned minus base; with an SFT model also tuned minus SFT and SFT minus base), and the per-prompt
probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from rlhf.errors import UserError
from rlhf.evaluate import metrics as M
from rlhf.evaluate.results import groups_of


@dataclass(frozen=True)
class Classifier:
    ref: str
    label: str

    @property
    def name(self) -> str:
        """Short and metric-safe: `LABEL@last path part of REF`."""
        return f"{self.label}@{self.ref.rstrip('/').rsplit('/', 1)[-1]}"


def parse(specs: Sequence[str]) -> list[Classifier]:
    """``["REF=LABEL", ...]`` -> classifiers; UserError naming a malformed entry."""
    out = []
    for spec in specs:
        ref, sep, label = str(spec).rpartition("=")
        if not sep or not ref.strip() or not label.strip():
            raise UserError(f"eval_classifiers entry {spec!r}: expected REF=LABEL, e.g. "
                            "gs://bucket/sentiment=positive (a classifier and the class to report)")
        out.append(Classifier(ref.strip(), label.strip()))
    return out


def probabilities(classifier: Classifier, rows, responses: dict[str, list[str]], device=None, dtype=None,
                  batch_size: int = 8) -> dict[str, list[float]]:
    """P(label) of each group's responses ("base"/"sft"/"tuned" -> one per row). A classifier trained here
    reads prompt and response, the prompt as in its training (a row without its own instruction gets the
    one saved with the classifier); an external one reads the response alone."""
    from rlhf.reward.scorer import load_scorer
    scorer = load_scorer(classifier.ref, classifier.label, device=device, dtype=dtype, batch_size=batch_size)
    if not scorer.labels:  # both scorers have labels: a classifier's classes, None for a pairwise model
        raise UserError(f"eval_classifiers entry {classifier.ref}: a pairwise reward model has no classes; "
                        "give a classifier")
    return {name: [float(p) for p in scorer.score_rows(rows, texts).probability] for name, texts in responses.items()}


def classifier_metrics(name: str, probs: dict[str, list[float]]) -> dict[str, float]:
    """``eval/classifier/NAME/{base,sft,tuned}_mean``, ``..._above_half`` and ``.../delta`` (tuned minus
    base); with an SFT group ``.../delta_vs_sft`` and ``.../sft_delta_vs_base`` too."""
    out = {}
    for group in groups_of(probs):
        out[f"eval/classifier/{name}/{group}_mean"] = M.mean(probs[group])
        out[f"eval/classifier/{name}/{group}_above_half"] = M.mean([float(p > 0.5) for p in probs[group]])
    out[f"eval/classifier/{name}/delta"] = (out[f"eval/classifier/{name}/tuned_mean"]
                                            - out[f"eval/classifier/{name}/base_mean"])
    if "sft" in probs:
        sft = out[f"eval/classifier/{name}/sft_mean"]
        out[f"eval/classifier/{name}/delta_vs_sft"] = out[f"eval/classifier/{name}/tuned_mean"] - sft
        out[f"eval/classifier/{name}/sft_delta_vs_base"] = sft - out[f"eval/classifier/{name}/base_mean"]
    return out


def score_all(specs: Sequence[str], rows, responses: dict[str, list[str]], device=None, dtype=None,
              batch_size: int = 8) -> dict[str, dict[str, list[float]]]:
    """Every classifier's probabilities: name -> group -> one per row."""
    return {c.name: probabilities(c, rows, responses, device=device, dtype=dtype, batch_size=batch_size)
            for c in parse(specs)}
