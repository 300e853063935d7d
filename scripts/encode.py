#!/usr/bin/env python
"""Alias of `vlm-recipes encode`: embed images/texts with a trained mrl model and search them with a text query.

    python scripts/encode.py --model runs/mrl/model --images gallery/ --out emb/ \
        --query "two red circles on the left and a blue star on the right" --top-k 5 --dim 32
    # = vlm-recipes encode --model runs/mrl/model --images gallery/ --out emb/ --query "..." --top-k 5 --dim 32
"""

import sys

from vlm_recipes.cli.encode import main

if __name__ == "__main__":
    sys.exit(main())
