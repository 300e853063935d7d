#!/usr/bin/env python
"""What validation adds to a default recipe run, from its measured unit costs (DECISIONS D21).

    PYTHONPATH=src python scripts/eval_share.py --recipe r4-joint --rounds 2

Times training steps and validation generation of the recipe's own model alternately, back to
back in one process (so that a busy machine slows both alike), then prices a default run:
  train   = steps x seconds/step
  tests   = 2 x num_test x seconds/image        (base and final evaluation)
  val     = evaluations x num_val x seconds/image (every eval_steps, and at the stage's end)
and prints val / (train + tests). The step count is the default recipe's (its epochs over the rows
left after carving the validation split, or its max_steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
from pathlib import Path

from vlm_recipes.config import load_recipe
from vlm_recipes.models.loading import apply_stage, open_base
from vlm_recipes.objectives import build_objective
from vlm_recipes.training.steps import load_for_stage, with_pixel_budget
from vlm_recipes.training.trainer import train_stage


def unit_costs(recipe_name: str, rounds: int, steps: int, images: int) -> tuple[float, float]:
    """(seconds per training step, seconds per validation image), alternating `rounds` times."""
    recipe = load_recipe(recipe_name, [f"data.num_train={10 * images}", "data.num_test=1", f"data.num_val={images}"])
    base = open_base(recipe.model)
    recipe = with_pixel_budget(recipe, base.processor)
    objective = build_objective(recipe, base.processor, base.family)
    data, evaluator = objective.load_data(), objective.evaluator()
    stage = recipe.stages[0]
    short = dataclasses.replace(stage, train=dataclasses.replace(stage.train, max_steps=steps, logging_steps=steps))
    model = apply_stage(load_for_stage(base.path, recipe, stage, objective, "cpu"), stage)
    step_s, image_s = [], []
    for _ in range(rounds):
        start = time.time()
        with tempfile.TemporaryDirectory() as out:
            train_stage(model, short, objective, data["train"], Path(out), 0, False, True, [])
        step_s.append((time.time() - start) / steps)
        start = time.time()
        evaluator.evaluate(model, data["val"], desc="validation")
        image_s.append((time.time() - start) / len(data["val"]))
    print("seconds/step", [round(s, 3) for s in step_s], "seconds/image", [round(s, 3) for s in image_s])
    return sum(step_s) / rounds, sum(image_s) / rounds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="r4-joint")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--images", type=int, default=16)
    args = p.parse_args()
    step, image = unit_costs(args.recipe, args.rounds, args.steps, args.images)
    recipe = load_recipe(args.recipe)
    data, train = recipe.data, recipe.stages[0].train
    rows = data.num_train - min(data.num_val, data.num_train // 10)
    epochs = math.ceil(rows / train.per_device_train_batch_size) * train.num_train_epochs
    steps = train.max_steps if train.max_steps > 0 else epochs
    evaluations = math.ceil(steps / train.eval_steps)
    train_s, tests_s = steps * step, 2 * data.num_test * image
    val_s = evaluations * min(data.num_val, data.num_train // 10) * image
    print(f"{args.recipe}: {steps:.0f} steps x {step:.3f} s = {train_s:.0f} s; tests {tests_s:.0f} s; validation "
          f"{evaluations} x {data.num_val} images = {val_s:.0f} s -> +{100 * val_s / (train_s + tests_s):.1f}%")


if __name__ == "__main__":
    main()
