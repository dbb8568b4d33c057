"""`rlhf validate`: check the datasets line by line and print their statistics.

Exit status: 0 when every given dataset is valid (the statistics on stdout, warnings on stderr),
2 when any is invalid or missing, or none is given (each problem as `URI:LINE: message` on stderr).
"""

from __future__ import annotations

import sys

from rlhf.data import summary
from rlhf.data.validate import ValidateConfig, run_validation

HELP = ("check the preference/prompt/eval datasets line by line, print statistics and write them "
        "in the canonical format")


def add_arguments(parser) -> None:
    ValidateConfig.add_arguments(parser)


def run(args) -> int:
    config = ValidateConfig.from_args(args)
    report = run_validation(config)
    if not report.ok:
        for line in report.problems.lines() + report.warnings.lines():
            print(line, file=sys.stderr)
        print(f"{report.problems.count} problem(s): the datasets are not valid", file=sys.stderr)
        return 2
    for line in report.warnings.lines():
        print(line, file=sys.stderr)
    print(summary.markdown(report.stats), end="")
    if report.outputs is not None:
        print(f"\nCanonical datasets, stats.json and summaries written to {config.output_dir}")
    return 0
