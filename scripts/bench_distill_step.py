#!/usr/bin/env python
"""Time a distilled mrl training step (cached teacher) against a plain one, interleaved in one process.

    OMP_NUM_THREADS=1 python scripts/bench_distill_step.py --teacher runs/mrl-.../model [--steps 10]

Both steps run the student's forward and backward on the same batch of `mrl-distill` (32 queries,
32 positives, 32 hard negatives, the shipped tiny base); the distilled one adds the cached teacher
rows' distillation term. Prints the median seconds of each and their ratio (DECISIONS D25).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    from vlm_recipes.config import load_recipe
    from vlm_recipes.data.retrieval import SyntheticRetrieval
    from vlm_recipes.models.loading import apply_stage, load_model, open_base
    from vlm_recipes.models.teacher import WithTeacher
    from vlm_recipes.objectives import build_objective

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="a finished mrl run or its model/")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    args = parser.parse_args(argv)
    recipe = load_recipe("mrl-distill", [f"objective.options.teacher={args.teacher}"])
    base = open_base(recipe.model)
    objective = build_objective(recipe, base.processor, base.family)
    objective.prepare_run("cpu")
    model = apply_stage(load_model(base.path, recipe.model, recipe.stages[0].quantization, "cpu"), recipe.stages[0])
    model.train()
    k, size = recipe.objective.options.num_hard_negatives, recipe.stages[0].train.per_device_train_batch_size
    data = SyntheticRetrieval(size, "train", recipe.seed, k)
    samples = [data[i] for i in range(size)]
    objective.teacher_cache.fill(objective.teacher, samples, k, "cpu")
    objective.teacher.release()
    taught = WithTeacher(objective.collate, objective.teacher_cache, k)(samples)
    plain = {key: value for key, value in taught.items() if not key.startswith("teacher_")}

    def step(batch) -> float:
        start = time.perf_counter()
        objective.compute_loss(model, batch).backward()
        model.zero_grad()
        return time.perf_counter() - start

    step(plain), step(taught)  # warm-up
    times = {"plain": [], "distilled": []}
    for _ in range(args.steps):
        times["plain"].append(step(plain))
        times["distilled"].append(step(taught))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"median step: plain {medians['plain']:.3f} s, distilled (cached teacher) {medians['distilled']:.3f} s, "
          f"ratio {medians['distilled'] / medians['plain']:.3f} ({args.steps} steps each, interleaved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
