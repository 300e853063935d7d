import dataclasses

import pytest

from vlm_recipes.config import RecipeConfig, available_recipes, load_recipe
from vlm_recipes.errors import InputError

SHIPPED = sorted(available_recipes())


def test_the_four_detection_recipes_ship():
    assert {"r1-llm-only", "r2-vision-only", "r3-two-stage", "r4-joint"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_parses(name):
    recipe = load_recipe(name)
    assert isinstance(recipe, RecipeConfig)
    assert recipe.name == name and recipe.description
    assert recipe.stages


def test_recipe_semantics():
    r1, r2, r3, r4 = (load_recipe(n) for n in ("r1-llm-only", "r2-vision-only", "r3-two-stage", "r4-joint"))
    assert r1.stages[0].quantization.load_in_4bit and r1.stages[0].lora.targets == "llm"
    assert r2.stages[0].lora.targets == "none" and not r2.stages[0].freeze.vision and r2.stages[0].freeze.llm
    assert [s.name for s in r3.stages] == ["vision-full", "llm-lora"]
    assert r3.stages[1].lora.targets == "llm" and not r3.stages[0].quantization.load_in_4bit
    assert r4.stages[0].quantization.load_in_4bit and r4.stages[0].lora.targets == "both"


def test_overrides_reach_every_stage_or_one():
    recipe = load_recipe("r3-two-stage", ["train.learning_rate=1e-5", "stages.1.lora.r=4", "seed=7"])
    assert [s.train.learning_rate for s in recipe.stages] == [1e-5, 1e-5]
    assert recipe.stages[1].lora.r == 4 and recipe.seed == 7


def test_configs_are_frozen():
    recipe = load_recipe("r4-joint")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.seed = 3


@pytest.mark.parametrize("override, message", [
    (["train.learnin_rate=1"], "unknown key 'stages.0.train.learnin_rate'"),
    (["lora.targets=everything"], "stages.0.lora.targets='everything': must be one of"),
    (["lora.r=0"], "lora.r=0"),
    (["train.learning_rate=fast"], "expected float"),
    (["stages.5.lora.r=4"], "stages.5 is not a valid index"),
    (["bogus"], "expected key=value"),
    (["model.min_pixels=10", "model.max_pixels=5"], "min_pixels"),
    (["objective.name=magic"], "unknown objective.name 'magic'"),
    (["objective.options.loss_on=nothing"], "objective.options.loss_on='nothing'"),
])
def test_bad_values_fail_at_load_naming_the_key(override, message):
    with pytest.raises(InputError, match=None) as err:
        load_recipe("r4-joint", override)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(InputError) as err:
        load_recipe("r9-magic")
    assert "r4-joint" in str(err.value) and "r1-llm-only" in str(err.value)


def test_4bit_without_lora_is_rejected():
    with pytest.raises(InputError, match="4-bit weights cannot be trained directly"):
        load_recipe("r2-vision-only", ["quantization.load_in_4bit=true"])
