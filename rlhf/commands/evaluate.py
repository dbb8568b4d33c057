"""`rlhf evaluate`: compare a tuned model (an adapter or a model folder) with its base on any eval
dataset, and print the summary."""

from __future__ import annotations

import argparse

from rlhf.evaluate.config import EvalConfig

HELP = ("Evaluate a tuned model against its base on eval prompts: bulk inference, reward-model and "
        "judge win rates, KL, ROUGE-L, a reward-hacking alarm; writes report.html, summary.md, "
        "metrics.json and Google-style predictions")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    EvalConfig.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rlhf import launch
    from rlhf.evaluate.run import evaluate

    config = EvalConfig.from_args(args).validate()  # before importing torch: a typo costs nothing
    result = launch.run(evaluate, config)  # on --devices processes (default: every GPU)
    if not launch.reports():
        return 0
    print(result.summary)
    print(f"Report: {result.outputs.report_html}")
    return 0
