"""`python -m vlm_recipes SUBCOMMAND ...`: the same as `vlm-recipes SUBCOMMAND ...`."""

import sys

from vlm_recipes.cli.main import main

sys.exit(main())
