"""The dataset formats users give us, and their conversion into the canonical rows of
`rlhf.data.canonical`.

A row has a *prompt* part and, for preference and eval data, an *answer* part:

prompt part (exactly one of):
    `input_text`  a string (Google's text format)
    `messages`    a list of `{"author": "user"|"assistant", "content": str}` turns that starts and
                  ends with a `user` turn (Google's chat format; `role` is accepted for `author`)
    `prompt`      a string (Hugging Face TRL)
answer part (exactly one of):
    `candidate_0`, `candidate_1`, `choice`   choice is the integer 0 or 1: the index of the preferred
                                             candidate (Google)
    `chosen`, `rejected`                     the preferred and the other response (TRL)
    `candidates`, `ranking`                  ranked feedback: `ranking` lists candidate indices from
                                             best to worst (`[2, 0, 1]`: candidates[2] is best,
                                             candidates[1] worst) and must be a permutation of
                                             0..len(candidates)-1; it becomes every pairwise
                                             comparison, the better one as `chosen` (n*(n-1)/2 pairs)

Datasets:
    preference  a prompt part and an answer part. The usual combinations have names: Google text
                (input_text + choice), Google chat (messages + choice), TRL (prompt + chosen/rejected),
                ranked (input_text or messages + candidates/ranking); other combinations are accepted too.
    prompt      a prompt part only.
    eval        a prompt part, optionally one pair (choice or chosen/rejected, to score the reward
                model) and an optional `reference` text.
    labeled     a prompt part, `output_text` (the response) and `label`: an integer class (0, 1, ...)
                or a class name (a non-empty string), one kind in the whole dataset; for training a
                classifier reward model.
    sft         demonstrations for supervised fine-tuning (Vertex AI's supervised tuning rows): a
                prompt part and `output_text` (the answer), or chat `messages` whose last turn is the
                assistant's answer.
Every row may carry an `instruction` string, prepended to the prompt (as Google's pipeline does); it
overrides the run's `--instruction` (null or "" means none). `reference` may be null.
Unknown fields are ignored (the validator warns once per dataset). A prompt dataset may be a
preference file: its answer fields are ignored without a warning.

`parse_row` checks one decoded JSON object and returns either canonical rows or every problem found,
each saying what is wrong and what was expected.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from rlhf.data.canonical import EvalExample, LabeledExample, PreferencePair, Prompt, SFTExample

KINDS = ("preference", "prompt", "eval", "labeled", "sft")

PROMPT_KEYS = ("input_text", "messages", "prompt")
ANSWER_KEYS = {
    "choice": ("candidate_0", "candidate_1", "choice"),
    "chosen": ("chosen", "rejected"),
    "ranking": ("candidates", "ranking"),
}
LABEL_KEYS = ("output_text", "label")  # a labeled row's answer part
OPTIONAL_KEYS = {"preference": ("instruction",), "prompt": ("instruction",),
                 "eval": ("instruction", "reference"), "labeled": ("instruction",), "sft": ("instruction",)}
# An sft row's answer: `output_text` ("output"), or the last turn of `messages` ("answer_turn").
SFT_KEYS = {"output": ("output_text",), "answer_turn": ()}

# (prompt key, answer form) -> short format name used in stats and messages.
FORMAT_NAMES = {
    ("input_text", "choice"): "google_text",
    ("messages", "choice"): "google_chat",
    ("prompt", "chosen"): "trl",
    ("input_text", "ranking"): "ranked",
    ("messages", "ranking"): "ranked_chat",
    # The label's kind is part of a labeled format, so a dataset mixing integers and names is
    # reported where the kind changes, like any other change of format.
    ("input_text", "label_id"): "labeled",
    ("messages", "label_id"): "labeled_chat",
    ("input_text", "label_name"): "labeled_names",
    ("messages", "label_name"): "labeled_names_chat",
    ("input_text", "output"): "sft_text",
    ("messages", "answer_turn"): "sft_chat",
    ("messages", "output"): "sft_chat_output",
    ("prompt", "output"): "sft_prompt",
}
_TITLES = {"google_text": "Google text", "google_chat": "Google chat", "trl": "TRL",
           "ranked": "ranked", "ranked_chat": "ranked chat", "text": "text prompt",
           "chat": "chat prompt", "prompt": "TRL prompt", "labeled": "labeled, integer classes",
           "labeled_chat": "labeled chat, integer classes", "labeled_names": "labeled, class names",
           "labeled_names_chat": "labeled chat, class names", "sft_text": "supervised text",
           "sft_chat": "supervised chat (answer as the last turn)",
           "sft_chat_output": "supervised chat with output_text", "sft_prompt": "supervised TRL prompt"}

EXAMPLES = {
    "preference": '{"input_text": "...", "candidate_0": "...", "candidate_1": "...", "choice": 0}',
    "prompt": '{"input_text": "..."}',
    "eval": '{"input_text": "..."} (optionally with candidate_0/candidate_1/choice and "reference")',
    "labeled": '{"input_text": "...", "output_text": "...", "label": 1}',
    "sft": '{"input_text": "...", "output_text": "..."} or {"messages": [{"author": "user", "content": '
           '"..."}, {"author": "assistant", "content": "..."}]}',
}


def format_name(prompt_key: str, answer: Optional[str]) -> str:
    if answer is None:
        return {"input_text": "text", "messages": "chat", "prompt": "prompt"}[prompt_key]
    return FORMAT_NAMES.get((prompt_key, answer), f"{prompt_key}+{answer}")


def describe_format(name: str) -> str:
    """A human name with the fields that make the format, for error messages."""
    keys: list[str] = []
    prompt_key, _, answer = name.partition("+")
    for (p, a), n in FORMAT_NAMES.items():
        if n == name:
            prompt_key, answer = p, a
    prompt_key = {"text": "input_text", "chat": "messages"}.get(prompt_key, prompt_key)
    keys.append(prompt_key)
    keys.extend(LABEL_KEYS if answer.startswith("label") else SFT_KEYS.get(answer) or ANSWER_KEYS.get(answer, ()))
    title = _TITLES.get(name, name)
    return f"{title} ({', '.join(keys)})"


@dataclass
class ParsedRow:
    """The outcome of checking one user row."""

    format: Optional[str] = None  # None when the row's format could not be told
    rows: list = field(default_factory=list)  # canonical rows; empty when there are errors
    errors: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)
    choice: Optional[int] = None  # Google's `choice`, for the balance statistic
    label: Optional[str] = None  # a labeled row's class as text, for the label-balance statistic
    prompt: str = ""  # the prompt's text (instruction excluded), for the train/eval overlap check
    responses: list[str] = field(default_factory=list)  # distinct candidate texts, for length stats
    key: str = ""  # the row's content whatever its key order or spacing, for exact-duplicate checks


def describe_value(value: Any) -> str:
    """`a number (42)`, `the string "1"`, `a list`... for messages about wrong types."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _text(value: Any, label: str, expected: str, errors: list[str], *, present: bool = True) -> Optional[str]:
    """A required non-empty string, or None with the reason appended to `errors`."""
    want = f"expected {expected}"
    if not present:
        errors.append(f"missing field `{label}`; {want}")
    elif value is None:
        errors.append(f"`{label}` is null; {want}")
    elif not isinstance(value, str):
        errors.append(f"`{label}` is {describe_value(value)}; {want}")
    elif value == "":
        errors.append(f"`{label}` is empty; {want}")
    elif not value.strip():
        errors.append(f"`{label}` contains only whitespace; {want}")
    else:
        return value
    return None


def _field(obj: dict, key: str, expected: str, errors: list[str]) -> Optional[str]:
    return _text(obj.get(key), key, expected, errors, present=key in obj)


def _optional_text(obj: dict, key: str, expected: str, errors: list[str]) -> Optional[str]:
    """An optional string: absent or null means none; present must be a non-empty string."""
    if obj.get(key) is None:
        return None
    return _text(obj[key], key, expected, errors)


def _messages(value: Any, errors: list[str]) -> Optional[list[dict]]:
    """Google's chat turns -> canonical `{"role", "content"}` turns."""
    shape = '{"author": "user" | "assistant", "content": "..."}'
    if not isinstance(value, list):
        errors.append(f"`messages` is {describe_value(value)}; expected a list of {shape} turns")
        return None
    if not value:
        errors.append("`messages` is an empty list; expected at least one user turn")
        return None
    out: list[dict] = []
    before = len(errors)
    for i, turn in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            errors.append(f"`{where}` is {describe_value(turn)}; expected an object {shape}")
            continue
        key = "author" if "author" in turn or "role" not in turn else "role"
        author = turn.get(key)
        if author not in ("user", "assistant"):
            got = "missing" if key not in turn else f"{describe_value(author)}"
            errors.append(f"`{where}.{key}` is {got}; expected \"user\" or \"assistant\"")
        content = _text(turn.get("content"), f"{where}.content", "a non-empty string",
                        errors, present="content" in turn)
        out.append({"role": author, "content": content})
    if len(errors) > before:
        return None
    if out[0]["role"] != "user":
        errors.append("`messages[0]` is an assistant turn; expected the conversation to start with "
                      "a user turn")
    if out[-1]["role"] != "user":
        errors.append(f"the last turn `messages[{len(out) - 1}]` is an assistant turn; expected the "
                      "conversation to end with the user turn that the model answers")
    return None if len(errors) > before else out


def _prompt(obj: dict, errors: list[str]) -> tuple[Optional[str], Optional[list[dict]]]:
    """(prompt key, canonical messages); the key is None when no single prompt field is present."""
    present = [k for k in PROMPT_KEYS if k in obj]
    if not present:
        errors.append("missing the prompt; expected a field `input_text` (Google text), "
                      "`messages` (Google chat) or `prompt` (TRL)")
        return None, None
    if len(present) > 1:
        errors.append(f"has both {' and '.join(f'`{k}`' for k in present)}; expected exactly one "
                      "prompt field")
        return None, None
    key = present[0]
    if key == "messages":
        return key, _messages(obj[key], errors)
    text = _field(obj, key, "a non-empty string (the prompt)", errors)
    return key, None if text is None else [{"role": "user", "content": text}]


def _answer_form(obj: dict, kind: str, errors: list[str]) -> tuple[bool, Optional[str]]:
    """(ok, answer form or None when the row has no answer fields)."""
    if kind in ("labeled", "sft"):
        return True, None  # its answer is output_text (and label); pairs are unknown keys
    forms = [form for form, keys in ANSWER_KEYS.items() if any(k in obj for k in keys)]
    if len(forms) > 1:
        fields = " and ".join("/".join(ANSWER_KEYS[f]) for f in forms)
        errors.append(f"mixes the fields of two formats ({fields}); expected one of them")
        return False, None
    if not forms:
        if kind == "preference":
            errors.append("has no preference fields; expected `candidate_0`, `candidate_1` and "
                          "`choice` (Google), `chosen` and `rejected` (TRL), or `candidates` and "
                          "`ranking` (ranked feedback)")
            return False, None
        return True, None
    if kind == "prompt":
        return True, None  # a prompt dataset only reads the prompt; the rest is reported as unknown
    if kind == "eval" and forms[0] == "ranking":
        errors.append("has `candidates`/`ranking`, which eval data does not take; expected one pair "
                      "as `candidate_0`/`candidate_1`/`choice` or `chosen`/`rejected`")
        return False, None
    return True, forms[0]


def _choice(obj: dict, errors: list[str]) -> Optional[int]:
    expected = "the integer 0 (candidate_0 is preferred) or 1 (candidate_1 is preferred)"
    if "choice" not in obj:
        errors.append(f"missing field `choice`; expected {expected}")
        return None
    value = obj["choice"]
    if isinstance(value, bool):
        errors.append(f"`choice` is {describe_value(value)}; expected {expected}, "
                      f"not a boolean: write {int(value)}")
    elif isinstance(value, int) and value in (0, 1):
        return value
    elif isinstance(value, str) and value.strip() in ("0", "1"):
        errors.append(f"`choice` is {describe_value(value)}; expected {expected}, "
                      f"without quotes: write \"choice\": {value.strip()}")
    elif isinstance(value, float) and value in (0.0, 1.0):
        errors.append(f"`choice` is {describe_value(value)}; expected {expected}: write {int(value)}")
    else:
        errors.append(f"`choice` is {describe_value(value)}; expected {expected}")
    return None


def _same(a: str, b: str) -> bool:
    # Responses that differ only in surrounding whitespace carry no preference either.
    return a.strip() == b.strip()


def _pair(obj: dict, form: str, errors: list[str]) -> tuple[Optional[tuple[str, str]], Optional[int]]:
    """(chosen, rejected) from a `choice` or `chosen` row; None if invalid. Also returns the choice."""
    if form == "choice":
        c0 = _field(obj, "candidate_0", "a non-empty string (the first response)", errors)
        c1 = _field(obj, "candidate_1", "a non-empty string (the second response)", errors)
        choice = _choice(obj, errors)
        if c0 is not None and c1 is not None and _same(c0, c1):
            errors.append("`candidate_0` and `candidate_1` are identical; expected two different "
                          "responses to compare")
            return None, choice
        if c0 is None or c1 is None or choice is None:
            return None, choice
        return ((c0, c1) if choice == 0 else (c1, c0)), choice
    chosen = _field(obj, "chosen", "a non-empty string (the preferred response)", errors)
    rejected = _field(obj, "rejected", "a non-empty string (the other response)", errors)
    if chosen is not None and rejected is not None and _same(chosen, rejected):
        errors.append("`chosen` and `rejected` are identical; expected two different responses")
        return None, None
    if chosen is None or rejected is None:
        return None, None
    return (chosen, rejected), None


def _ranked(obj: dict, errors: list[str]) -> Optional[tuple[list[str], list[int]]]:
    """(candidates, ranking best->worst) or None."""
    before = len(errors)
    candidates = obj.get("candidates")
    texts: list[str] = []
    if "candidates" not in obj:
        errors.append("missing field `candidates`; expected a list of at least two response strings")
    elif not isinstance(candidates, list) or len(candidates) < 2:
        errors.append(f"`candidates` is {describe_value(candidates)}; expected a list of at least two "
                      "response strings")
    else:
        for i, c in enumerate(candidates):
            texts.append(_text(c, f"candidates[{i}]", "a non-empty string", errors))
        seen: dict[str, int] = {}
        for i, t in enumerate(texts):
            if t is None:
                continue
            j = seen.setdefault(t.strip(), i)
            if j != i:
                errors.append(f"`candidates[{j}]` and `candidates[{i}]` are identical; expected "
                              "different responses")
    ranking = obj.get("ranking")
    n = len(texts)
    expected = ("a list of candidate indices from best to worst, each index "
                f"0..{n - 1} exactly once" if n else "a list of candidate indices from best to worst")
    if "ranking" not in obj:
        errors.append(f"missing field `ranking`; expected {expected}")
    elif not isinstance(ranking, list):
        errors.append(f"`ranking` is {describe_value(ranking)}; expected {expected}")
    elif any(isinstance(r, bool) or not isinstance(r, int) for r in ranking):
        bad = next(r for r in ranking if isinstance(r, bool) or not isinstance(r, int))
        errors.append(f"`ranking` contains {describe_value(bad)}; expected {expected}")
    elif n:
        shown = json.dumps(ranking)
        if len(ranking) != n:
            errors.append(f"`ranking` {shown} has {len(ranking)} entries but there are {n} candidates; "
                          f"expected {expected}")
        else:
            out_of_range = sorted({r for r in ranking if not 0 <= r < n})
            repeated = sorted({r for r in ranking if ranking.count(r) > 1})
            missing = sorted(set(range(n)) - set(ranking))
            if out_of_range or repeated:
                why = []
                if out_of_range:
                    why.append(f"{', '.join(map(str, out_of_range))} not a candidate index")
                if repeated:
                    why.append(f"{', '.join(map(str, repeated))} repeated")
                if missing:
                    why.append(f"{', '.join(map(str, missing))} missing")
                errors.append(f"`ranking` {shown} is not a permutation of the candidate indices "
                              f"({'; '.join(why)}); expected {expected}")
    if len(errors) > before:
        return None
    return texts, ranking


def _label(obj: dict, errors: list[str]) -> tuple[Optional[str], object]:
    """(answer form, label): an integer class >= 0 or a class name; (None, None) if invalid."""
    expected = "an integer class (0, 1, ...) or a class name (a non-empty string)"
    if "label" not in obj:
        errors.append(f"missing field `label`; expected {expected}")
        return None, None
    value = obj["label"]
    if isinstance(value, bool):
        errors.append(f"`label` is {describe_value(value)}; expected {expected}, not a boolean: "
                      f"write {int(value)}")
    elif isinstance(value, int) and value >= 0:
        return "label_id", value
    elif isinstance(value, float) and value.is_integer() and value >= 0:
        errors.append(f"`label` is {describe_value(value)}; expected {expected}: write {int(value)}")
    elif isinstance(value, str) and value.strip():
        return "label_name", value.strip()
    else:
        errors.append(f"`label` is {describe_value(value)}; expected {expected}")
    return None, None


def _split_answer_turn(obj: dict) -> tuple[dict, Optional[tuple[int, Any]]]:
    """An sft row whose `messages` end with an assistant turn: (the row with that turn removed,
    (its index, the turn)); other rows unchanged with None. The rest of the conversation is then
    checked as any prompt is."""
    turns = obj.get("messages")
    if not isinstance(turns, list) or not turns or not isinstance(turns[-1], dict):
        return obj, None
    last = turns[-1]
    if last.get("author", last.get("role")) != "assistant":
        return obj, None
    return {**obj, "messages": turns[:-1]}, (len(turns) - 1, last)


def _sft_answer(obj: dict, answer_turn: Optional[tuple[int, Any]], errors: list[str]) -> tuple[Optional[str], Optional[str]]:
    """(answer form, response) of an sft row; (None, None) if invalid."""
    if answer_turn is not None:
        index, turn = answer_turn
        if "output_text" in obj:
            errors.append(f"has both `output_text` and an assistant turn at the end of `messages` "
                          f"(messages[{index}]); expected one answer: drop one of them")
            return None, None
        text = _text(turn.get("content"), f"messages[{index}].content", "a non-empty string (the answer)",
                     errors, present="content" in turn)
        return (None, None) if text is None else ("answer_turn", text)
    if "output_text" not in obj and isinstance(obj.get("messages"), list):
        errors.append("has no answer; expected the conversation to end with the assistant's answer "
                      "(an `assistant` turn), or a field `output_text`")
        return None, None
    text = _field(obj, "output_text", "a non-empty string (the answer to learn)", errors)
    return (None, None) if text is None else ("output", text)


@functools.lru_cache(maxsize=None)
def _known_keys(kind: str, answer: Optional[str]) -> frozenset:
    known = set(PROMPT_KEYS) | set(OPTIONAL_KEYS[kind])
    if kind == "labeled":
        known |= set(LABEL_KEYS)
    elif kind == "sft":
        known |= {"output_text"}
    elif answer is not None:
        known |= set(ANSWER_KEYS[answer])
    if kind == "prompt":
        # A preference file may serve as the prompt dataset: its answers are simply not needed.
        known |= {k for keys in ANSWER_KEYS.values() for k in keys}
    return frozenset(known)


def parse_row(kind: str, obj: Any, *, instruction: Optional[str] = None, source: str = "") -> ParsedRow:
    """Check one decoded JSON value as a row of a `kind` dataset and convert it.

    `instruction` is the run's default instruction; a row's own `instruction` overrides it.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}")
    out = ParsedRow()
    if not isinstance(obj, dict):
        out.errors.append(f"the line is {describe_value(obj)}, not a JSON object; expected one object "
                          f"per line like {EXAMPLES[kind]}")
        return out
    errors = out.errors
    answer_turn, original = None, obj
    if kind == "sft":
        obj, answer_turn = _split_answer_turn(obj)
    prompt_key, messages = _prompt(obj, errors)
    ok, answer = _answer_form(obj, kind, errors)
    response = label = None
    if kind == "labeled":
        response = _field(obj, "output_text", "a non-empty string (the response that is labeled)", errors)
        answer, label = _label(obj, errors)
        ok = answer is not None
    elif kind == "sft":
        answer, response = _sft_answer(obj, answer_turn, errors)
        ok = answer is not None
    if prompt_key is not None and ok:
        out.format = format_name(prompt_key, answer)

    known = _known_keys(kind, answer)
    out.unknown_keys = [k for k in obj if k not in known]

    # "" is how exports write "no instruction" (Google's own parameter defaults to it).
    row_instruction = (None if obj.get("instruction") == "" else
                       _optional_text(obj, "instruction", "a string (prepended to the prompt)", errors))
    instruction = row_instruction or instruction or None

    pair = None
    ranked = None
    if answer in ("choice", "chosen"):
        pair, out.choice = _pair(obj, answer, errors)
    elif answer == "ranking":
        ranked = _ranked(obj, errors)
    reference = _optional_text(obj, "reference", "a non-empty string (the reference answer)",
                               errors) if kind == "eval" else None

    if errors or messages is None:
        return out
    out.key = json.dumps(original, sort_keys=True, ensure_ascii=False)
    out.prompt = json.dumps(messages, ensure_ascii=False) if len(messages) > 1 else messages[0]["content"]
    if kind == "prompt":
        out.rows = [Prompt(messages=messages, source=source, instruction=instruction)]
    elif kind == "labeled":
        out.rows = [LabeledExample(messages=messages, response=response, label=label, source=source,
                                   instruction=instruction)]
        out.responses = [response]
        out.label = str(label)
    elif kind == "sft":
        out.rows = [SFTExample(messages=messages, response=response, source=source, instruction=instruction)]
        out.responses = [response]
    elif kind == "eval":
        chosen, rejected = pair if pair else (None, None)
        out.rows = [EvalExample(messages=messages, source=source, instruction=instruction,
                                chosen=chosen, rejected=rejected, reference=reference)]
        out.responses = list(pair) if pair else []
    elif ranked is not None:
        candidates, ranking = ranked
        order = [candidates[i] for i in ranking]
        out.rows = [PreferencePair(messages=messages, chosen=order[i], rejected=order[j],
                                   source=source, instruction=instruction)
                    for i in range(len(order)) for j in range(i + 1, len(order))]
        out.responses = candidates
    else:
        chosen, rejected = pair
        out.rows = [PreferencePair(messages=messages, chosen=chosen, rejected=rejected,
                                   source=source, instruction=instruction)]
        out.responses = [chosen, rejected]
    return out
