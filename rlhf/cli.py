"""The `rlhf` command. Each subcommand lives in `rlhf/commands/<name>.py` and defines
`HELP`, `add_arguments(parser)` and `run(args) -> int`.

Exit codes: 0 success, 2 a user mistake (printed without a traceback), 1 an internal error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rlhf import __version__
from rlhf.errors import UserError, exit_code

# subcommand name -> module under rlhf.commands; imported lazily so `rlhf validate` never loads torch.
COMMANDS = {
    "validate": "validate",
    "compile": "compile",
    "run-local": "run_local",
    "prepare-model": "prepare_model",
    "train-reward": "train_reward",
    "tune": "tune",
    "dpo": "dpo",
    "sft": "sft",
    "evaluate": "evaluate",
    "submit": "submit",
    "plan": "plan",
    "label": "label",
}


def _load(name: str):
    return importlib.import_module(f"rlhf.commands.{COMMANDS[name]}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf",
        description="RLHF on Kubeflow Pipelines and Vertex AI: validate data, train a reward model, "
                    "tune with PPO, evaluate.")
    parser.add_argument("--version", action="version", version=f"rlhf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen subcommand's module is imported; the others are listed by name.
    chosen = next((a for a in argv if a in COMMANDS), None)
    for name in COMMANDS:
        try:
            module = _load(name) if (chosen is None or name == chosen) else None
        except ModuleNotFoundError as e:
            if e.name != f"rlhf.commands.{COMMANDS[name]}":
                raise
            continue  # subcommand not built yet
        p = sub.add_parser(name, help=getattr(module, "HELP", None),
                           description=getattr(module, "HELP", None))
        if module is not None:
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
