"""The steps a run (training/run.py) is made of, each small enough to read on its own: what the
run opened, a stage's model loaded and saved, the test splits evaluated, validation settings."""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RecipeConfig, StageConfig
from ..errors import InputError
from ..evaluation.result import EvalResult
from ..models.distributed import barrier, is_main_process, whole_state_dict
from ..models.loading import Base, load_model, open_base
from ..objectives import build_objective
from .checks import check_prompt_length, check_validation_metrics, validation_note
from .trainer import Validation


@dataclass
class Run:
    """What every step of one run shares: opened (and checked) before the run directory is written."""
    recipe: RecipeConfig
    """With the pixel budget really used (saved with the run)."""
    base: Base
    objective: object
    """The recipe's objective; a stage may train with its own (`objective_for`)."""
    data: dict
    """{"train", "val", "test"} samples (+ "shifted": the out-of-domain test split)."""
    device: str
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    evaluator: object = None
    """The objective's evaluator, built once the run directory is started."""

    def objective_for(self, stage: StageConfig):
        """The objective `stage` trains with: its own (sharing the recipe objective's data), else the recipe's."""
        if stage.objective is None:
            return self.objective
        return build_objective(self.recipe, self.base.processor, self.base.family, stage.objective)


def open_run(recipe: RecipeConfig, device: str, report_to: list[str]) -> Run:
    """Everything that can fail on bad input, checked before the run directory is written: the base
    (path, processor, family), the objective, the data, what else the objective needs (mrl: its teacher)."""
    base = open_base(recipe.model)
    recipe = with_pixel_budget(recipe, base.processor)
    objective = build_objective(recipe, base.processor, base.family)
    check_prompt_length(recipe, base.processor)
    data = objective.load_data()
    check_validation_split(recipe, data["val"])
    check_validation_metrics(recipe, data["val"], base, objective.set_data)  # metric names vs the data's kind
    objective.prepare_run(device)
    note = validation_note(recipe.data.num_val, len(data["val"]), len(data["train"]))
    if note and is_main_process():  # once every input is checked: bad input stays one line
        print(note, file=sys.stderr)
    return Run(recipe, base, objective, data, device, report_to)


def with_pixel_budget(recipe: RecipeConfig, processor) -> RecipeConfig:
    """The recipe with the pixel budget the processor really uses, saved with the run so that
    evaluation and inference resize images exactly as training did."""
    size = processor.image_processor.size
    return dataclasses.replace(recipe, model=dataclasses.replace(
        recipe.model, min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"]))


def check_validation_split(recipe: RecipeConfig, samples: list) -> None:
    """A stage that keeps its best checkpoint or stops early needs validation rows to exist."""
    needs = [s.name for s in recipe.stages if s.train.load_best_at_end or s.train.early_stopping_patience]
    if needs and not samples:
        raise InputError(f"stage {needs[0]!r}: load_best_at_end / early_stopping_patience need a validation "
                         "split, but data.num_val carved none (at most a tenth of the training rows is "
                         "carved): use more training rows")


def validation_for(run: Run, stage: StageConfig) -> Validation | None:
    """How the stage is validated while it trains: the run's evaluator on the validation split; None
    when there is none (data.num_val=0, or a training split under 10 rows)."""
    samples = run.data["val"]
    return Validation(validation_evaluator(run), samples, run.recipe.metric_for_best(stage.train)) if samples else None


def load_for_stage(path, recipe: RecipeConfig, stage: StageConfig, objective, device):
    """The weights at `path` loaded as `stage` says (4-bit or not), prepared for `objective`."""
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


def evaluate_test_splits(evaluator, model, data: dict, who: str) -> tuple[EvalResult, dict | None]:
    """`model` on the test split, and its metrics on the out-of-domain split (`data.num_shifted`;
    None when the run has none)."""
    result = evaluator.evaluate(model, data["test"], desc=who)
    if "shifted" not in data:
        return result, None
    return result, evaluator.evaluate(model, data["shifted"], desc=f"{who}, shifted split").metrics


def stage_entry(stage: StageConfig, objective, report, output: str) -> dict:
    """A stage's entry of metrics.json: what it trained (`report`: models.loading.TrainableReport)."""
    return {"name": stage.name, "objective": objective.name, "train_seconds": 0.0,
            "trainable_params": report.trainable_params, "trainable": report.trainable,
            "quantized": report.quantized, "lora_modules": len(report.lora_modules), "output": output}


def validation_evaluator(run):
    """The run's evaluator, scoring validation rows as the training rows they were carved from are
    scored: set metrics for set data even when the few rows drawn hold one box each. The test split
    is scored by its own rows, as `vlm-recipes evaluate` scores it."""
    if not hasattr(run.evaluator, "sets") or run.objective.set_data is None:
        return run.evaluator
    evaluator = copy.copy(run.evaluator)
    evaluator.sets = run.objective.set_data
    return evaluator
