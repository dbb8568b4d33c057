"""Compile the RLHF pipeline: `python compile.py [--target vertex|kfp] [--output FILE]`.

The same as `rlhf compile`; see `rlhf compile --help`.
"""

import argparse
import sys

from rlhf.commands import compile as compile_command
from rlhf.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=compile_command.HELP)
    compile_command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return compile_command.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
