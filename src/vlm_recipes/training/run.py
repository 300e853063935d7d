"""One recipe run, top to bottom: load data and base, evaluate base, train each stage,
evaluate the result, write the run directory.

Run directory (complete only when status.json says "complete"):
  config.yaml         resolved recipe, as trained
  run_info.json       command line, seed, device, library versions
  status.json         running | failed (with the error) | complete
  model/              final adapter or weights + processor (+ stages/<n>-<name>/ for earlier stages)
  trainer/<stage>/    Trainer output; TensorBoard logs under runs/
  metrics.json, predictions.json, results.md, loss.png, and the objective's plots
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import set_seed

from ..config import RecipeConfig, StageConfig, to_dict
from ..errors import InputError
from ..models.loading import (apply_stage, load_model, load_processor, model_family, resolve_model_path,
                              trainable_report)
from ..objectives import get_objective
from .trainer import train_stage


def run_recipe(recipe: RecipeConfig, run_dir: Path, device: str = "cpu", report_to: tuple[str, ...] = ("tensorboard",),
               command: str = "") -> dict:
    """Train and evaluate `recipe`; returns the metrics written to metrics.json."""
    objective = get_objective(recipe.objective.name)
    set_seed(recipe.seed)
    # Everything that can fail on bad input is checked before the run directory is made.
    data = objective.load_data(recipe)
    base_path = resolve_model_path(recipe.model)
    processor = load_processor(base_path, recipe.model)
    family = model_family(base_path, recipe.model)
    _check_stages(recipe)
    # save the pixel budget actually used, so evaluation and inference can reuse it
    size = processor.image_processor.size
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]))

    run_dir.mkdir(parents=True, exist_ok=True)
    _write_status(run_dir, "running")
    try:
        metrics = _train_and_evaluate(recipe, objective, data, base_path, processor, family, run_dir, device,
                                      list(report_to), command)
    except BaseException as err:
        _write_status(run_dir, "failed", f"{type(err).__name__}: {err}")
        raise
    _write_status(run_dir, "complete")
    return metrics


def _train_and_evaluate(recipe, objective, data, base_path, processor, family, run_dir, device, report_to, command):
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    _write_json(run_dir / "run_info.json", run_info(recipe, device, command, family.name, base_path))

    model = _load_for_stage(base_path, recipe, recipe.stages[0], objective, processor, device)
    base_eval = objective.evaluate(model, processor, family, recipe, data["test"], desc="base model")

    collator = objective.make_collator(processor, family, recipe)
    stages_info, history, source = [], [], base_path
    start = time.time()
    for index, stage in enumerate(recipe.stages):
        if index > 0:
            model = _load_for_stage(source, recipe, stage, objective, processor, device)
        model = apply_stage(model, stage)
        report = trainable_report(model)
        stage_start = time.time()
        log = train_stage(model, stage, objective, collator, data["train"], run_dir / "trainer" / stage.name,
                          recipe.seed, bf16=model.dtype == torch.bfloat16, use_cpu=device == "cpu",
                          report_to=report_to)
        history += [dict(entry, stage=stage.name) for entry in log]
        last = index == len(recipe.stages) - 1
        source = run_dir / "model" if last else run_dir / "stages" / f"{index + 1}-{stage.name}"
        model = save_stage_output(model, processor, stage, source, merge=not last)
        stages_info.append({"name": stage.name, "train_seconds": round(time.time() - stage_start, 1),
                            "trainable_params": report.trainable_params, "trainable": report.trainable,
                            "quantized": report.quantized, "lora_modules": len(report.lora_modules),
                            "output": str(source.relative_to(run_dir))})
    train_seconds = time.time() - start

    final_eval = objective.evaluate(model, processor, family, recipe, data["test"], desc="fine-tuned model")
    metrics = {"recipe": recipe.name, **objective.summary(model, recipe), "objective": objective.name,
               "family": family.name, "base_model": base_path,
               "base": base_eval["metrics"], "finetuned": final_eval["metrics"],
               "train_seconds": round(train_seconds, 1),
               "trainable_params": max(s["trainable_params"] for s in stages_info), "stages": stages_info}
    _write_json(run_dir / "metrics.json", metrics)
    _write_json(run_dir / "predictions.json", {"base": base_eval["predictions"],
                                               "finetuned": final_eval["predictions"]})
    _write_json(run_dir / "train_log.json", history)
    from ..evaluation.plots import plot_loss

    plot_loss(history, run_dir / "loss.png", title=recipe.name)
    objective.report(run_dir, metrics, base_eval, final_eval, data["test"])
    return metrics


def _load_for_stage(path, recipe: RecipeConfig, stage: StageConfig, objective, processor, device):
    model = load_model(str(path), recipe.model, stage.quantization, device)
    return objective.prepare_model(model, processor, recipe)


def _check_stages(recipe: RecipeConfig) -> None:
    for stage in recipe.stages[:-1]:
        if stage.quantization.load_in_4bit:
            raise InputError(f"stage {stage.name!r} feeds a later stage, so it cannot be 4-bit (a LoRA merged "
                             "into 4-bit weights is lost); set its quantization.load_in_4bit=false")


def save_stage_output(model, processor, stage: StageConfig, path: Path, merge: bool):
    """Save weights (LoRA adapter, or full model) and processor. A stage that feeds another is
    saved merged, as a plain checkpoint the next stage loads like any base."""
    path.mkdir(parents=True, exist_ok=True)
    if merge and stage.lora.targets != "none":
        model = model.merge_and_unload()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model


def run_info(recipe: RecipeConfig, device: str, command: str, family: str, base_path: str) -> dict:
    import peft
    import transformers

    return {"recipe": recipe.name, "command": command or " ".join(sys.argv), "seed": recipe.seed,
            "device": device, "family": family, "base_model": base_path, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _write_status(run_dir: Path, state: str, error: str | None = None) -> None:
    _write_json(run_dir / "status.json", {"state": state, **({"error": error} if error else {})})


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
