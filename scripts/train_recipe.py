#!/usr/bin/env python
"""Alias of `vlm-recipes train`: train and evaluate one recipe.

    python scripts/train_recipe.py --recipe r4-joint --gpu 0,1    # = vlm-recipes train --recipe r4-joint --gpu 0,1
    python scripts/train_recipe.py --list                         # = vlm-recipes list
"""

import sys

from vlm_recipes.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
