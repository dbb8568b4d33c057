"""Preference pairs for the reward step, from canonical rows or from a user's raw file.

Canonical JSONL (written by ``rlhf validate`` / the validation component) is read as is. Anything
else is passed through ``rlhf.data.validate.run_validation`` first, so a raw file in any accepted
format works and a bad one fails with validation's line-numbered problems before training starts.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from typing import Hashable, Optional, Sequence

import numpy as np

from rlhf import storage
from rlhf.data import canonical
from rlhf.data.canonical import EvalExample, LabeledExample, PreferencePair
from rlhf.errors import UserError

log = logging.getLogger(__name__)

# Canonical rows are written with every field of their dataclass, `source` included; user files
# (Google's chat format has `messages` too, with `author`) are validated instead.
_CANONICAL_KEYS = {"preference": {"messages", "chosen", "rejected", "source"},
                   "eval": {"messages", "source", "reference"},
                   "labeled": {"messages", "response", "label", "source"}}


def _is_canonical(uri: str, kind: str) -> bool:
    """True when every file's first row has the canonical keys (``messages`` is a list)."""
    for path in storage.expand(uri):
        with storage.open_read(path, "rt") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                if not (isinstance(row, dict) and _CANONICAL_KEYS[kind] <= set(row)
                        and isinstance(row.get("messages"), list)
                        and all(isinstance(m, dict) and "role" in m for m in row["messages"])):
                    return False
                break
    return True


def _read_pairs(uri: str) -> list[PreferencePair]:
    return [p for part in storage.expand(uri) for p in canonical.read_preference_pairs(part)]


def _read_eval_pairs(uri: str) -> list[PreferencePair]:
    rows: list[EvalExample] = [r for part in storage.expand(uri) for r in canonical.read_eval_examples(part)]
    return [PreferencePair(r.messages, r.chosen, r.rejected, r.source, r.instruction)
            for r in rows if r.chosen is not None and r.rejected is not None]


def _check_exists(uri: str, name: str) -> None:
    if not any(c in uri for c in "*?[") and not storage.exists(uri):
        raise UserError(f"{name} {uri}: no such file")


def load_datasets(preference_uri: str, eval_uri: str = "",
                  instruction: str = "") -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(training pairs, eval pairs). Canonical files are read directly; otherwise both are run
    through validation together (UserError listing every problem by file and line). Eval pairs are
    the eval rows that have both a chosen and a rejected response."""
    _check_exists(preference_uri, "preference_dataset")
    if eval_uri:
        _check_exists(eval_uri, "eval_dataset")
    if _is_canonical(preference_uri, "preference") and (not eval_uri or _is_canonical(eval_uri, "eval")):
        pairs, eval_pairs = _read_pairs(preference_uri), (_read_eval_pairs(eval_uri) if eval_uri else [])
    else:
        from rlhf.data.validate import ValidateConfig, run_validation
        out = tempfile.mkdtemp(prefix="rlhf-reward-data-")
        try:
            report = run_validation(ValidateConfig(preference_dataset=preference_uri, eval_dataset=eval_uri,
                                                   output_dir=out, instruction=instruction))
            if not report.ok:
                raise UserError(report.problem_text())
            pairs = _read_pairs(storage.join(out, "preference.jsonl"))
            eval_pairs = _read_eval_pairs(storage.join(out, "eval.jsonl")) if eval_uri else []
        finally:
            shutil.rmtree(out, ignore_errors=True)
    if not pairs:
        raise UserError(f"preference_dataset {preference_uri} holds no preference pairs")
    if eval_uri and not eval_pairs:
        log.warning("eval_dataset %s has no rows with chosen and rejected responses: no eval/ metrics",
                    eval_uri)
    return pairs, eval_pairs


def load_labeled(uri: str, instruction: str = "") -> list[LabeledExample]:
    """Labeled responses (a classifier reward model's data): canonical rows read directly, anything
    else through validation (UserError listing every problem by file and line)."""
    _check_exists(uri, "labeled_dataset")
    if _is_canonical(uri, "labeled"):
        rows = [r for part in storage.expand(uri) for r in canonical.read_labeled_examples(part)]
    else:
        from rlhf.data.validate import ValidateConfig, ValidationOutputs, run_validation
        out = tempfile.mkdtemp(prefix="rlhf-reward-data-")
        try:
            report = run_validation(ValidateConfig(labeled_dataset=uri, instruction=instruction),
                                    ValidationOutputs.in_dir(out))
            if not report.ok:
                raise UserError(report.problem_text())
            rows = canonical.read_labeled_examples(storage.join(out, "labeled.jsonl"))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    if not rows:
        raise UserError(f"labeled_dataset {uri} holds no labeled rows")
    return rows


def split_heldout(n: int, fraction: float, cap: int, seed: int,
                  groups: Optional[Sequence[Hashable]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded random ``fraction`` (at most ``cap``), at least
    one item left for training. With ``groups`` (a key per item, e.g. its prompt) whole groups are
    held out, so no held-out item shares a prompt with a training one: ranked feedback gives many
    pairs per prompt, and a split through them would measure memory, not generalization. Distinct
    keys give exactly the ungrouped split."""
    rng = np.random.default_rng([seed, 7])
    k = min(int(round(n * fraction)), cap, n - 1)
    if groups is None:
        perm = rng.permutation(n)
        return np.sort(perm[k:]), np.sort(perm[:k])
    members: dict[Hashable, list[int]] = {}
    for i, key in enumerate(groups):
        members.setdefault(key, []).append(i)
    keys = list(members)  # first-appearance order
    heldout: list[int] = []
    for j in rng.permutation(len(keys)):
        if len(heldout) >= k:
            break
        group = members[keys[j]]
        if len(heldout) + len(group) <= k:  # a group that would overshoot waits for a smaller one
            heldout.extend(group)
    held = np.array(sorted(heldout), dtype=int)
    return np.setdiff1d(np.arange(n), held), held


def split_stratified(labels: Sequence[int], fraction: float, cap: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) as ``split_heldout``, but per class: each class gives its
    share of the held-out set (at least one example when it has two), so a rare class is measured
    too; every class keeps at least one training example."""
    labels = np.asarray(labels)
    n = len(labels)
    k = min(int(round(n * fraction)), cap, n - 1)
    if k <= 0:
        return np.arange(n), np.array([], dtype=int)
    rng = np.random.default_rng([seed, 7])
    heldout = []
    classes = np.unique(labels)
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        share = int(round(k * len(members) / n))
        share = min(max(share, 1 if len(members) > 1 else 0), len(members) - 1)
        heldout.extend(members[:share].tolist())
    heldout = np.array(sorted(heldout), dtype=int)
    return np.setdiff1d(np.arange(n), heldout), heldout
