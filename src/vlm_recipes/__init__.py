"""vlm-recipes: recipe-driven fine-tuning of Qwen vision-language models.

The public API (imported on first use, so `import vlm_recipes.config` stays light):

    from vlm_recipes import load_recipe, run_recipe, open_base, evaluate, predict, export
    recipe = load_recipe("r4-joint", ["train.max_steps=10"])
    result = run_recipe(recipe, Path("runs/demo"))           # RunResult(run_dir, metrics, summary)
    rows = predict("runs/demo/model", ["photo.jpg"])          # one dict per image: box, label, ...
"""

import importlib
import logging

__version__ = "0.1.0"

# bitsandbytes tries to fetch an optional CPU inference kernel from the Hugging Face hub at
# import and warns when it can't (always, offline). We never use that kernel: 4-bit CPU
# repacking is switched off (models/loading.py), so the warning is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

_PUBLIC = {
    "load_recipe": "vlm_recipes.config",
    "RecipeConfig": "vlm_recipes.config",
    "InputError": "vlm_recipes.config",
    "open_base": "vlm_recipes.models.loading",
    "run_recipe": "vlm_recipes.training.run",
    "RunResult": "vlm_recipes.training.run",
    "evaluate": "vlm_recipes.api",
    "predict": "vlm_recipes.api",
    "export": "vlm_recipes.api",
    "open_trained": "vlm_recipes.api",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vlm_recipes' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
