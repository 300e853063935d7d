"""`vlm-recipes report RUN_DIR...`: (re)write each run's report.html from its directory alone.

Every run writes it at its end; this rebuilds it (after a report change, or for a run copied from
elsewhere). Exit 2 with one line for a directory that holds no finished run.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .predict import OneLineParser, run_main


def build_parser() -> OneLineParser:
    p = OneLineParser(prog="vlm-recipes report", description="Write RUN_DIR/report.html: summary, failures, "
                      "curves and a worst-first gallery of the test predictions, self-contained (opens from disk).")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="finished run directories")
    return p


def _run(args) -> int:
    from ..evaluation.report import write_report

    for run_dir in args.runs:
        print(f"written: {write_report(run_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
