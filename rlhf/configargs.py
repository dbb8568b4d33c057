"""Turn a step's config dataclass into command-line flags and back, so the CLI, the KFP component
and the tests share one documented object.

Each field's help text is `field(metadata={"help": "..."})`. Field `reward_model_train_steps`
becomes flag `--reward-model-train-steps`; bools become `--flag/--no-flag`.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Type, TypeVar

from rlhf.errors import UserError

T = TypeVar("T")


def _base_type(annotation: Any) -> Any:
    """`Optional[int]` -> int, `list[str]` -> list; strings from `from __future__ import annotations` resolved."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return list
    return annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: Type[Any]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kind = _base_type(hints[f.name])
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        elif kind is list:
            item = typing.get_args(hints[f.name]) or (str,)
            item_type = _base_type(item[0])
            parser.add_argument(flag, dest=f.name, nargs="+", type=item_type, default=default,
                                required=required, help=f"{help_text} (default: {default})")
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, required=required,
                                help=f"{help_text} (default: {default})")


def dataclass_from_args(cls: Type[T], args: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def dataclass_from_loose_dict(cls: Type[T], values: dict, what: str) -> T:
    """Build `cls` from loosely typed values (a KFP `dict` parameter turns 32 into 32.0); unknown
    names and values of the wrong type are UserErrors naming the `what` setting."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"unknown {what} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    out = {}
    for name, value in values.items():
        kind = hints[name]
        if typing.get_origin(kind) is typing.Union:  # Optional[X] -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if value is None or typing.get_origin(kind) is list:
            out[name] = list(value) if isinstance(value, (list, tuple)) else value
        elif kind is int and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            out[name] = value
        else:
            raise UserError(f"{what} setting {name} is {value!r}; expected {getattr(kind, '__name__', kind)}")
    return cls(**out)
