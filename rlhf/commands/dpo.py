"""`rlhf dpo`: tune a LoRA policy directly on preference pairs (flags mirror DPOConfig)."""

from __future__ import annotations

import argparse
import json

HELP = ("Tune a LoRA policy with DPO on preference pairs (no reward model): the reference is the base "
        "with the adapter disabled. Writes the policy adapter (as `rlhf tune` does), metrics, samples "
        "and TensorBoard logs. Rerun with the same --output-dir to resume. Runs on every visible GPU "
        "(--devices).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlhf.dpo.config import DPOConfig
    DPOConfig.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rlhf import launch
    from rlhf.dpo.config import DPOConfig
    from rlhf.dpo.run import train_dpo
    config = DPOConfig.from_args(args).validate()  # before torch and the model load
    summary = launch.run(train_dpo, config)  # on --devices processes (default: every GPU)
    if not launch.reports():
        return 0
    shown = {k: round(v, 4) for k, v in summary.items()
             if k.split("/")[0] in ("loss", "reward", "policy", "heldout")}
    print(json.dumps({"output_dir": config.output_dir, "metrics": shown}, indent=2))
    return 0
