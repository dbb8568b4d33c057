"""The bundled sample data (`rlhf/sample_data/`): what `rlhf run-local` runs on by default.

A summarization task in Google's text format; `rlhf/sample_data/README.md` says how it was made.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.errors import UserError

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"

# The instruction the sample prompts were written for (prepended to each input, as Google's
# `instruction` parameter is); the sample rows do not carry it themselves.
INSTRUCTION = "Summarize in less than 50 words."


def _path(name: str) -> str:
    path = SAMPLE_DIR / name
    if not path.is_file():
        raise UserError(f"the bundled sample dataset {path} is missing: reinstall the package "
                        f"(pip install -e .) or pass your own dataset flags")
    return str(path)


def preference_dataset() -> str:
    return _path("preference.jsonl")


def prompt_dataset() -> str:
    return _path("prompts.jsonl")


def eval_dataset() -> str:
    return _path("eval.jsonl")


def labeled_dataset() -> str:
    """Labeled candidates for a classifier reward model (`scripts/build_labeled_data.py`)."""
    return _path("labeled.jsonl")
