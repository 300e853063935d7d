"""What a finished run writes: metrics.json (base, references, fine-tuned, by stage, best validated
step), predictions.json, train_log.json, eval_history.json, the plots, the evaluator's report, and
the evaluation scalars next to the training curves (TensorBoard, W&B)."""

from __future__ import annotations

from dataclasses import dataclass

from ..evaluation.plots import plot_loss, plot_rewards, plot_validation
from ..evaluation.result import EvalResult, flatten
from ..models.distributed import is_main_process
from .prediction_logging import finish_report
from .run_dir import RunDir
from .steps import Run


@dataclass
class Outcome:
    """What the run measured, for its files."""
    base: EvalResult
    base_shifted: dict | None
    final: EvalResult
    references: dict
    """Other models of the report (mrl distillation: teacher, untaught student)."""
    stages: list[dict]
    """Each stage's entry, with its loss log ("log"), test metrics ("test") and shifted metrics."""
    train_seconds: float


def write_results(run: Run, run_dir: RunDir, model, outcome: Outcome) -> dict:
    """Every result file of the run; returns metrics.json's content."""
    stages = outcome.stages
    history = [dict(entry, stage=info["name"]) for info in stages for entry in info["log"]]
    metrics = run_metrics(run, model, outcome)
    run_dir.write_json("predictions.json", {"base": outcome.base.predictions, "finetuned": outcome.final.predictions})
    run_dir.write_json("train_log.json", history)
    write_validation(run_dir, run, history, metrics)  # adds metrics["best"]
    run_dir.write_json("metrics.json", metrics)
    if is_main_process():
        plot_loss(history, run_dir / "loss.png", title=run.recipe.name)
        if any("reward" in entry for entry in history):  # a GRPO stage: rewards and reward hacking
            plot_rewards(history, run_dir / "rewards.png", title=run.recipe.name)
        run.evaluator.write_report(run_dir.path, metrics, outcome.base, outcome.final, run.data["test"])
        log_evaluation(run_dir, metrics, run.report_to)
        finish_report(run_dir.path, run.report_to)  # report.html; the test sample's boxes to TensorBoard / W&B
    return metrics


def run_metrics(run: Run, model, outcome: Outcome) -> dict:
    """metrics.json: the base and fine-tuned test metrics, every stage's, the references'."""
    stages = outcome.stages
    by_stage = {info["name"]: info["test"] for info in stages}
    shifted = {"base": outcome.base_shifted, **{info["name"]: info["shifted"] for info in stages}}
    entries = [{k: v for k, v in info.items() if k not in ("log", "test", "shifted")} for info in stages]
    return {"recipe": run.recipe.name, **run.objective.summary(model), "objective": run.objective.name,
            "family": run.base.family.name, "base_model": run.base.path,
            "base": outcome.base.metrics, **outcome.references, "finetuned": outcome.final.metrics,
            "by_stage": by_stage, **({"shifted": shifted} if "shifted" in run.data else {}),
            "train_seconds": round(outcome.train_seconds, 1),
            "trainable_params": max(s["trainable_params"] for s in entries), "stages": entries}


def write_validation(run_dir: RunDir, run: Run, history: list[dict], metrics: dict) -> None:
    """eval_history.json, val_curve.png and metrics.json's "best": the validated step that scored
    highest in the last stage (with load_best_at_end, the model that was tested)."""
    rows = validation_rows(history)
    if not rows:
        return
    run_dir.write_json("eval_history.json", rows)
    last = run.recipe.stages[-1]
    metric = run.recipe.metric_for_best(last.train)
    best = max((r for r in rows if r["stage"] == last.name), key=lambda r: r["metrics"][metric])
    metrics["best"] = {"stage": best["stage"], "step": best["step"], "metric": metric,
                       "value": best["metrics"][metric]}
    if is_main_process():
        plot_validation(rows, metrics["best"], run_dir / "val_curve.png", title=run.recipe.name)


def validation_rows(history: list[dict]) -> list[dict]:
    """(stage, step, metrics) for every evaluation Trainer logged (keys "eval_*", prefix dropped)."""
    return [{"stage": entry["stage"], "step": entry["step"],
             "metrics": {key[len("eval_"):]: value for key, value in entry.items() if key.startswith("eval_")}}
            for entry in history if any(key.startswith("eval_") for key in entry)]


def log_evaluation(run_dir: RunDir, metrics: dict, report_to: list[str]) -> None:
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

