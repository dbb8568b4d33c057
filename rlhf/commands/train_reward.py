"""`rlhf train-reward`: train a pairwise reward model with LoRA (flags mirror RewardConfig)."""

from __future__ import annotations

import argparse
import json

HELP = ("Train a reward model on preference pairs (Bradley–Terry loss, LoRA) and write the adapter, "
        "score head, normalization statistics, metrics and TensorBoard logs. Rerun with the same "
        "--output-dir to resume from its last checkpoint. Runs on every visible GPU (--devices).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlhf.reward.config import RewardConfig
    RewardConfig.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rlhf import launch
    from rlhf.reward.config import RewardConfig
    from rlhf.reward.metrics import scalar_metrics
    from rlhf.reward.train import train_reward_model
    config = RewardConfig.from_args(args).validate()  # before torch and the model load
    result = launch.run(train_reward_model, config)  # on --devices processes (default: every GPU)
    if not launch.reports():
        return 0
    shown = {k: round(v, 4) for k, v in scalar_metrics(result.metrics).items()
             if k.split("/")[0] in ("heldout", "eval") or k.startswith("reward/normalization")}
    print(json.dumps({"output_dir": result.output_dir, "steps": result.steps,
                      "resumed_from": result.resumed_from, "metrics": shown}, indent=2))
    return 0
