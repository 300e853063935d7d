"""End-to-end recipe runs on the shipped tiny base through the real CLI entry.

Each asserts learning on the synthetic nutrition-table task (fine-tuned mean IoU beats the
base by a margin), with budgets cut so the suite stays within minutes on 2 CPU cores. The full
default runs (README table) are `make demo` / `scripts/train_recipe.py --recipe NAME`.
"""

import json

import pytest

from vlm_recipes.cli.train import main
from vlm_recipes.models.loading import tiny_base_path
from vlm_recipes.families import get_family

pytestmark = pytest.mark.slow

SHORT = {  # recipe -> extra CLI args that shorten it
    "r2-vision-only": ["--set", "train.num_train_epochs=1"],
    "r4-joint": ["--set", "train.num_train_epochs=1"],
    "r3-two-stage": ["--set", "stages.0.train.num_train_epochs=1", "--set", "stages.1.train.num_train_epochs=0.5"],
}


def _run(tmp_path, recipe, extra):
    run_dir = tmp_path / recipe
    code = main(["--recipe", recipe, "--output-dir", str(run_dir), "--no-wandb", "--set", "data.num_train=400",
                 "--set", "data.num_test=48", *extra])
    assert code == 0
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(autouse=True)
def _needs_base():
    assert (tiny_base_path(get_family("qwen3_vl")) / "config.json").is_file(), "shipped tiny base missing"


@pytest.mark.parametrize("recipe", sorted(SHORT))
def test_recipe_learns_the_task(tmp_path, recipe):
    run_dir, metrics = _run(tmp_path, recipe, SHORT[recipe])
    base, tuned = metrics["base"], metrics["finetuned"]
    print(recipe, "base", base["mean_iou"], "fine-tuned", tuned["mean_iou"])
    assert tuned["mean_iou"] >= base["mean_iou"] + 0.15
    assert tuned["n"] == base["n"] == 48
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "complete"}
    for name in ("config.yaml", "run_info.json", "results.md", "loss.png", "predictions.png", "predictions.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "model" / "preprocessor_config.json").is_file()
