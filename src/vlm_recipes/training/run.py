"""One recipe run, top to bottom: open the base, build the objective, load data, evaluate the
base, train each stage, evaluate the result, write the run directory.

Run directory (complete only when status.json says "complete"):
  config.yaml         resolved recipe, as trained
  run_info.json       command line, seed, device, library versions
  status.json         running | failed (error, step) | interrupted (stage, step) | complete
  run.lock            pid and host of the process writing it, while it runs (one writer per run directory)
  base_eval.json      the base model's evaluation (and on the shifted split, if any), kept so that
                      --resume does not repeat it
  progress.json       the stages finished so far, with their test evaluations (--resume repeats none)
  model/              final adapter or weights + processor (+ stages/<n>-<name>/ for earlier stages)
  trainer/<stage>/    Trainer output; TensorBoard logs under runs/ (evaluation scalars under evaluation/)
  metrics.json, predictions.json, train_log.json, results.md, loss.png, and the evaluator's plots
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import set_seed

from ..config import InputError, RecipeConfig, StageConfig, to_dict
from ..evaluation.plots import plot_loss, plot_rewards, plot_validation
from ..evaluation.result import EvalResult, flatten
from ..models.distributed import barrier, is_main_process, whole_state_dict
from ..models.loading import apply_stage, load_model, open_base, trainable_report
from ..objectives import build_objective
from .checkpoints import disk_full_fails, seed_stage
from .preemption import Interrupted, send_test_signal
from .trainer import Validation, train_stage

LOCK_FILE, BASE_EVAL_FILE, PROGRESS_FILE = "run.lock", "base_eval.json", "progress.json"


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    """What metrics.json holds."""
    summary: str
    """The printable markdown summary (the top of results.md)."""


def run_recipe(recipe: RecipeConfig, run_dir: Path, device: str = "cpu", report_to: tuple[str, ...] = ("tensorboard",),
               command: str = "", resume: bool = False) -> RunResult:
    """Train and evaluate `recipe`, writing `run_dir`. `resume`: continue the run already in `run_dir`
    (its finished base evaluation and stages are kept, an unfinished stage goes on from its latest
    checkpoint). The caller holds the directory's lock (`acquire_lock`). Under a launcher (torchrun,
    accelerate) every process runs this, data parallel; only the main process writes `run_dir`
    (DECISIONS D20)."""
    set_seed(recipe.seed)
    # Everything that can fail on bad input is checked before the run directory is made.
    base = open_base(recipe.model)
    recipe = with_pixel_budget(recipe, base.processor)
    objective = build_objective(recipe, base.processor, base.family)
    data = objective.load_data()
    check_validation_split(recipe, data["val"])
    objective.prepare_run(device)

    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, recipe)  # issue 31: before the status, so that a run killed from here on can resume
    write_status(run_dir, "running")
    try:
        result = _train_and_evaluate(recipe, objective, data, base, run_dir, device, list(report_to), command, resume)
    except Interrupted as err:
        write_status(run_dir, "interrupted", stage=err.stage, step=err.step)
        raise
    except BaseException as err:
        write_status(run_dir, "failed", f"{type(err).__name__}: {err}", step=getattr(err, "step", None))
        raise
    write_status(run_dir, "complete")
    return result


def with_pixel_budget(recipe: RecipeConfig, processor) -> RecipeConfig:
    """The recipe with the pixel budget the processor really uses, saved with the run so that
    evaluation and inference resize images exactly as training did."""
    size = processor.image_processor.size
    return dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]))


def _train_and_evaluate(recipe, objective, data, base, run_dir, device, report_to, command, resume) -> RunResult:
    write_json(run_dir / "run_info.json", run_info(recipe, device, command, base.family.name, base.path, run_dir, resume))
    evaluator = objective.evaluator()

    model, (base_eval, base_shifted) = None, read_base_eval(run_dir / BASE_EVAL_FILE) if resume else (None, None)
    if base_eval is None:
        model = load_for_stage(base.path, recipe, recipe.stages[0], objective, device)
        with phase("base evaluation"):
            base_eval, base_shifted = evaluate_test_splits(evaluator, model, data, "base model")
        write_json(run_dir / BASE_EVAL_FILE, {**dataclasses.asdict(base_eval), "shifted": base_shifted})
    with phase("reference evaluation"):
        references = objective.reference_rows(data["test"], device)  # mrl distillation: teacher, untaught
    finished = read_json(run_dir / PROGRESS_FILE, []) if resume else []
    stages_info, source = [], base.path
    start = time.time()
    for index, stage in enumerate(recipe.stages):
        last = index == len(recipe.stages) - 1
        output = run_dir / "model" if last else run_dir / "stages" / f"{index + 1}-{stage.name}"
        if index < len(finished) and not last:  # done before an interruption: never repeated
            stages_info.append(finished[index])
            source = output
            continue
        trainer_objective = objective if stage.objective is None else build_objective(
            recipe, base.processor, base.family, stage.objective)
        # issue 31: the stage's init and data order are a function of (seed, index) only, never of
        # how much random state an earlier (maybe interrupted) stage used (training/checkpoints.py)
        seed = seed_stage(recipe.seed, index)
        # the last stage, even when finished, is re-entered: its final checkpoint gives its model back
        if index > 0 or model is None:
            model = load_for_stage(source, recipe, stage, trainer_objective, device)
        model, info = _train_one_stage(model, recipe, stage, trainer_objective, evaluator, data, base, run_dir,
                                       output, device, report_to, resume, merge=not last, seed=seed)
        if not last:  # each stage's output on the test split: one evaluation each (the last one's is below)
            with phase(f"evaluation of stage {stage.name}"):
                result, info["shifted"] = evaluate_test_splits(evaluator, model, data, f"stage {stage.name}")
                info["test"] = result.metrics
        stages_info.append(info)
        write_json(run_dir / PROGRESS_FILE, stages_info)
        source = output
    train_seconds = time.time() - start
    history = [dict(entry, stage=info["name"]) for info in stages_info for entry in info["log"]]

    with phase("final evaluation"):
        final_eval, final_shifted = evaluate_test_splits(evaluator, model, data, "fine-tuned model")
        stages_info[-1].update(test=final_eval.metrics, shifted=final_shifted)
    by_stage = {info["name"]: info["test"] for info in stages_info}
    shifted = {"base": base_shifted, **{info["name"]: info["shifted"] for info in stages_info}}
    stages_info = [{k: v for k, v in info.items() if k not in ("log", "test", "shifted")} for info in stages_info]
    metrics = {"recipe": recipe.name, **objective.summary(model), "objective": objective.name,
               "family": base.family.name, "base_model": base.path,
               "base": base_eval.metrics, **references, "finetuned": final_eval.metrics, "by_stage": by_stage,
               **({"shifted": shifted} if "shifted" in data else {}),
               "train_seconds": round(train_seconds, 1),
               "trainable_params": max(s["trainable_params"] for s in stages_info), "stages": stages_info}
    write_json(run_dir / "predictions.json", {"base": base_eval.predictions, "finetuned": final_eval.predictions})
    write_json(run_dir / "train_log.json", history)
    write_validation(run_dir, recipe, history, metrics)  # adds metrics["best"]
    write_json(run_dir / "metrics.json", metrics)
    if is_main_process():
        plot_loss(history, run_dir / "loss.png", title=recipe.name)
        if any("reward" in entry for entry in history):  # a GRPO stage: rewards and reward hacking
            plot_rewards(history, run_dir / "rewards.png", title=recipe.name)
        evaluator.write_report(run_dir, metrics, base_eval, final_eval, data["test"])
        log_evaluation(run_dir, metrics, report_to)
    return RunResult(run_dir, metrics, evaluator.summary(metrics, final_eval))


def _train_one_stage(model, recipe, stage, objective, evaluator, data, base, run_dir, output, device, report_to,
                     resume, merge, seed):
    """Apply the stage (freeze, LoRA), train it with `objective` (from its latest checkpoint when
    resuming), validated by the run's `evaluator`, save its output; returns the model and the stage's
    entry of metrics.json (plus its loss log)."""
    model = apply_stage(model, stage)
    report = trainable_report(model)
    stage_start = time.time()
    log = train_stage(model, stage, objective, data["train"], run_dir / "trainer" / stage.name, seed,
                      bf16=model.dtype == torch.bfloat16, use_cpu=device == "cpu", report_to=report_to, resume=resume,
                      validation=validation_for(recipe, stage, evaluator, data["val"]))
    with disk_full_fails(f"saving stage {stage.name!r}", lambda: max((e["step"] for e in log), default=None), output):
        model = save_stage_output(model, base.processor, stage, output, merge=merge)
    return model, {"name": stage.name, "objective": objective.name,
                   "train_seconds": round(time.time() - stage_start, 1),
                   "trainable_params": report.trainable_params, "trainable": report.trainable,
                   "quantized": report.quantized, "lora_modules": len(report.lora_modules),
                   "output": str(output.relative_to(run_dir)), "log": log}


def evaluate_test_splits(evaluator, model, data: dict, who: str) -> tuple[EvalResult, dict | None]:
    """`model` on the test split, and its metrics on the out-of-domain split (`data.num_shifted`;
    None when the run has none)."""
    result = evaluator.evaluate(model, data["test"], desc=who)
    if "shifted" not in data:
        return result, None
    return result, evaluator.evaluate(model, data["shifted"], desc=f"{who}, shifted split").metrics


@contextmanager
def phase(name: str):
    """An interruption inside the block is reported as having happened in `name` (status.json)."""
    try:
        send_test_signal("evaluation")
        yield
    except Interrupted as err:
        err.stage = err.stage or name
        raise


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
    if is_main_process():
        plot_validation(rows, metrics["best"], run_dir / "val_curve.png", title=recipe.name)


def validation_rows(history: list[dict]) -> list[dict]:
    """(stage, step, metrics) for every evaluation Trainer logged (keys "eval_*", prefix dropped)."""
    return [{"stage": entry["stage"], "step": entry["step"],
             "metrics": {key[len("eval_"):]: value for key, value in entry.items() if key.startswith("eval_")}}
            for entry in history if any(key.startswith("eval_") for key in entry)]


def read_base_eval(path: Path) -> tuple[EvalResult | None, dict | None]:
    """base_eval.json: the base model's test evaluation and its shifted-split metrics (or None)."""
    data = read_json(path, None)
    if data is None:
        return None, None
    shifted = data.pop("shifted", None)
    return EvalResult(**data), shifted


def load_for_stage(path, recipe: RecipeConfig, stage: StageConfig, objective, device):
    model = load_model(str(path), recipe.model, stage.quantization, device)
    return objective.prepare_model(model)


def save_stage_output(model, processor, stage: StageConfig, path: Path, merge: bool):
    """Save weights (LoRA adapter, or full model) and processor. A stage that feeds another is
    saved merged, as a plain checkpoint the next stage loads like any base. Every process merges
    (each goes on with its copy); the main process writes, and the others wait until it has, since
    the next stage loads from `path`. Under FSDP the weights were gathered when training ended, and
    the save reads them as they are (`whole_state_dict`)."""
    if merge and stage.lora.targets != "none":
        model = model.merge_and_unload()
    if is_main_process():
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path, state_dict=whole_state_dict(model))
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


def run_info(recipe: RecipeConfig, device: str, command: str, family: str, base_path: str, run_dir: Path,
             resume: bool) -> dict:
    """The first start's facts; a resume keeps them and appends its own command and time."""
    import peft
    import transformers

    command = command or " ".join(sys.argv)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    earlier = read_json(run_dir / "run_info.json", None) if resume else None
    if earlier is not None:
        return {**earlier, "resumed": [*earlier.get("resumed", []), {"command": command, "time": now}]}
    return {"recipe": recipe.name, "command": command, "seed": recipe.seed,
            "device": device, "family": family, "base_model": base_path, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "started": now}


def write_status(run_dir: Path, state: str, error: str | None = None, **where) -> None:
    """status.json: `state`, and the error and/or stage and step it stopped at when given."""
    extra = {key: value for key, value in where.items() if value is not None}
    write_json(run_dir / "status.json", {"state": state, **({"error": error} if error else {}), **extra})


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_config(run_dir: Path, recipe: RecipeConfig) -> None:
    """config.yaml, written whole or not at all (what --resume reads the recipe from); main process only."""
    if is_main_process():
        tmp = run_dir / ".config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
        tmp.replace(run_dir / "config.yaml")


def write_json(path: Path, data) -> None:
    """Written whole or not at all (a temporary file, then rename): a reader never sees half a file.
    Only the main process writes the run directory; in the others this does nothing."""
    if not is_main_process():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


# --- one writer per run directory ------------------------------------------------------------

def acquire_lock(run_dir: Path) -> str | None:
    """Take `run_dir/run.lock` (created atomically, holding pid and host) before anything else is
    read or written. A lock held by a live process is an InputError naming it; one left by a dead
    process on this host is taken over (the returned message says so). OSError: not writable."""
    lock = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    note = None
    for _ in range(3):  # a stale lock removed by us (or another process) frees the name: try again
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_json(lock, {})
            if not _is_stale(holder):
                raise InputError(f"{run_dir} is in use by process {holder.get('pid', '?')} on "
                                 f"{holder.get('host', '?')} (lock {lock}): wait for it, stop it, or pick another "
                                 "--output-dir (delete the lock only if that process is gone)") from None
            note = f"taking over the stale lock of process {holder.get('pid', '?')} (no longer running) in {run_dir}"
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return note
    raise InputError(f"could not take the lock {lock}: another process keeps taking it; try again")


def _is_stale(holder: dict) -> bool:
    """A lock whose process is gone. Only a pid on this host can be checked; another host's lock
    (a shared filesystem) counts as held. A lock file being written (empty for an instant) is held."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def release_lock(run_dir: Path) -> None:
    """Remove our own lock (never another process's)."""
    lock = run_dir / LOCK_FILE
    if read_json(lock, {}).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)
