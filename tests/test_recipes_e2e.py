"""End-to-end recipe runs on the shipped tiny base through the real CLI entry.

Each asserts learning on the synthetic nutrition-table task (fine-tuned mean IoU beats the
base by a margin), with budgets cut so the suite stays within minutes on 2 CPU cores. The full
default runs (README table) are `make demo` / `scripts/train_recipe.py --recipe NAME`.
"""

import json

import pytest

from vlm_recipes.cli.train import main
from vlm_recipes.families import get_family
from vlm_recipes.models.loading import tiny_base_path

pytestmark = pytest.mark.slow

SHORT = {  # recipe -> extra CLI args that shorten it
    "r2-vision-only": ["--set", "train.num_train_epochs=1"],
    "r4-joint": ["--set", "train.num_train_epochs=2"],
    "r3-two-stage": ["--set", "stages.0.train.num_train_epochs=1", "--set", "stages.1.train.num_train_epochs=0.5"],
}


def _run(tmp_path, recipe, extra):
    run_dir = tmp_path / recipe
    # validation off: these budgets were calibrated on all 400 rows (validation is tested in test_validation.py)
    code = main(["--recipe", recipe, "--output-dir", str(run_dir), "--no-wandb", "--set", "data.num_train=400",
                 "--set", "data.num_test=48", "--set", "data.num_val=0", *extra])
    assert code == 0
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(autouse=True)
def _needs_base():
    assert (tiny_base_path(get_family("qwen3_vl")) / "config.json").is_file(), "shipped tiny base missing"


# Measured on the shipped base with these budgets (400 train images): r4 (100 steps) loss
# 0.671 -> 0.544 and mean IoU 0.303 -> 0.500 (the full recipe reaches 0.667). The base already
# answers in the task's format and words, so the loss starts low and mostly the box tokens are
# left to learn. r2 (50 steps: loss 0.700 -> 0.600, 0.358 -> 0.262: the vision features move
# before the boxes improve; the full 1,600 steps reach 0.624) and r3 (50 + 25 steps: loss
# 0.700 -> 0.578, 0.358 -> 0.360) are asserted on the falling loss and on every answer still
# parsing; only r4's short run is long enough to assert the IoU gain (DECISIONS D14, D17).
# The asserts sit below those figures, not at the targets.
LOSS_FALLS_BY = {"r2-vision-only": 0.1, "r3-two-stage": 0.12, "r4-joint": 0.12}
# r4 re-measured on this session's machine: base 0.355 (its 4-bit CPU kernels score the base higher
# than the 0.303 measured earlier), fine-tuned 0.505 (was 0.500): +0.150, so the bound sits at 0.12.
IOU_GAIN = {"r4-joint": 0.12}


@pytest.mark.parametrize("recipe", sorted(SHORT))
def test_recipe_learns_the_task(tmp_path, recipe):
    run_dir, metrics = _run(tmp_path, recipe, SHORT[recipe])
    base, tuned = metrics["base"], metrics["finetuned"]
    losses = [e["loss"] for e in json.loads((run_dir / "train_log.json").read_text()) if "loss" in e]
    print(recipe, "base", base["mean_iou"], "fine-tuned", tuned["mean_iou"], "parsed", tuned["detection_rate"],
          "loss", losses[0], "->", losses[-1])
    assert losses[-1] <= (1 - LOSS_FALLS_BY[recipe]) * losses[0]
    if recipe in IOU_GAIN:
        assert tuned["mean_iou"] >= base["mean_iou"] + IOU_GAIN[recipe]
    assert tuned["detection_rate"] >= 0.9  # answers in the family's box format (all 48 parsed)
    assert tuned["n"] == base["n"] == 48
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "complete"}
    for name in ("config.yaml", "run_info.json", "results.md", "loss.png", "predictions.png", "predictions.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "model" / "processor_config.json").is_file()  # the processor travels with the weights
