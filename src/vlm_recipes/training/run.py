"""One recipe run, top to bottom: open the base, build the objective, load data, evaluate the
base, train each stage, evaluate the result, write the run directory.

Run directory (complete only when status.json says "complete"):
  config.yaml         resolved recipe, as trained
  run_info.json       command line, seed, device, library versions
  status.json         running | failed (with the error) | complete
  model/              final adapter or weights + processor (+ stages/<n>-<name>/ for earlier stages)
  trainer/<stage>/    Trainer output; TensorBoard logs under runs/ (evaluation scalars under evaluation/)
  metrics.json, predictions.json, train_log.json, results.md, loss.png, and the evaluator's plots
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import set_seed

from ..config import RecipeConfig, StageConfig, to_dict
from ..errors import InputError
from ..evaluation.plots import plot_loss, plot_validation
from ..evaluation.result import flatten
from ..models.loading import apply_stage, load_model, open_base, trainable_report
from ..objectives import build_objective
from .trainer import Validation, train_stage


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    """What metrics.json holds."""
    summary: str
    """The printable markdown summary (the top of results.md)."""


def run_recipe(recipe: RecipeConfig, run_dir: Path, device: str = "cpu", report_to: tuple[str, ...] = ("tensorboard",),
               command: str = "") -> RunResult:
    """Train and evaluate `recipe`, writing `run_dir`."""
    set_seed(recipe.seed)
    # Everything that can fail on bad input is checked before the run directory is made.
    base = open_base(recipe.model)
    recipe = with_pixel_budget(recipe, base.processor)
    objective = build_objective(recipe, base.processor, base.family)
    data = objective.load_data()
    check_validation_split(recipe, data["val"])

    run_dir.mkdir(parents=True, exist_ok=True)
    write_status(run_dir, "running")
    try:
        result = _train_and_evaluate(recipe, objective, data, base, run_dir, device, list(report_to), command)
    except BaseException as err:
        write_status(run_dir, "failed", f"{type(err).__name__}: {err}")
        raise
    write_status(run_dir, "complete")
    return result


def with_pixel_budget(recipe: RecipeConfig, processor) -> RecipeConfig:
    """The recipe with the pixel budget the processor really uses, saved with the run so that
    evaluation and inference resize images exactly as training did."""
    size = processor.image_processor.size
    return dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]))


def _train_and_evaluate(recipe, objective, data, base, run_dir, device, report_to, command) -> RunResult:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    write_json(run_dir / "run_info.json", run_info(recipe, device, command, base.family.name, base.path))
    evaluator = objective.evaluator()

    model = load_for_stage(base.path, recipe, recipe.stages[0], objective, device)
    base_eval = evaluator.evaluate(model, data["test"], desc="base model")
    stages_info, history, source = [], [], base.path
    start = time.time()
    for index, stage in enumerate(recipe.stages):
        if index > 0:
            model = load_for_stage(source, recipe, stage, objective, device)
        model = apply_stage(model, stage)
        report = trainable_report(model)
        stage_start = time.time()
        log = train_stage(model, stage, objective, data["train"], run_dir / "trainer" / stage.name, recipe.seed,
                          bf16=model.dtype == torch.bfloat16, use_cpu=device == "cpu", report_to=report_to,
                          validation=validation_for(recipe, stage, evaluator, data["val"]))
        history += [dict(entry, stage=stage.name) for entry in log]
        last = index == len(recipe.stages) - 1
        source = run_dir / "model" if last else run_dir / "stages" / f"{index + 1}-{stage.name}"
        model = save_stage_output(model, base.processor, stage, source, merge=not last)
        stages_info.append({"name": stage.name, "train_seconds": round(time.time() - stage_start, 1),
                            "trainable_params": report.trainable_params, "trainable": report.trainable,
                            "quantized": report.quantized, "lora_modules": len(report.lora_modules),
                            "output": str(source.relative_to(run_dir))})
    train_seconds = time.time() - start

    final_eval = evaluator.evaluate(model, data["test"], desc="fine-tuned model")
    metrics = {"recipe": recipe.name, **objective.summary(model), "objective": objective.name,
               "family": base.family.name, "base_model": base.path,
               "base": base_eval.metrics, "finetuned": final_eval.metrics,
               "train_seconds": round(train_seconds, 1),
               "trainable_params": max(s["trainable_params"] for s in stages_info), "stages": stages_info}
    write_json(run_dir / "predictions.json", {"base": base_eval.predictions, "finetuned": final_eval.predictions})
    write_json(run_dir / "train_log.json", history)
    plot_loss(history, run_dir / "loss.png", title=recipe.name)
    write_validation(run_dir, recipe, history, metrics)
    write_json(run_dir / "metrics.json", metrics)
    evaluator.write_report(run_dir, metrics, base_eval, final_eval, data["test"])
    log_evaluation(run_dir, metrics, report_to)
    return RunResult(run_dir, metrics, evaluator.summary(metrics, final_eval))


def validation_for(recipe: RecipeConfig, stage: StageConfig, evaluator, samples: list) -> Validation | None:
    """How the stage is validated while it trains; None when there is no validation split
    (data.num_val=0, or a training split under 10 rows)."""
    return Validation(evaluator, samples, recipe.metric_for_best(stage.train)) if samples else None


def check_validation_split(recipe: RecipeConfig, samples: list) -> None:
    """A stage that keeps its best checkpoint or stops early needs validation rows to exist."""
    needs = [s.name for s in recipe.stages if s.train.load_best_at_end or s.train.early_stopping_patience]
    if needs and not samples:
        raise InputError(f"stage {needs[0]!r}: load_best_at_end / early_stopping_patience need a validation "
                         "split, but data.num_val carved none (at most a tenth of the training rows is "
                         "carved): use more training rows")


def write_validation(run_dir: Path, recipe: RecipeConfig, history: list[dict], metrics: dict) -> None:
    """eval_history.json, val_curve.png and metrics.json's "best": the validated step that scored
    highest in the last stage (with load_best_at_end, the model that was tested)."""
    rows = validation_rows(history)
    if not rows:
        return
    write_json(run_dir / "eval_history.json", rows)
    last = recipe.stages[-1]
    metric = recipe.metric_for_best(last.train)
    best = max((r for r in rows if r["stage"] == last.name), key=lambda r: r["metrics"][metric])
    metrics["best"] = {"stage": best["stage"], "step": best["step"], "metric": metric,
                       "value": best["metrics"][metric]}
    plot_validation(rows, metrics["best"], run_dir / "val_curve.png", title=recipe.name)


def validation_rows(history: list[dict]) -> list[dict]:
    """(stage, step, metrics) for every evaluation Trainer logged (keys "eval_*", prefix dropped)."""
    return [{"stage": entry["stage"], "step": entry["step"],
             "metrics": {key[len("eval_"):]: value for key, value in entry.items() if key.startswith("eval_")}}
            for entry in history if any(key.startswith("eval_") for key in entry)]


def load_for_stage(path, recipe: RecipeConfig, stage: StageConfig, objective, device):
    model = load_model(str(path), recipe.model, stage.quantization, device)
    return objective.prepare_model(model)


def save_stage_output(model, processor, stage: StageConfig, path: Path, merge: bool):
    """Save weights (LoRA adapter, or full model) and processor. A stage that feeds another is
    saved merged, as a plain checkpoint the next stage loads like any base."""
    path.mkdir(parents=True, exist_ok=True)
    if merge and stage.lora.targets != "none":
        model = model.merge_and_unload()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model


def log_evaluation(run_dir: Path, metrics: dict, report_to: list[str]) -> None:
    """Base and fine-tuned metrics as scalars next to the training curves (TensorBoard, W&B)."""
    scalars = {f"eval/{name}/{key}": value for name in ("base", "finetuned")
               for key, value in flatten(metrics[name]).items()}
    if "tensorboard" in report_to:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(run_dir / "trainer" / "evaluation")) as writer:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, 0)
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:  # the Trainer's run, still open after training
            wandb.run.summary.update(scalars)


def run_info(recipe: RecipeConfig, device: str, command: str, family: str, base_path: str) -> dict:
    import peft
    import transformers

    return {"recipe": recipe.name, "command": command or " ".join(sys.argv), "seed": recipe.seed,
            "device": device, "family": family, "base_model": base_path, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_status(run_dir: Path, state: str, error: str | None = None) -> None:
    write_json(run_dir / "status.json", {"state": state, **({"error": error} if error else {})})


def write_json(path: Path, data) -> None:
    """Written whole or not at all (a temporary file, then rename): a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
