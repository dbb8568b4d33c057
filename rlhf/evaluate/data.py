"""Read the eval prompts: canonical `EvalExample` rows (what `rlhf validate` writes) as they are, or a
user's raw eval JSONL checked and converted line by line with the validator's own row parser, so the
evaluation accepts exactly the formats validation accepts."""

from __future__ import annotations

import json
import logging

from rlhf import storage
from rlhf.data import canonical
from rlhf.errors import UserError

log = logging.getLogger(__name__)

_CANONICAL_KEYS = {"messages", "source", "instruction", "chosen", "rejected", "reference"}
MAX_PROBLEMS = 20


def _is_canonical(obj) -> bool:
    """Canonical rows carry `source` and `role`-keyed messages and nothing else; user rows carry
    `input_text`, `prompt`, or `author`-keyed messages."""
    return (isinstance(obj, dict) and "source" in obj and "messages" in obj and set(obj) <= _CANONICAL_KEYS
            and isinstance(obj["messages"], list)
            and all(isinstance(m, dict) and "role" in m for m in obj["messages"]))


def _rows(uri: str):
    """(path, line number, decoded object) for each non-blank line of every file matching `uri`."""
    for path in storage.expand(uri):
        with storage.open_read(path, "rt") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield path, n, json.loads(line)
                except ValueError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e}); the eval dataset must hold one "
                                    f"JSON object per line") from None


def load_eval_examples(uri: str, instruction: str = "", max_examples: int = 0) -> list[canonical.EvalExample]:
    """The eval prompts from `uri` (file, gs:// URI or glob), canonical or raw (see module doc).
    `instruction` is the default for raw rows without their own; `max_examples` > 0 keeps the first N."""
    examples: list[canonical.EvalExample] = []
    problems: list[str] = []
    n_problems = 0
    raw = None
    for path, n, obj in _rows(uri):
        if raw is None:
            raw = not _is_canonical(obj)
            log.info("eval dataset %s: %s rows", uri, "user (validated and converted)" if raw else "canonical")
        if not raw:
            if not _is_canonical(obj):
                raise UserError(f"{path}:{n}: this row is not a canonical eval row, but the file's first "
                                f"row is; do not mix formats in one eval dataset")
            examples.append(canonical.from_dict(canonical.EvalExample, obj))
        else:
            from rlhf.data.formats import parse_row
            parsed = parse_row("eval", obj, instruction=instruction or None, source=f"{path}:{n}")
            if parsed.errors:
                n_problems += 1
                if len(problems) < MAX_PROBLEMS:
                    problems.append(f"{path}:{n}: " + "; ".join(parsed.errors))
                continue
            examples.extend(parsed.rows)
        if max_examples and len(examples) >= max_examples and not n_problems:
            break
    if n_problems:
        more = f"\n... and {n_problems - len(problems)} more" if n_problems > len(problems) else ""
        raise UserError(f"{n_problems} problem(s) in the eval dataset {uri}:\n" + "\n".join(problems) + more
                        + "\nFix these rows, or run `rlhf validate` to see every check.")
    if not examples:
        raise UserError(f"the eval dataset {uri} holds no rows: give a JSONL file with one eval prompt "
                        f"per line, e.g. {{\"input_text\": \"...\"}}")
    for row in examples:
        if not any(m.get("role") == "user" for m in row.messages):
            raise UserError(f"{row.source or uri}: the eval row has no user turn to answer")
    return examples[:max_examples] if max_examples else examples
