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


def test_a_new_objective_is_one_spec_and_one_module(tmp_path, monkeypatch, capsys):
    """tests/toy_objective.py (the module) + one OBJECTIVES entry (the spec): the recipe loads, checks
    its options and metric, and a run trains and evaluates with it."""
    import json

    from toy_objective import SmoothedOptions
    from vlm_recipes.cli.train import main as train_main
    from vlm_recipes.config import OBJECTIVES, ObjectiveSpec
    from vlm_recipes.config.options import ANSWER_METRICS

    monkeypatch.setitem(OBJECTIVES, "smoothed-sft", ObjectiveSpec(SmoothedOptions, ANSWER_METRICS, "mean_iou",
                                                                  module="toy_objective"))
    toy = ["objective.name=smoothed-sft", "objective.options.label_smoothing=0.2"]
    recipe = load_recipe("r4-joint", toy)
    assert recipe.objective.options == SmoothedOptions(label_smoothing=0.2)
    assert recipe.metric_for_best(recipe.stages[0].train) == "mean_iou"
    with pytest.raises(InputError, match="objective.options.label_smoothing=1.5"):
        load_recipe("r4-joint", [toy[0], "objective.options.label_smoothing=1.5"])
    with pytest.raises(InputError, match="'t2i.recall@1' is not a metric of objective 'smoothed-sft'"):
        load_recipe("r4-joint", [toy[0], "train.metric_for_best=t2i.recall@1"])

    run_dir = tmp_path / "run"
    argv = ["--recipe", "r4-joint", "--max-steps", "1", "--no-wandb", "--output-dir", str(run_dir)]
    for item in [*toy, "data.num_train=4", "data.num_test=2", "data.num_val=0", "eval.max_new_tokens=8",
                 "train.per_device_train_batch_size=2"]:
        argv += ["--set", item]
    assert train_main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["objective"] == "smoothed-sft" and metrics["stages"][0]["objective"] == "smoothed-sft"
    losses = [e["loss"] for e in json.loads((run_dir / "train_log.json").read_text()) if "loss" in e]
    assert losses and all(0 < loss < 100 for loss in losses)
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "complete"}
