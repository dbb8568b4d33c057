"""Preference pairs for the reward step, from canonical rows or from a user's raw file.

Canonical JSONL (written by ``rlhf validate`` / the validation component) is read as is. Anything
else is passed through ``rlhf.data.validate.run_validation`` first, so a raw file in any accepted
format works and a bad one fails with validation's line-numbered problems before training starts.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import numpy as np

from rlhf import storage
from rlhf.data import canonical
from rlhf.data.canonical import EvalExample, PreferencePair
from rlhf.errors import UserError

log = logging.getLogger(__name__)

_CANONICAL_KEYS = {"preference": {"messages", "chosen", "rejected"}, "eval": {"messages"}}


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
                        and isinstance(row.get("messages"), list)):
                    return False
                break
    return True


def _validated(uri: str, kind: str, instruction: str) -> str:
    """Validate a raw dataset into a temporary canonical file; UserError with the problems."""
    from rlhf.data.validate import ValidateConfig, run_validation
    out = tempfile.mkdtemp(prefix="rlhf-reward-data-")  # removed by the caller after reading
    given = {"preference_dataset": uri} if kind == "preference" else {"preference_dataset": "", "eval_dataset": uri}
    report = run_validation(ValidateConfig(output_dir=out, instruction=instruction, **given))
    if not report.ok:
        shutil.rmtree(out, ignore_errors=True)
        raise UserError(report.problem_text())
    return storage.join(out, "preference.jsonl" if kind == "preference" else "eval.jsonl")


def load_preference_pairs(uri: str, instruction: str = "") -> list[PreferencePair]:
    """Every pair in ``uri`` (canonical or raw); UserError when there are none."""
    if not storage.exists(uri) and not any(c in uri for c in "*?["):
        raise UserError(f"preference_dataset {uri}: no such file")
    path = uri if _is_canonical(uri, "preference") else _validated(uri, "preference", instruction)
    try:
        pairs = [p for part in storage.expand(path) for p in canonical.read_preference_pairs(part)]
    finally:
        if path != uri:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    if not pairs:
        raise UserError(f"preference_dataset {uri} holds no preference pairs")
    return pairs


def load_eval_pairs(uri: str, instruction: str = "") -> list[PreferencePair]:
    """The preference pairs among the eval rows (rows with both chosen and rejected)."""
    if not storage.exists(uri) and not any(c in uri for c in "*?["):
        raise UserError(f"eval_dataset {uri}: no such file")
    path = uri if _is_canonical(uri, "eval") else _validated(uri, "eval", instruction)
    try:
        rows: list[EvalExample] = [r for part in storage.expand(path) for r in canonical.read_eval_examples(part)]
    finally:
        if path != uri:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    pairs = [PreferencePair(r.messages, r.chosen, r.rejected, r.source, r.instruction)
             for r in rows if r.chosen is not None and r.rejected is not None]
    if not pairs:
        log.warning("eval_dataset %s has no rows with chosen and rejected responses: no eval/ metrics", uri)
    return pairs


def split_heldout(n: int, fraction: float, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a seeded random ``fraction`` (at most ``cap``), at least
    one pair left for training."""
    rng = np.random.default_rng([seed, 7])
    perm = rng.permutation(n)
    k = min(int(round(n * fraction)), cap, n - 1)
    return np.sort(perm[k:]), np.sort(perm[:k])
