#!/usr/bin/env python
"""Alias of `vlm-recipes benchmark`: training, evaluation and encoding speed, side by side in one process.

    python scripts/benchmark.py --recipes r1-llm-only --steps 32 --repeats 3 --out benchmark.json
    python scripts/benchmark.py --smoke --out /tmp/benchmark.json   # seconds: checks that it works
"""

import sys

from vlm_recipes.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
