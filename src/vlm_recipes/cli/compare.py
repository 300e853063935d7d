"""`python scripts/compare_runs.py RUN_DIR... [--out-dir DIR]`: one leaderboard from several runs.

Prints the markdown tables and writes leaderboard.md, leaderboard.csv (detection),
leaderboard_retrieval.csv (mrl runs) and leaderboard.png. Exit 0 when every run is complete,
1 when some run is missing or unfinished (it is listed, not dropped), 2 on bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import InputError
from .predict import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="compare_runs.py", description="Gather the metrics.json of run directories "
                                "into one leaderboard (markdown, CSV, bar chart). A directory holding runs "
                                "(e.g. a sweep from run_recipes.sh) stands for every run in it.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or directories of runs")
    p.add_argument("--out-dir", type=Path, help="where the files go (default: the runs' common parent directory)")
    p.add_argument("--markdown", type=Path, help="markdown path (default OUT_DIR/leaderboard.md)")
    p.add_argument("--csv", type=Path, help="detection CSV path (default OUT_DIR/leaderboard.csv)")
    p.add_argument("--retrieval-csv", type=Path, help="retrieval CSV path (default OUT_DIR/leaderboard_retrieval.csv)")
    p.add_argument("--plot", type=Path, help="bar chart PNG path (default OUT_DIR/leaderboard.png)")
    p.add_argument("--html", nargs="?", const=True, metavar="PATH",
                   help="also write a self-contained HTML page (default OUT_DIR/compare.html): the leaderboard and "
                        "two runs compared image by image")
    p.add_argument("--pair", nargs=2, type=Path, metavar=("RUN_A", "RUN_B"),
                   help="the two runs the HTML page compares, refused unless they share their test set "
                        "(default: the first two complete runs given that do)")
    p.add_argument("--no-files", action="store_true", help="only print the tables")
    return p


def common_parent(paths: list[Path]) -> Path:
    parents = [str(p.resolve().parent) if _is_leaf_run(p) else str(p.resolve()) for p in paths]
    return Path(os.path.commonpath(parents))


def _is_leaf_run(path: Path) -> bool:
    return (path / "status.json").is_file() or (path / "metrics.json").is_file() or not path.is_dir()


def html_pair(args, paths: list[Path]) -> tuple[Path, Path] | None:
    """The two runs compare.html sets side by side: --pair (refused, InputError, when they do not
    share their test set), else the first two complete runs given that do; None if no two do."""
    from itertools import combinations

    from ..evaluation.compare_report import pair_data
    from ..evaluation.leaderboard import expand_run_dirs, read_run

    if args.pair:
        pair_data(*args.pair)
        return tuple(args.pair)
    complete = [p for p in expand_run_dirs(paths) if read_run(p).state == "complete"]
    for pair in combinations(complete, 2):
        try:
            pair_data(*pair)
        except InputError:  # another task or test set: try the next pair
            continue
        return pair
    return None


def main(argv: list[str] | None = None) -> int:
    from ..evaluation.leaderboard import Outputs, default_outputs, leaderboard_for, to_markdown, write_leaderboard

    try:
        args = build_parser().parse_args(argv)
        paths = [Path(p) for p in args.runs]
        file_args = [f for f in (args.markdown, args.csv, args.retrieval_csv, args.plot, args.html) if f is not None]
        if args.no_files and file_args:
            raise InputError("--no-files with an output path: drop one of them")
        board = leaderboard_for(paths)
        pair = html_pair(args, paths) if args.html else None  # refused before any file is written
        print(to_markdown(board), end="")
        if not args.no_files:
            out = default_outputs(args.out_dir or common_parent(paths))
            outputs = Outputs(args.markdown or out.markdown, args.csv or out.csv,
                              args.retrieval_csv or out.retrieval_csv, args.plot or out.plot)
            try:
                written = write_leaderboard(board, outputs)
            except OSError as err:  # a read-only directory, or a path under a file
                raise InputError(f"could not write the leaderboard ({err.strerror or err}: {err.filename}): "
                                 "pass a writable --out-dir, or --no-files") from None
            if args.html:
                from ..evaluation.compare_report import write_compare

                written.append(write_compare(out.markdown.with_name("compare.html") if args.html is True
                                             else Path(args.html), to_markdown(board), pair))
            print("\nwritten: " + ", ".join(str(p) for p in written))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if board.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
