#!/usr/bin/env python
"""Embed images/texts with a trained mrl model and search them with a text query.

    python scripts/encode.py --model runs/mrl/model --images gallery/ --out emb/ \
        --query "two red circles on the left and a blue star on the right" --top-k 5 --dim 32
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs without `pip install -e .` too

from vlm_recipes.cli.encode import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
