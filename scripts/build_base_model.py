#!/usr/bin/env python
"""Alias of `vlm-recipes build-base`: build and pretrain the tiny base model(s) shipped in src/vlm_recipes/assets/.

    python scripts/build_base_model.py                        # = vlm-recipes build-base (~20 min on 2 CPU cores)
    python scripts/build_base_model.py --family qwen2-vl      # = vlm-recipes build-base --family qwen2-vl
    python scripts/build_base_model.py --family all
"""

import sys

from vlm_recipes.cli.build_base import main

if __name__ == "__main__":
    sys.exit(main())
