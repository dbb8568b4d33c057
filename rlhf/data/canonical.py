"""The one normalized format that every step after validation reads.

Validation turns each accepted user format (Google's text and chat formats, TRL's
prompt/chosen/rejected, ranked feedback) into JSONL rows of these dataclasses. A conversation is
a list of `{"role": "user"|"assistant", "content": str}` turns ending with a user turn; the
optional `instruction` is kept apart and prepended to the first user turn by `prompt_messages`,
as Google's pipeline prepends it to `input_text`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Type, TypeVar

from rlhf import storage

Message = dict  # {"role": "user" | "assistant", "content": str}


@dataclass
class PreferencePair:
    """One pairwise comparison: `chosen` was preferred over `rejected` as the reply to `messages`."""

    messages: list[Message]
    chosen: str
    rejected: str
    source: str = ""  # "URI:LINE" of the user's row, for error messages and provenance
    instruction: Optional[str] = None


@dataclass
class Prompt:
    """One prompt for PPO rollouts."""

    messages: list[Message]
    source: str = ""
    instruction: Optional[str] = None


@dataclass
class EvalExample:
    """One held-out prompt, optionally with a preference pair (to score the reward model) and a reference."""

    messages: list[Message]
    source: str = ""
    instruction: Optional[str] = None
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    reference: Optional[str] = None


@dataclass
class LabeledExample:
    """One response with its class, for a classifier reward model: `label` is an integer class or a
    class name, as the user's row gave it."""

    messages: list[Message]
    response: str
    label: int | str
    source: str = ""
    instruction: Optional[str] = None


@dataclass
class SFTExample:
    """One demonstration for supervised fine-tuning: `response` is the answer to `messages`."""

    messages: list[Message]
    response: str
    source: str = ""
    instruction: Optional[str] = None


Row = TypeVar("Row", PreferencePair, Prompt, EvalExample, LabeledExample, SFTExample)


def prompt_messages(row: PreferencePair | Prompt | EvalExample) -> list[Message]:
    """The conversation as the model sees it: the instruction prepended to the first user turn."""
    messages = [dict(m) for m in row.messages]
    if row.instruction:
        for m in messages:
            if m["role"] == "user":
                m["content"] = f"{row.instruction}\n\n{m['content']}"
                break
    return messages


def prompt_text(row: PreferencePair | Prompt | EvalExample) -> str:
    """A plain-text rendering of the prompt, for models without a chat template and for reports."""
    messages = prompt_messages(row)
    if len(messages) == 1:
        return messages[0]["content"]
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages) + "\n\nAssistant:"


def user_input(row: PreferencePair | Prompt | EvalExample) -> str:
    """The last user turn without the instruction: the text a judge compares a reply against."""
    return [m for m in row.messages if m["role"] == "user"][-1]["content"]


def to_json(row) -> str:
    # vars() rather than dataclasses.asdict: same bytes for these flat rows, without the deep copy.
    return json.dumps(vars(row), ensure_ascii=False)


def from_dict(cls: Type[Row], obj: dict) -> Row:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in obj.items() if k in names})


def write_jsonl(uri: str, rows: Iterable) -> int:
    """Write rows atomically; returns how many were written."""
    count = 0
    with storage.open_write(uri, "wt") as f:
        for row in rows:
            f.write(to_json(row) + "\n")
            count += 1
    return count


def read_jsonl(uri: str, cls: Type[Row]) -> Iterator[Row]:
    """Stream canonical rows back (written by `write_jsonl`)."""
    with storage.open_read(uri, "rt") as f:
        for line in f:
            if line.strip():
                yield from_dict(cls, json.loads(line))


def read_preference_pairs(uri: str) -> list[PreferencePair]:
    return list(read_jsonl(uri, PreferencePair))


def read_prompts(uri: str) -> list[Prompt]:
    return list(read_jsonl(uri, Prompt))


def read_eval_examples(uri: str) -> list[EvalExample]:
    return list(read_jsonl(uri, EvalExample))


def read_labeled_examples(uri: str) -> list[LabeledExample]:
    return list(read_jsonl(uri, LabeledExample))


def read_sft_examples(uri: str) -> list[SFTExample]:
    return list(read_jsonl(uri, SFTExample))
