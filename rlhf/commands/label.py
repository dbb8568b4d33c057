"""`rlhf label`: AI-feedback preference data (flags mirror rlhf.label.LabelConfig)."""

from __future__ import annotations

import argparse
import json

HELP = ("Sample --candidates responses per prompt from the model and rank them with a judge (the bundled "
        "constitution judge, or --judge module:function); write ranked preference JSONL that `rlhf "
        "validate` and `rlhf train-reward` read.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlhf.label import LabelConfig
    LabelConfig.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rlhf.label import LabelConfig, label
    config = LabelConfig.from_args(args).validate()  # before torch and the model load
    stats = label(config)
    print(json.dumps({"output": config.output, **stats.to_dict()}, indent=2))
    return 0
