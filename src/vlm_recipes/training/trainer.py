"""The one training loop: transformers' Trainer with a pluggable objective.

Trainer does the loop, accumulation, mixed precision, checkpointing and logging; an
objective only supplies the collator and, where it is not next-token cross-entropy, the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from ..config import StageConfig, TrainConfig, TrainingDiverged
from ..errors import InputError
from ..evaluation.result import flatten, pick_metric


@dataclass
class Validation:
    """What a stage is validated with while it trains: the run's own evaluator on the validation
    samples, and the metric (dotted, e.g. "mean_iou", "t2i.recall@1") that picks the best step."""
    evaluator: object
    samples: list
    metric: str


class RecipeTrainer(Trainer):
    def __init__(self, *args, objective, validation: Validation | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.validation = objective, validation
        objective.prepare_trainer(self)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """The task metric (IoU from batched generation, or retrieval recall) from the run's evaluator
        on the validation split, instead of Trainer's loss-only loop. Trainer's schedule, best-model
        tracking, early stopping and loggers (TensorBoard, W&B) take it as they would its own."""
        validation = self.validation
        result = validation.evaluator.evaluate(self.model, validation.samples,
                                               desc=f"validation, step {self.state.global_step}")
        try:
            chosen = pick_metric(result.metrics, validation.metric)
        except KeyError as err:
            raise InputError(f"train.metric_for_best={validation.metric!r}: {err.args[0]}") from None
        metrics = {f"{metric_key_prefix}_{key}": value for key, value in flatten(result.metrics).items()}
        metrics[f"{metric_key_prefix}_{validation.metric}"] = chosen
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def training_step(self, model, inputs, num_items_in_batch=None):
        # an objective may own the whole step (mrl's gradient caching runs several backward passes)
        loss = self.objective.training_step(self, model, inputs, num_items_in_batch)
        return super().training_step(model, inputs, num_items_in_batch) if loss is None else loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.objective.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if loss is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return (loss, None) if return_outputs else loss


class DivergenceGuard(TrainerCallback):
    """Raises on a non-finite (or exactly zero after step 1) logged training loss."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training loss became {loss} at step {state.global_step}: lower "
                                   "train.learning_rate, or use dtype float32/bfloat16 instead of float16")
        if loss == 0.0 and state.global_step > 1:
            raise TrainingDiverged(f"training loss is exactly 0 at step {state.global_step}: no token "
                                   "carries loss (check the label mask) or the model collapsed")


class EvaluateAtStageEnd(TrainerCallback):
    """Trainer evaluates every `eval_steps`; the stage's last step is evaluated (and saved, when the
    best checkpoint is kept) too, so that the last model competes for best."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = args.save_strategy != "no"


def validation_arguments(train: TrainConfig, metric: str) -> dict:
    """TrainingArguments that evaluate every `train.eval_steps` and track `metric`. Keeping the
    best needs a checkpoint at each evaluation: model weights only (no optimizer state: they are
    only reloaded, never resumed from), the best and the latest kept (save_total_limit=1 plus the
    best, which Trainer never deletes)."""
    settings = dict(eval_strategy="steps", eval_steps=train.eval_steps, metric_for_best_model=metric,
                    greater_is_better=True)
    if train.load_best_at_end:
        settings.update(load_best_model_at_end=True, save_strategy="steps", save_steps=train.eval_steps,
                        save_total_limit=1, save_only_model=True)
    return settings


def training_arguments(train: TrainConfig, output_dir: Path, seed: int, bf16: bool, use_cpu: bool,
                       report_to: list[str], metric: str | None = None) -> TrainingArguments:
    """The stage's TrainingArguments (its `extra` keys were checked against them at load time)."""
    settings = dict(
        output_dir=str(output_dir),
        learning_rate=train.learning_rate,
        num_train_epochs=train.num_train_epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.per_device_train_batch_size,
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        warmup_steps=train.warmup_ratio,  # a float < 1 is a ratio of total steps
        weight_decay=train.weight_decay,
        lr_scheduler_type=train.lr_scheduler_type,
        max_grad_norm=train.max_grad_norm,
        activation_checkpointing=train.gradient_checkpointing,  # transformers 5 name for it
        logging_steps=train.logging_steps,
        logging_nan_inf_filter=False,  # the guard must see NaN, not a filtered value
        save_strategy="no",  # the run saves its final model itself; enable via train.extra
        report_to=report_to,
        seed=seed,
        bf16=bf16,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # samples are objects; the collator builds tensors
    )
    if metric is not None:
        settings.update(validation_arguments(train, metric))
    settings.update(train.extra)  # explicit extras win over the defaults above
    return TrainingArguments(**settings)


def train_stage(model, stage: StageConfig, objective, train_data: list, output_dir: Path,
                seed: int, bf16: bool, use_cpu: bool, report_to: list[str],
                validation: Validation | None = None) -> list[dict]:
    """Train `model` in place for one stage with `objective` (its collate, loss, step hooks),
    validated with `validation` if given (with `load_best_at_end`, `model` ends as the best
    checkpoint); returns the trainer's log history."""
    metric = validation.metric if validation else None
    args = training_arguments(stage.train, output_dir, seed, bf16, use_cpu, report_to, metric)
    if stage.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings + checkpointing need grads on inputs
    trainer = RecipeTrainer(model=model, args=args, train_dataset=train_data, data_collator=objective.collate,
                            eval_dataset=validation.samples if validation else None, objective=objective,
                            validation=validation, callbacks=stage_callbacks(stage.train, validation))
    trainer.train()
    return trainer.state.log_history


def stage_callbacks(train: TrainConfig, validation: Validation | None) -> list[TrainerCallback]:
    callbacks = [DivergenceGuard()]
    if validation:
        callbacks.append(EvaluateAtStageEnd())
    if validation and train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(train.early_stopping_patience))
    return callbacks
