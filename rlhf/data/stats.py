"""Dataset statistics gathered while validation streams the rows: counts, choice balance, length
percentiles in characters and, with a tokenizer, in tokens plus how many prompts/responses the
configured sequence lengths would truncate.

Lengths are kept as compact integer arrays (4 bytes a text), so a large file costs little memory.
Prompt lengths are measured on `prompt_text(row)`: the instruction prepended, as the model sees it.
Token counts use the tokenizer without special tokens; a chat template adds a few more.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from typing import Any, Callable, Optional, Sequence

from rlhf.data.canonical import prompt_text
from rlhf.data.formats import ParsedRow

PERCENTILES = (50, 90, 99)
TOKEN_BATCH = 256


def percentiles(values: Sequence[int]) -> dict[str, float]:
    """Nearest-rank percentiles (p50, p90, p99), max and mean; zeros for no values."""
    n = len(values)
    out: dict[str, float] = {"count": n}
    if not n:
        out.update({f"p{p}": 0 for p in PERCENTILES})
        out.update({"max": 0, "mean": 0.0})
        return out
    ordered = sorted(values)
    for p in PERCENTILES:
        out[f"p{p}"] = ordered[max(0, math.ceil(p / 100 * n) - 1)]
    out["max"] = ordered[-1]
    out["mean"] = round(sum(ordered) / n, 2)
    return out


class TokenLengths:
    """Counts tokens of texts in batches (fast tokenizers are much quicker on batches)."""

    def __init__(self, tokenizer: Callable[..., Any]):
        self.tokenizer = tokenizer
        self.pending: list[str] = []
        self.lengths = array("I")

    def add(self, text: str) -> None:
        self.pending.append(text)
        if len(self.pending) >= TOKEN_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            ids = self.tokenizer(self.pending, add_special_tokens=False)["input_ids"]
            self.lengths.extend(len(x) for x in ids)
            self.pending = []

    def over(self, limit: int) -> int:
        self.flush()
        return sum(1 for n in self.lengths if n > limit)


class DatasetStats:
    """Accumulates the statistics of one dataset (all files of a glob together)."""

    def __init__(self, kind: str, uri: str, tokenizer: Optional[Callable[..., Any]] = None):
        self.kind = kind
        self.uri = uri
        self.files: list[str] = []
        self.rows = 0
        self.canonical_rows = 0
        self.formats: Counter = Counter()
        self.choices: Counter = Counter()
        self.labels: Counter = Counter()  # labeled data: class (as text) -> rows
        self.duplicates = 0
        self.prompt_chars = array("I")
        self.response_chars = array("I")
        self.prompt_tokens = TokenLengths(tokenizer) if tokenizer is not None else None
        self.response_tokens = TokenLengths(tokenizer) if tokenizer is not None else None

    def add(self, parsed: ParsedRow) -> None:
        self.rows += 1
        self.canonical_rows += len(parsed.rows)
        self.formats[parsed.format] += 1
        if parsed.choice is not None:
            self.choices[parsed.choice] += 1
        if parsed.label is not None:
            self.labels[parsed.label] += 1
        prompt = prompt_text(parsed.rows[0])
        self.prompt_chars.append(len(prompt))
        self.response_chars.extend(len(r) for r in parsed.responses)
        if self.prompt_tokens is not None:
            self.prompt_tokens.add(prompt)
            for r in parsed.responses:
                self.response_tokens.add(r)

    def to_dict(self, prompt_sequence_length: int, target_sequence_length: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "uri": self.uri,
            "files": list(self.files),
            "format": self.formats.most_common(1)[0][0] if self.formats else None,
            "rows": self.rows,
            "pairs" if self.kind == "preference" else "examples": self.canonical_rows,
            "duplicates": self.duplicates,
            "chars": {"prompt": percentiles(self.prompt_chars)},
        }
        if self.response_chars:
            out["chars"]["response"] = percentiles(self.response_chars)
        if self.choices:
            total = sum(self.choices.values())
            out["choice"] = {"0": self.choices[0], "1": self.choices[1],
                             "fraction_1": round(self.choices[1] / total, 4)}
        if self.labels:
            out["labels"] = label_balance(self.labels)
        if self.prompt_tokens is not None:
            self.prompt_tokens.flush()
            self.response_tokens.flush()
            out["tokens"] = {"prompt": percentiles(self.prompt_tokens.lengths)}
            out["truncated"] = {"prompt": self.prompt_tokens.over(prompt_sequence_length)}
            if self.response_tokens.lengths:
                out["tokens"]["response"] = percentiles(self.response_tokens.lengths)
                out["truncated"]["response"] = self.response_tokens.over(target_sequence_length)
        return out


def label_balance(labels: Counter) -> dict[str, dict[str, float]]:
    """{class: {"rows", "fraction"}}, classes in their natural order (integers numerically)."""
    total = sum(labels.values())
    order = sorted(labels, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))
    return {c: {"rows": labels[c], "fraction": round(labels[c] / total, 4)} for c in order}


def flat_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """The numbers worth a glance in the KFP/Vertex UI, as `data/<kind>_<what>` metrics."""
    metrics: dict[str, float] = {}
    for kind, ds in stats.get("datasets", {}).items():
        metrics[f"data/{kind}_rows"] = ds["rows"]
        if "pairs" in ds:
            metrics[f"data/{kind}_pairs"] = ds["pairs"]
        metrics[f"data/{kind}_duplicates"] = ds["duplicates"]
        if "choice" in ds:
            metrics[f"data/{kind}_choice_1_fraction"] = ds["choice"]["fraction_1"]
        for label, balance in ds.get("labels", {}).items():
            metrics[f"data/{kind}_label_{label}_fraction"] = balance["fraction"]
        for part, lengths in ds["chars"].items():
            for q in ("p50", "p99", "max"):
                metrics[f"data/{kind}_{part}_chars_{q}"] = lengths[q]
        for part, lengths in ds.get("tokens", {}).items():
            for q in ("p50", "p99", "max"):
                metrics[f"data/{kind}_{part}_tokens_{q}"] = lengths[q]
        for part, count in ds.get("truncated", {}).items():
            metrics[f"data/{kind}_{part}s_truncated"] = count
    if "eval_prompts_in_training" in stats:
        metrics["data/eval_prompts_in_training"] = stats["eval_prompts_in_training"]
    metrics["data/warnings"] = stats.get("warnings", {}).get("count", 0)
    return {k: float(v) for k, v in metrics.items()}
