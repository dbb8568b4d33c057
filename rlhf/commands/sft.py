"""`rlhf sft`: supervised fine-tuning of a LoRA adapter, merged into the base (flags mirror SFTConfig)."""

from __future__ import annotations

import argparse
import json

HELP = ("Supervised fine-tuning on demonstrations (input_text/output_text or chat messages ending with the "
        "answer), or on the preferred candidates of preference data: a LoRA adapter, loss on the answer "
        "tokens only, merged into the base (OUTPUT_DIR/merged_model: pass it as --large-model-reference to "
        "the later steps). Rerun with the same --output-dir to resume. Runs on every visible GPU (--devices).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rlhf.sft.config import SFTConfig
    SFTConfig.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from rlhf import launch
    from rlhf.sft.config import SFTConfig
    from rlhf.sft.run import merged_model_dir, train_sft
    config = SFTConfig.from_args(args).validate()  # before torch and the model load
    summary = launch.run(train_sft, config)  # on --devices processes (default: every GPU)
    if not launch.reports():
        return 0
    shown = {k: round(v, 4) for k, v in summary.items() if k.split("/")[0] in ("loss", "heldout")}
    out = {"output_dir": config.output_dir, "metrics": shown}
    if config.save_merged_model:
        out["merged_model"] = merged_model_dir(config.output_dir)
    print(json.dumps(out, indent=2))
    return 0
