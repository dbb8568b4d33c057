"""Settings: how each step's config dataclass declares, checks and reads its fields.

A field is declared once, with `setting(default, help, check)`: its default, its help text (which
becomes the `--flag`'s help and the pipeline's documentation) and its check. A config class derives
from `Settings`, which gives every config the same `problems()` / `validate()` pair, the same message
format, and the same ways in: command-line flags (`add_arguments` / `from_args`) and loosely typed
dicts (`from_dict`, for a KFP `dict` parameter that turns 32 into 32.0).

Settings that several steps share (sequence lengths, the instruction, the seed, the device, the number
of devices) are declared once below and used by each step's config, so their defaults cannot drift apart.

Strings use "" for "not given" everywhere (None from an unset optional pipeline parameter becomes "").
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Optional, Type, TypeVar

from rlhf.errors import UserError

T = TypeVar("T", bound="Settings")

# A check takes a value and returns what is wrong with it, or None.
Check = Callable[[Any], Optional[str]]


def setting(default: Any = dataclasses.MISSING, help: str = "", check: Optional[Check] = None, *,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A config field with its help text and check (a `dataclasses.field`)."""
    metadata = {"help": help, "check": check}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# -- checks ------------------------------------------------------------------------------------------

def at_least(low: float) -> Check:
    def check(value):
        return None if value >= low else f"must be {low} or more"
    return check


def positive(value) -> Optional[str]:
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value >= 1 else "must be a positive integer"
    return None if value > 0 else "must be positive"


non_negative = at_least(0)


def within(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    """A value in an interval: `within(0, 1, high_open=True)` is [0, 1)."""
    text = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value):
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"must be in {text}"
    return check


def one_of(*choices: str) -> Check:
    def check(value):
        return None if value in choices else f"use one of {', '.join(choices)}"
    return check


def given(what: str) -> Check:
    """A required input (a dataset, a model, an output directory): `what` says what to give. Code that
    is handed its inputs another way (a trainer built in memory) validates with `inputs=False`."""
    def check(value):
        return None if value and str(value).strip() else f"is required: give {what}"
    check.is_input = True
    return check


def all_of(*checks: Check) -> Check:
    """Several checks on one field, reported first-failing-first."""
    def check(value):
        return next((why for part in checks if (why := part(value))), None)
    check.parts = checks
    return check


def not_empty(value) -> Optional[str]:
    return None if value else "give at least one"


# -- settings several steps share ------------------------------------------------------------------
# Google's rlhf_pipeline names and defaults (prompt_sequence_length 512, target_sequence_length 64).

def prompt_sequence_length() -> Any:
    return setting(512, "maximum prompt tokens; longer prompts keep their last tokens (the end of a "
                        "conversation matters most)", positive)


def target_sequence_length() -> Any:
    return setting(64, "maximum response tokens (generated, or kept of a dataset's responses, EOS "
                       "included)", positive)


def instruction() -> Any:
    return setting("", "instruction prepended to every prompt, as Google's `instruction` parameter "
                       "(a row's own instruction wins); empty for none")


def seed() -> Any:
    return setting(0, "random seed: initialization, data order, held-out split and sampling")


def device() -> Any:
    return setting("", "cpu, cuda or cuda:N; empty: $RLHF_DEVICE, else CUDA when present, else CPU")


def devices() -> Any:
    return setting(None, "processes per machine that run this step, one per GPU (data parallel, started by "
                         "rlhf.launch; on several machines, CLUSTER_SPEC or PET_* give the rest); empty: "
                         "every visible GPU, 1 on CPU or with a device named; on CPU, N gloo processes. Not "
                         "part of the resume fingerprint: a restart may use another count", positive)


def shard_base() -> Any:
    return setting(False, "shard the frozen base over this machine's devices (FSDP2) even when the memory plan "
                          "says it fits one; it is sharded anyway when it does not fit. The LoRA adapters and "
                          "heads stay whole on every device. Not part of the resume fingerprint")


def dtype() -> Any:
    return setting("auto", "base weights: auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32; "
                           "adapters train in fp32", one_of("auto", "bf16", "fp16", "fp32"))


# The training steps refuse fp16 (evaluation, inference only, takes it): their configs' cross-checks
# and the model builders raise this.
FP16_REFUSED = ("fp16 is refused for training: without loss scaling (not implemented here), fp16's "
                "5-bit exponent overflows into NaN losses or underflows into lost gradients; use bf16 "
                "(the same memory, fp32's range) or fp32 (on a GPU without bf16, e.g. V100 or T4)")


def use_chat_template() -> Any:
    return setting(None, "render prompts with the tokenizer's chat template (default: when it has one)")


# -- the base class --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    name: str    # the field
    value: Any
    why: str


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class Settings:
    """Base of every step's config dataclass."""

    STEP: ClassVar[str] = "step"  # what the messages call this config's settings ("PPO", "reward")

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None and base_type(hints[f.name]) is str:
                setattr(self, f.name, "")  # an unset optional pipeline parameter arrives as None
            elif base_type(hints[f.name]) is list:
                setattr(self, f.name, list(getattr(self, f.name) or []))

    def cross_checks(self) -> Iterable[Problem]:
        """Rules between fields; a config overrides this."""
        return ()

    def problems(self, inputs: bool = True) -> list[Problem]:
        """Every setting that cannot work, field by field, then between fields; `inputs=False` leaves
        out the required-input checks."""
        found = []
        for f in dataclasses.fields(self):
            check, value = f.metadata.get("check"), getattr(self, f.name)
            if check is None or value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                found.append(Problem(f.name, value, "must be a finite number"))
                continue
            parts = [c for c in getattr(check, "parts", (check,)) if inputs or not getattr(c, "is_input", False)]
            why = next((why for part in parts if (why := part(value))), None)
            if why:
                found.append(Problem(f.name, value, why))
        if not found:  # cross-field rules assume each field is sane
            found.extend(self.cross_checks())
        return found

    def validate(self: T, name: Callable[[str], str] = flag, inputs: bool = True) -> T:
        """Raise one UserError listing every problem as `NAME VALUE: why`; `name` turns a field into
        what the user wrote (a flag by default; a pipeline parameter when submitting)."""
        found = self.problems(inputs)
        if found:
            raise UserError(problem_text(found, name))
        return self

    @classmethod
    def from_dict(cls: Type[T], values: dict, what: str = "") -> T:
        """Build from loosely typed values; unknown names and wrong types are UserErrors naming `what`."""
        return cls(**loose_values(cls, values, what or cls.STEP))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One flag per field: `reward_model_train_steps` -> `--reward-model-train-steps`; bools get
        `--flag/--no-flag`; lists take several values."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            help_text = f.metadata.get("help", "")
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            default = None if required else (
                f.default if f.default is not dataclasses.MISSING else f.default_factory())
            kind = base_type(hints[f.name])
            if kind is bool:
                parser.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                    default=default, help=help_text)
                continue
            shown = f"{help_text} (default: {default!r})" if default not in ("", None, []) else help_text
            if kind is list:
                item = base_type((typing.get_args(hints[f.name]) or (str,))[0])
                parser.add_argument(flag(f.name), dest=f.name, nargs="+", type=item, default=default,
                                    required=required, help=shown)
            else:
                parser.add_argument(flag(f.name), dest=f.name, type=kind, default=default,
                                    required=required, help=shown)

    @classmethod
    def from_args(cls: Type[T], args: argparse.Namespace) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each field's default (fields without one are left out)."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
        return out


def problem_text(found: Iterable[Problem], name: Callable[[str], str] = flag) -> str:
    lines = [f"{name(p.name)} {p.value!r}: {p.why}" for p in found]
    return lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n" + "\n".join(f"  {x}" for x in lines)


def base_type(annotation: Any) -> Any:
    """`Optional[int]` -> int, `list[str]` -> list."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        return base_type(next(a for a in typing.get_args(annotation) if a is not type(None)))
    if origin in (list, tuple):
        return list
    return annotation


def loose_values(cls: type, values: dict, what: str) -> dict[str, Any]:
    """`values` converted to `cls`'s field types where that loses nothing (32.0 -> 32 for an int);
    unknown names and values of the wrong type are UserErrors naming the `what` setting."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown {what} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    out = {}
    for name, value in values.items():
        kind = base_type(hints[name])
        if value is None or kind is list:
            out[name] = list(value) if isinstance(value, (list, tuple)) else value
        elif kind is int and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            out[name] = value
        else:
            raise UserError(f"{what} setting {name} is {value!r}; expected {getattr(kind, '__name__', kind)}")
    return out
