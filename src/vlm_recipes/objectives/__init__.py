"""Training objectives: one module each, exposing its `Objective` subclass as `OBJECTIVE_CLASS`.

An objective says how a batch is built, what the loss is and which evaluator scores the result;
the training loop itself (`training.trainer`) is shared. Options are parsed once, by
`config.load_recipe`, into the dataclass its spec names (`config.OBJECTIVES[name].options`); the
spec also names the module (default: `vlm_recipes.objectives.<name>`).
"""

from __future__ import annotations

import importlib

from ..config import ObjectiveConfig, RecipeConfig, spec_of
from .base import Objective


def build_objective(recipe: RecipeConfig, processor, family, config: ObjectiveConfig | None = None) -> Objective:
    """An objective built for one run: `config` (a stage's own objective), else the recipe's. The
    name was checked when the recipe loaded."""
    config = config or recipe.objective
    module = importlib.import_module(spec_of(config.name).module or f"{__name__}.{config.name}")
    return module.OBJECTIVE_CLASS(recipe, processor, family, config)
