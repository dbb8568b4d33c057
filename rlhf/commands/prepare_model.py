"""`rlhf prepare-model [REF]`: resolve a model reference, cache it, print its local directory."""

from __future__ import annotations

import argparse

HELP = ("Resolve a model reference (alias, directory, gs:// URI or Hugging Face id), build or "
        "download it into the cache, and print its local directory. With no REF, prepares the "
        "offline default smollm2-135m-instruct.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ref", nargs="?", default=None,
                        help="model reference (default: smollm2-135m-instruct)")
    parser.add_argument("--list-aliases", action="store_true", help="print the aliases and exit")


def run(args: argparse.Namespace) -> int:
    from rlhf import models
    if args.list_aliases:
        for alias, target in sorted(models.ALIASES.items()):
            note = ("  (encoder-decoder: refused, the trainers tune decoder-only models)"
                    if alias in models.ENCODER_DECODER_ALIASES else "")
            print(f"{alias}\t{'(embedded, offline)' if alias == target else target}{note}")
        return 0
    print(models.resolve_model(args.ref))
    return 0
