"""Read prompt or eval rows for a training or evaluation step: canonical rows (what `rlhf validate`
writes) as they are, or a user's raw JSONL checked and converted line by line with the validator's
own row parser, so every step accepts exactly the formats validation accepts and reports a bad row
by file and line."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Union

from rlhf import storage
from rlhf.data import canonical
from rlhf.data.formats import EXAMPLES, parse_row
from rlhf.errors import UserError

log = logging.getLogger(__name__)

ROW_TYPES = {"prompt": canonical.Prompt, "eval": canonical.EvalExample, "sft": canonical.SFTExample}
MAX_PROBLEMS = 20

Row = Union[canonical.Prompt, canonical.EvalExample, canonical.SFTExample]


def is_canonical(obj, kind: str) -> bool:
    """Canonical rows carry `source` and `role`-keyed messages and no other keys than their
    dataclass's; user rows carry `input_text`, `prompt`, or `author`-keyed messages."""
    names = {f.name for f in dataclasses.fields(ROW_TYPES[kind])}
    return (isinstance(obj, dict) and "source" in obj and "messages" in obj and set(obj) <= names
            and isinstance(obj["messages"], list)
            and all(isinstance(m, dict) and "role" in m for m in obj["messages"]))


def _lines(uri: str, what: str):
    """(path, line number, decoded object) for each non-blank line of every file matching `uri`."""
    for path in storage.expand(uri):  # a StorageError when nothing matches
        with storage.open_read(path, "rt") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield path, n, json.loads(line)
                except ValueError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e}); the {what} must hold one "
                                    f"JSON object per line") from None


def load_rows(uri: str, kind: str, instruction: str = "", max_rows: int = 0) -> list[Row]:
    """The `kind` ("prompt", "eval" or "sft") rows of `uri` (file, gs:// URI or glob), canonical or raw (see
    module doc). `instruction` is the default for raw rows without their own; `max_rows` > 0 keeps
    the first N. Every bad row is a UserError naming its file and line (up to MAX_PROBLEMS)."""
    what = f"{kind} dataset"
    rows: list[Row] = []
    problems: list[str] = []
    n_problems = 0
    raw = None
    for path, n, obj in _lines(uri, what):
        if raw is None:
            raw = not is_canonical(obj, kind)
            log.info("%s %s: %s rows", what, uri, "user (validated and converted)" if raw else "canonical")
        if not raw:
            if not is_canonical(obj, kind):
                raise UserError(f"{path}:{n}: this row is not a canonical {kind} row, but the file's first "
                                f"row is; do not mix formats in one {what}")
            rows.append(canonical.from_dict(ROW_TYPES[kind], obj))
        else:
            parsed = parse_row(kind, obj, instruction=instruction or None, source=f"{path}:{n}")
            if parsed.errors:
                n_problems += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(f"{path}:{n}: " + "; ".join(parsed.errors))
                continue
            rows.extend(parsed.rows)
        if max_rows and len(rows) >= max_rows and not n_problems:
            break
    if n_problems:
        more = f"\n... and {n_problems - len(problems)} more" if n_problems > len(problems) else ""
        raise UserError(f"{n_problems} problem(s) in the {what} {uri}:\n" + "\n".join(problems) + more
                        + "\nFix these rows, or run `rlhf validate` to see every check.")
    if not rows:
        raise UserError(f"the {what} {uri} holds no rows: give a JSONL file with one {kind} per line, "
                        f"e.g. {EXAMPLES[kind]}")
    for row in rows:
        if not any(m.get("role") == "user" for m in row.messages):
            raise UserError(f"{row.source or uri}: the {kind} row has no user turn to answer")
    return rows[:max_rows] if max_rows else rows
