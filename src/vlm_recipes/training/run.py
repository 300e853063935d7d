"""One recipe run, top to bottom: open the base, the objective and the data; evaluate the base;
train, validate, save and evaluate each stage; evaluate the result; write the run directory.

Its parts: `steps.py` (opening, loading and saving a stage's model, evaluating the test splits),
`trainer.py` (one stage's training), `run_dir.py` (the directory: lock, status, resume state),
`report.py` (the result files), `preemption.py` (a signal as a checkpointed stop).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import set_seed

from ..config import RecipeConfig
from ..models.loading import apply_stage, trainable_report
from .checkpoints import disk_full_fails, seed_stage
from .prediction_logging import prediction_callbacks
from .preemption import phase
from .results import Outcome, write_results
from .run_dir import RunDir, run_facts
from .steps import Run, evaluate_test_splits, load_for_stage, open_run, save_stage_output, stage_entry, validation_for
from .trainer import train_stage


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    """What metrics.json holds."""
    summary: str
    """The printable markdown summary (the top of results.md)."""


def run_recipe(recipe: RecipeConfig, run_dir: Path | RunDir, device: str = "cpu",
               report_to: tuple[str, ...] = ("tensorboard",), command: str = "") -> RunResult:
    """Train and evaluate `recipe`, writing `run_dir` (a RunDir made with resume=True continues the
    run already there: its finished base evaluation and stages are kept, an unfinished stage goes on
    from its latest checkpoint). The caller holds the directory's lock (`RunDir.claim`). Under a
    launcher (torchrun, accelerate) every process runs this, data parallel; only the main process
    writes `run_dir` (DECISIONS D20)."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    set_seed(recipe.seed)
    run = open_run(recipe, device, list(report_to))  # bad input fails here, before run_dir is written
    run_dir.clear_earlier()  # --overwrite: the earlier run goes only now that every input has opened
    run_dir.write_config(run.recipe)  # before status.json: a run killed from here on can --resume (D32)
    with run_dir.recording_status():  # running -> complete | interrupted (stage, step) | failed
        return train_and_evaluate(run, run_dir, command)


def train_and_evaluate(run: Run, run_dir: RunDir, command: str) -> RunResult:
    recipe, base = run.recipe, run.base
    run_dir.start(run_facts(recipe, run.device, command, base.family.name, base.path))
    run.evaluator = run.objective.evaluator()

    model, (base_eval, base_shifted) = None, run_dir.base_eval()  # a resume reads the base's back
    if base_eval is None:
        model = load_for_stage(base.path, recipe, recipe.stages[0], run.objective, run.device)
        with phase("base evaluation"):
            base_eval, base_shifted = evaluate_test_splits(run.evaluator, model, run.data, "base model")
        run_dir.save_base_eval(base_eval, base_shifted)
    with phase("reference evaluation"):
        references = run.objective.reference_rows(run.data["test"], run.device)  # mrl: teacher, untaught

    start = time.time()
    model, stages = train_stages(run, run_dir, model)
    train_seconds = time.time() - start

    with phase("final evaluation"):
        final_eval, final_shifted = evaluate_test_splits(run.evaluator, model, run.data, "fine-tuned model")
        stages[-1].update(test=final_eval.metrics, shifted=final_shifted)
    outcome = Outcome(base_eval, base_shifted, final_eval, references, stages, train_seconds)
    metrics = write_results(run, run_dir, model, outcome)
    return RunResult(run_dir.path, metrics, run.evaluator.summary(metrics, final_eval))


def train_stages(run: Run, run_dir: RunDir, model) -> tuple[object, list[dict]]:
    """Each stage in turn, starting from the previous one's output; returns the last stage's model
    and every stage's entry. A stage a resume finds finished is not repeated, except the last, whose
    final checkpoint gives its model back."""
    stages, source = [], run.base.path
    for index, stage in enumerate(run.recipe.stages):
        last = index == len(run.recipe.stages) - 1
        output = run_dir.stage_output(index, stage, last)
        finished = None if last else run_dir.finished(index)
        if finished is not None:
            stages.append(finished)
            source = output
            continue
        objective = run.objective_for(stage)
        seed = seed_stage(run.recipe.seed, index)  # init and data order from (seed, index) only (D32)
        if index > 0 or model is None:
            model = load_for_stage(source, run.recipe, stage, objective, run.device)

        # train (freeze, LoRA; validated every eval_steps; from the latest checkpoint on a resume), save
        model = apply_stage(model, stage)
        info = stage_entry(stage, objective, trainable_report(model), str(output.relative_to(run_dir.path)))
        stage_start = time.time()
        info["log"] = train_stage(model, stage, objective, run.data["train"], run_dir.trainer_dir(stage),
                                  seed, bf16=model.dtype == torch.bfloat16, use_cpu=run.device == "cpu",
                                  report_to=run.report_to, resume=run_dir.resume, validation=validation_for(run, stage),
                                  extra_callbacks=prediction_callbacks(run.evaluator, run.data["test"],
                                                                       run_dir.trainer_dir(stage), run.report_to))
        last_step = max((entry["step"] for entry in info["log"]), default=None)
        with disk_full_fails(f"saving stage {stage.name!r}", last_step, output):
            model = save_stage_output(model, run.base.processor, stage, output, merge=not last)
        info["train_seconds"] = round(time.time() - stage_start, 1)

        if not last:  # evaluate on the test split (the last stage's model is the final evaluation's)
            with phase(f"evaluation of stage {stage.name}"):
                result, info["shifted"] = evaluate_test_splits(run.evaluator, model, run.data, f"stage {stage.name}")
                info["test"] = result.metrics
        stages.append(info)
        run_dir.save_progress(stages)
        source = output
    return model, stages
