"""Read the eval prompts: canonical `EvalExample` rows (what `rlhf validate` writes) as they are, or a
user's raw eval JSONL checked and converted line by line (`rlhf.data.rows`)."""

from __future__ import annotations

from rlhf.data import canonical
from rlhf.data.rows import load_rows


def load_eval_examples(uri: str, instruction: str = "", max_examples: int = 0) -> list[canonical.EvalExample]:
    """The eval prompts from `uri` (file, gs:// URI or glob), canonical or raw. `instruction` is the
    default for raw rows without their own; `max_examples` > 0 keeps the first N."""
    return load_rows(uri, "eval", instruction, max_examples)  # type: ignore[return-value]
