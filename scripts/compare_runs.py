#!/usr/bin/env python
"""Gather several runs' metrics.json into one leaderboard (markdown, CSV, bar chart).

    python scripts/compare_runs.py runs/sweep-20250101-120000
    python scripts/compare_runs.py runs/r1 runs/r4 runs/mrl --out-dir runs/compare
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs without `pip install -e .` too

from vlm_recipes.cli.compare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
