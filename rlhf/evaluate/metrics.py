"""Metric functions on plain numbers and strings: no models, no torch, easy to test by hand.

Namespaced names (`eval/...`) are given to these values in `rlhf.evaluate.run`; here they are just math.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence

log = logging.getLogger(__name__)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def std(values: Sequence[float]) -> float:
    """Population standard deviation (the spread of these scores, not an estimate for a larger set)."""
    if not values:
        return float("nan")
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def summary(values: Sequence[float]) -> dict[str, float]:
    """mean, std, min, median, max of a list of numbers (NaN for an empty list)."""
    if not values:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "median": nan, "max": nan}
    s = sorted(values)
    n = len(s)
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    return {"mean": mean(s), "std": std(s), "min": s[0], "median": median, "max": s[-1]}


@dataclass
class Histogram:
    """Counts of values in `len(counts)` equal-width bins over [edges[0], edges[-1]]."""

    edges: list[float]
    counts: list[int]


def histogram(values: Sequence[float], bins: int = 20, lo: Optional[float] = None,
              hi: Optional[float] = None) -> Histogram:
    """Equal-width histogram; the last bin includes its right edge. Pass the same `lo`/`hi` to
    compare two distributions (base and tuned) bin by bin."""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    if hi <= lo:  # all values equal: one visible bin around them
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        if lo <= v <= hi:
            counts[min(int((v - lo) / width), bins - 1)] += 1
    return Histogram(edges=[lo + i * width for i in range(bins + 1)], counts=counts)


def outcomes(tuned: Sequence[float], base: Sequence[float], tie_tolerance: float = 0.0) -> list[float]:
    """Per prompt: 1.0 when the tuned score beats the base score, 0.0 when it loses, 0.5 for a tie
    (|difference| <= tie_tolerance). Identical responses always tie because they score the same."""
    if len(tuned) != len(base):
        raise ValueError(f"win rate needs paired scores, got {len(tuned)} tuned and {len(base)} base")
    out = []
    for t, b in zip(tuned, base):
        d = t - b
        out.append(0.5 if abs(d) <= tie_tolerance else (1.0 if d > 0 else 0.0))
    return out


def win_rate(tuned: Sequence[float], base: Sequence[float], tie_tolerance: float = 0.0) -> float:
    """Fraction of prompts where tuned beats base; a tie counts half a win (so 0.5 means "no
    difference", and the base's win rate is 1 - this)."""
    return mean(outcomes(tuned, base, tie_tolerance))


def word_count(text: str) -> int:
    return len(text.split())


_ROUGE = None


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each prediction against its reference (Lin 2004; Google's `rouge-score`
    package, Porter stemming on, as in the summarization literature)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if len(predictions) != len(references):
        raise ValueError(f"ROUGE-L needs paired texts, got {len(predictions)} and {len(references)}")
    return [_ROUGE.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


HACKING_CITATION = ("reward hacking: the policy exploits the reward model's errors (seed 004); "
                    "Gao, Schulman & Hilton 2022, 'Scaling Laws for Reward Model Overoptimization', "
                    "arXiv:2210.10760")


def reward_hacking_alarm(reward_base: float, reward_tuned: float, judge_base: float,
                         judge_tuned: float, tolerance: float = 1e-6) -> Optional[str]:
    """A message when the reward model's mean score rose while the independent judge's mean score
    fell (both by more than `tolerance`), else None. The policy was optimized against the reward
    model, so only a separate score can show that the gain is not real."""
    if any(math.isnan(x) for x in (reward_base, reward_tuned, judge_base, judge_tuned)):
        return None
    reward_delta = reward_tuned - reward_base
    judge_delta = judge_tuned - judge_base
    if reward_delta > tolerance and judge_delta < -tolerance:
        return (f"POSSIBLE REWARD HACKING: the reward-model score rose by {reward_delta:+.4f} "
                f"({reward_base:.4f} -> {reward_tuned:.4f}) while the independent judge's score fell by "
                f"{judge_delta:+.4f} ({judge_base:.4f} -> {judge_tuned:.4f}). Inspect the samples; "
                f"lower the training steps or raise kl_coeff. ({HACKING_CITATION})")
    return None


# Copying "markedly more": at least this much higher share of copied 5-grams, and this many times it.
COPYING_MARGIN = 0.10
COPYING_RATIO = 2.0


def _copies_more(high: float, low: float) -> bool:
    return high - low >= COPYING_MARGIN and high >= COPYING_RATIO * low


def copying_alarm(copied_base: float, copied_tuned: float, copied_reference: float = float("nan"),
                  copied_sft: float = float("nan")) -> Optional[str]:
    """A message when the tuned model copies markedly more of the post than its base (copied-5-gram
    share at least `COPYING_MARGIN` higher and `COPYING_RATIO` times as high) and, where references
    were measured (not NaN), markedly more than they do; else None. A copy shares the post's words,
    so it can win a judge and ROUGE-L without being a summary: only reading the responses, or this
    number, shows it."""
    if math.isnan(copied_base) or math.isnan(copied_tuned):
        return None
    if not _copies_more(copied_tuned, copied_base):
        return None
    has_reference = not math.isnan(copied_reference)
    if has_reference and not _copies_more(copied_tuned, copied_reference):
        return None
    others = [f"{copied_base:.0%} for the base model"]
    if not math.isnan(copied_sft):
        others.append(f"{copied_sft:.0%} for the SFT model")
    if has_reference:
        others.append(f"{copied_reference:.0%} for the reference summaries")
    return (f"COPYING THE POST: {copied_tuned:.0%} of the tuned model's 5-grams appear verbatim in the post, "
            f"against {', '.join(others)}. A copy shares the post's words, so the judge and ROUGE-L can "
            f"reward it without it being a summary; read the samples before trusting the win rates.")
