#!/usr/bin/env python
"""Train and evaluate one recipe.

    python scripts/train_recipe.py --recipe r4-joint --gpu 0,1
    python scripts/train_recipe.py --list
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs without `pip install -e .` too

from vlm_recipes.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
