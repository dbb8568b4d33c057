"""How much a summary copies its post: plain functions on strings, no models.

A summarizer can win a judge and ROUGE-L by copying the post (a copy shares the post's words with any
summary of it), so every evaluation reports how extractive each model's responses are:

- fragment coverage and density (Grusky, Naaman & Artzi 2018, "Newsroom", arXiv:1804.11283): the
  summary's greedy longest fragments shared with the post; coverage is the share of summary words
  inside one, density the mean length of the fragment each summary word sits in (|f|^2 summed / |S|);
- the share of the summary's bigrams that are novel (not in the post), and of its 5-grams copied
  verbatim from it (a run of 5+ words is quoting, shorter overlaps are normal reuse of words);
- whether the summary opens in the first person (I/We/My/Our ...), i.e. retells the post as its
  author instead of reporting the poster.

Words are lowercase runs of letters/digits (apostrophes kept inside: "don't"), so punctuation and
case never make a copy look novel.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

_WORD = re.compile(r"[a-z0-9]+(?:['\u2019][a-z0-9]+)*")
FIRST_PERSON = frozenset("""
i i'm i've i'd i'll me my mine myself we we're we've we'd we'll us our ours ourselves
""".split())
NOVEL_N = 2
COPIED_N = 5


def tokens(text: str) -> list[str]:
    return [w.replace("\u2019", "'") for w in _WORD.findall(text.lower())]


def fragments(post: Sequence[str], summary: Sequence[str]) -> list[int]:
    """Lengths of the extractive fragments (Grusky et al. 2018, Algorithm 1): walking the summary,
    the longest run starting at each position that also occurs in the post; a word in no run is
    skipped. Greedy, as in the paper, so each summary word is in at most one fragment."""
    out = []
    i = 0
    while i < len(summary):
        best = 0
        j = 0
        while j < len(post):
            if summary[i] == post[j]:
                k = 0
                while i + k < len(summary) and j + k < len(post) and summary[i + k] == post[j + k]:
                    k += 1
                best = max(best, k)
                j += k
            else:
                j += 1
        if best:
            out.append(best)
        i += max(best, 1)
    return out


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def shared_ngram_share(post: Sequence[str], summary: Sequence[str], n: int) -> Optional[float]:
    """Share of the summary's n-grams (with repeats) that occur in the post; None when it has none."""
    grams = _ngrams(summary, n)
    if not grams:
        return None
    in_post = set(_ngrams(post, n))
    return sum(g in in_post for g in grams) / len(grams)


def opens_in_first_person(summary: str) -> bool:
    words = tokens(summary)
    return bool(words) and words[0] in FIRST_PERSON


@dataclass(frozen=True)
class Extractiveness:
    """One summary against its post. Shares are None when the summary is too short to have the n-grams."""

    coverage: float
    density: float
    novel_bigrams: Optional[float]
    copied_5grams: Optional[float]
    first_person: bool
    longest_fragment: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure(post: str, summary: str) -> Extractiveness:
    p, s = tokens(post), tokens(summary)
    frags = fragments(p, s)
    n = len(s)
    shared_bigrams = shared_ngram_share(p, s, NOVEL_N)
    return Extractiveness(coverage=sum(frags) / n if n else 0.0,
                          density=sum(f * f for f in frags) / n if n else 0.0,
                          novel_bigrams=None if shared_bigrams is None else 1.0 - shared_bigrams,
                          copied_5grams=shared_ngram_share(p, s, COPIED_N),
                          first_person=opens_in_first_person(summary),
                          longest_fragment=max(frags, default=0))


def _mean(values: Sequence[Optional[float]]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else float("nan")


# The statistics reported per group (metric eval/extractive/{stat}_{group}): (stat, label, format, note)
STATS = (
    ("copied_5gram_share", "Copied 5-grams (share)", ".3f",
     "share of the response's 5-grams found verbatim in the post"),
    ("novel_bigram_share", "Novel bigrams (share)", ".3f", "share of the response's bigrams not in the post"),
    ("coverage", "Fragment coverage", ".3f",
     "share of response words inside a fragment shared with the post (Grusky et al. 2018)"),
    ("density", "Fragment density", ".2f", "mean squared fragment length per response word (Grusky et al. 2018)"),
    ("first_person_share", "Opens in the first person", ".1%",
     "responses starting with I/We/My/Our...: the post retold as its author"),
    ("cut_share", "Cut at the token limit", ".1%", "responses that did not end with EOS"),
)


def group_metrics(posts: Sequence[str], summaries: Sequence[str],
                  finished: Optional[Sequence[bool]] = None) -> dict[str, float]:
    """Mean extractiveness of one group of summaries of `posts` (keys: the stats in `STATS`); the
    cut share only when `finished` (did each response end with EOS) is given."""
    if len(posts) != len(summaries):
        raise ValueError(f"extractiveness needs paired texts, got {len(posts)} posts and {len(summaries)} summaries")
    ms = [measure(p, s) for p, s in zip(posts, summaries)]
    out = {"copied_5gram_share": _mean([m.copied_5grams for m in ms]),
           "novel_bigram_share": _mean([m.novel_bigrams for m in ms]),
           "coverage": _mean([m.coverage for m in ms]),
           "density": _mean([m.density for m in ms]),
           "first_person_share": _mean([float(m.first_person) for m in ms])}
    if finished is not None:
        out["cut_share"] = _mean([0.0 if f else 1.0 for f in finished])
    return out
