"""`rlhf tune`: PPO-tune a LoRA policy against a trained reward model (flags mirror PPOConfig)."""

from __future__ import annotations

import argparse
import json

HELP = ("Tune the policy with PPO against a trained reward model (KL-penalized against the frozen "
        "base, one copy of the base weights) and write the policy adapter, metrics, TensorBoard logs "
        "and sample generations. Rerun with the same --output-dir to resume from its last checkpoint. "
        "Runs on every visible GPU (--devices).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlhf.ppo.config import PPOConfig
    PPOConfig.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rlhf.ppo.config import PPOConfig
    config = PPOConfig.from_args(args).validate()  # before torch and the model load
    from rlhf import launch
    from rlhf.ppo.run import tune
    summary = launch.run(tune, config)  # on --devices processes (default: every GPU)
    if not launch.reports():
        return 0
    shown = {k: round(v, 4) for k, v in summary.items() if not k.startswith(("time/", "perf/"))}
    print(json.dumps({"output_dir": config.output_dir, "metrics": shown}, indent=2, sort_keys=True))
    return 0
