#!/usr/bin/env python
"""Alias of `vlm-recipes compare`: gather several runs' metrics.json into one leaderboard (markdown, CSV, bar chart).

    python scripts/compare_runs.py runs/sweep-20250101-120000             # = vlm-recipes compare runs/sweep-20250101-120000
    python scripts/compare_runs.py runs/r1 runs/r4 runs/mrl --out-dir runs/compare
"""

import sys

from vlm_recipes.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
