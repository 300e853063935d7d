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
from ..evaluation.plots import plot_loss
from ..models.distributed import barrier, is_main_process
from ..models.loading import apply_stage, load_model, open_base, trainable_report
from ..objectives import build_objective
from .trainer import train_stage


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    """What metrics.json holds."""
    summary: str
    """The printable markdown summary (the top of results.md)."""


def run_recipe(recipe: RecipeConfig, run_dir: Path, device: str = "cpu", report_to: tuple[str, ...] = ("tensorboard",),
               command: str = "") -> RunResult:
    """Train and evaluate `recipe`, writing `run_dir`. Under a launcher (torchrun, accelerate) every
    process runs this, data parallel; only the main process writes `run_dir` (DECISIONS D20)."""
    set_seed(recipe.seed)
    # Everything that can fail on bad input is checked before the run directory is made.
    base = open_base(recipe.model)
    recipe = with_pixel_budget(recipe, base.processor)
    objective = build_objective(recipe, base.processor, base.family)
    data = objective.load_data()

    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_status(run_dir, "running")
    try:
        result = _train_and_evaluate(recipe, objective, data, base, run_dir, device, list(report_to), command)
    except BaseException as err:
        if is_main_process():
            write_status(run_dir, "failed", f"{type(err).__name__}: {err}")
        raise
    if is_main_process():
        write_status(run_dir, "complete")
    return result


def with_pixel_budget(recipe: RecipeConfig, processor) -> RecipeConfig:
    """The recipe with the pixel budget the processor really uses, saved with the run so that
    evaluation and inference resize images exactly as training did."""
    size = processor.image_processor.size
    return dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]))


def _train_and_evaluate(recipe, objective, data, base, run_dir, device, report_to, command) -> RunResult:
    if is_main_process():
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
                          bf16=model.dtype == torch.bfloat16, use_cpu=device == "cpu", report_to=report_to)
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
    if is_main_process():
        write_json(run_dir / "metrics.json", metrics)
        write_json(run_dir / "predictions.json", {"base": base_eval.predictions, "finetuned": final_eval.predictions})
        write_json(run_dir / "train_log.json", history)
        plot_loss(history, run_dir / "loss.png", title=recipe.name)
        evaluator.write_report(run_dir, metrics, base_eval, final_eval, data["test"])
        log_evaluation(run_dir, metrics, report_to)
    return RunResult(run_dir, metrics, evaluator.summary(metrics, final_eval))


def load_for_stage(path, recipe: RecipeConfig, stage: StageConfig, objective, device):
    model = load_model(str(path), recipe.model, stage.quantization, device)
    return objective.prepare_model(model)


def save_stage_output(model, processor, stage: StageConfig, path: Path, merge: bool):
    """Save weights (LoRA adapter, or full model) and processor. A stage that feeds another is
    saved merged, as a plain checkpoint the next stage loads like any base. Every process merges
    (each goes on with its copy); the main process writes, and the others wait until it has, since
    the next stage loads from `path`."""
    if merge and stage.lora.targets != "none":
        model = model.merge_and_unload()
    if is_main_process():
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        processor.save_pretrained(path)
    barrier()
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


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """{"t2i": {"128": {"recall@1": x}}} -> {"t2i/128/recall@1": x}; numbers only."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


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
