"""The shipped recipes (`recipes/*.yaml`) and `load_recipe`: a name or a path, plus `--set`
overrides, parsed strictly into a `RecipeConfig`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..errors import InputError
from . import loading
from .loading import from_dict, read_yaml_mapping
from .schema import RecipeConfig, StageConfig

RECIPE_DIR = Path(__file__).parents[1] / "recipes"
STAGE_KEYS = {f.name for f in dataclasses.fields(StageConfig)} - {"name", "objective"}
"""Keys `--set` applies to every stage when given without `stages.N.` (`objective.*` is the
recipe's; a stage's own is set as stages.N.objective...)."""


def available_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def describe_recipes() -> str:
    """The shipped recipes, one line each: name and description (`vlm-recipes list`)."""
    # the description alone (each recipe is validated when it loads, and by the tests): no transformers import
    return "\n".join(f"{name:16s} {read_yaml_mapping(path).get('description', '')}"
                     for name, path in available_recipes().items())


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> RecipeConfig:
    """Parse a shipped recipe name or a YAML path, apply `key=value` overrides, validate."""
    path = Path(name_or_path)
    if path.is_dir() and name_or_path not in available_recipes():  # a shipped name wins over a folder here
        raise InputError(f"recipe {path} is a directory: pass a recipe .yaml file in it, or a name from --list")
    if not path.suffix:
        recipes = available_recipes()
        if name_or_path not in recipes:
            raise InputError(f"unknown recipe {name_or_path!r}: choose one of {', '.join(recipes)} "
                             "(or pass a path to a recipe .yaml)")
        path = recipes[name_or_path]
    if not path.is_file():
        raise InputError(f"recipe file {path} does not exist")
    raw = read_yaml_mapping(path)
    for item in overrides:
        apply_override(raw, item)
    try:
        return from_dict(RecipeConfig, raw, "")
    except InputError as err:
        raise InputError(f"{err}{stage_option_hint(raw, str(err))}") from None


def stage_option_hint(raw: dict, message: str) -> str:
    """An unknown `objective.options.KEY` that is an option of a stage's own objective (r5's GRPO
    stage): say where it goes, since the error lists only the recipe objective's keys."""
    import re

    from .options import OBJECTIVES

    found = re.match(r"unknown key 'objective\.options\.(\w+)'", message)
    stages = raw.get("stages") if isinstance(raw.get("stages"), list) else []
    for index, stage in enumerate(stages):
        own = stage.get("objective") if isinstance(stage, dict) else None
        name = own.get("name") if isinstance(own, dict) else None
        if found and name in OBJECTIVES and found.group(1) in {f.name for f in dataclasses.fields(OBJECTIVES[name].options)}:
            return (f"; {found.group(1)} is an option of stage {index}'s {name} objective: "
                    f"--set stages.{index}.objective.options.{found.group(1)}=...")
    return ""


def apply_override(raw: dict, item: str) -> None:
    """`a.b.c=value` sets raw[a][b][c]; a stage key without `stages.N.` applies to every stage."""
    loading.apply_override(raw, item, STAGE_KEYS)


def load_saved_recipe(path: Path, fix: str = "repair it from the recipe it was trained with") -> RecipeConfig:
    """A run's config.yaml (or an export's recipe.yaml): the recipe as it was trained. Any problem
    with it is one line naming the file."""
    try:
        return load_recipe(str(path))
    except InputError as err:
        message = str(err)
        raise InputError(message if str(path) in message else f"{path}: {message}: {fix}") from None
