"""The one training loop: transformers' Trainer with a pluggable objective.

Trainer does the loop, accumulation, mixed precision, checkpointing and logging; an
objective only supplies the collator and, where it is not next-token cross-entropy, the loss.
An objective whose library ships a Trainer subclass (GRPO: TRL's GRPOTrainer) names it, and
`trainer_class_for` mixes the run's hooks (task-metric validation, objective steps) into it, so
every stage checkpoints, resumes, validates and stops on a signal the same way.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from ..config import StageConfig, TrainConfig
from ..errors import InputError, TrainingDiverged
from ..evaluation.result import flatten, pick_metric
from ..models.distributed import (
    fsdp_checkpoints_activations,
    full_weights,
    gather_full_weights,
    launch_strategy,
    launched,
    rank_and_world,
)
from ..models.loading import part_of
from .checkpoints import CompleteCheckpoints, ends_its_stage, newest_complete, take_back_finished_stage
from .packing import batching_inputs, packing_attention, sampling_arguments
from .preemption import Interrupted, StopOnSignal, training_phase

LOSS_POINTS = 5
"""A stage logs its loss at least this many times (when it has that many steps): loss.png shows a curve
and the divergence check has a first value to compare with, however short the run."""


@dataclass
class Validation:
    """What a stage is validated with while it trains: the run's own evaluator on the validation
    samples, and the metric (dotted, e.g. "mean_iou", "t2i.recall@1") that picks the best step."""
    evaluator: object
    samples: list
    metric: str


class RecipeHooks(CompleteCheckpoints):
    """What the run adds to a Trainer class: the objective's step and loss, validation by the
    task metric, and checkpoints that count only once complete (training/checkpoints.py). Mixed in
    before transformers' Trainer or an objective's own subclass of it."""

    def __init__(self, *args, objective, validation: Validation | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective, self.validation = objective, validation
        objective.prepare_trainer(self)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """The task metric (IoU from batched generation, or retrieval recall) from the run's evaluator
        on the validation split, instead of Trainer's loss-only loop. Trainer's schedule, best-model
        tracking, early stopping and loggers (TensorBoard, W&B) take it as they would its own."""
        validation = self.validation
        with full_weights(self.model):  # FSDP: each process evaluates its own share on the whole model
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


class RecipeTrainer(RecipeHooks, Trainer):
    """The shared trainer of every objective that brings no Trainer of its own."""


def trainer_class_for(objective) -> type:
    """RecipeTrainer, or the objective's own Trainer subclass with the run's hooks mixed in."""
    base = objective.trainer_class
    return RecipeTrainer if base is None else type(f"Recipe{base.__name__}", (RecipeHooks, base), {})


class DivergenceGuard(TrainerCallback):
    """Raises on a non-finite logged training loss; for a positive loss (`positive`: cross-entropy,
    not a policy gradient) also on one exactly zero after step 1, and on one above `factor` x the
    first logged one (0: no such check)."""

    def __init__(self, factor: float = 0.0, positive: bool = True):
        self.factor, self.positive, self.first = factor, positive, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss, step = (logs or {}).get("loss"), state.global_step
        if loss is None:
            return
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training loss became {loss} at step {step}: lower "
                                   "train.learning_rate, or use dtype float32/bfloat16 instead of float16", step)
        if not self.positive:
            return
        if loss == 0.0 and step > 1:
            raise TrainingDiverged(f"training loss is exactly 0 at step {step}: no token "
                                   "carries loss (check the label mask) or the model collapsed", step)
        # the first value of this process: a resumed stage compares with its own first log
        self.first = loss if self.first is None else self.first
        if self.factor and loss > self.factor * self.first:
            raise TrainingDiverged(f"training loss {loss:.4g} at step {step} is over train.divergence_factor="
                                   f"{self.factor:g} x the first logged loss {self.first:.4g}: lower "
                                   "train.learning_rate (or set train.divergence_factor=0)", step)


def find_unused_parameters(model, objective, samples: list) -> bool | None:
    """Whether DDP must look, every step, for trainable parameters the step left unused (a graph
    walk per step; without it such a step fails or hangs). Only the vision tower and merger can sit
    out a step, on a batch without images; a step of a recipe that trains only the LLM (LoRA or
    not), or whose every batch holds images, uses every trainable parameter (DECISIONS D20)."""
    if not launched():
        return None  # no DDP; and a lazily generated dataset (pretraining's) is not walked for nothing
    trains_vision = any(p.requires_grad and part_of(name) != "llm" for name, p in model.named_parameters())
    return trains_vision and not objective.every_step_sees_images(samples)


class EvaluateAtStageEnd(TrainerCallback):
    """Trainer evaluates every `eval_steps`; the stage's last step is evaluated (and saved, when the
    best checkpoint is kept) too, so that the last model competes for best."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = args.save_strategy != "no"


def validation_arguments(train: TrainConfig, metric: str) -> dict:
    """TrainingArguments that evaluate every `train.eval_steps` and track `metric`. Keeping the
    best needs a checkpoint at each evaluation, so checkpoints then follow the evaluations instead
    of `train.save_steps`; they stay whole (optimizer, scheduler, RNG) so that `--resume` works
    the same, and Trainer keeps the best on top of `train.save_total_limit`."""
    settings = dict(eval_strategy="steps", eval_steps=train.eval_steps, metric_for_best_model=metric,
                    greater_is_better=True)
    if train.load_best_at_end:
        settings.update(load_best_model_at_end=True, save_steps=train.eval_steps)
    return settings


def training_arguments(train: TrainConfig, output_dir: Path, seed: int, bf16: bool, use_cpu: bool,
                       report_to: list[str], find_unused: bool | None = None,
                       metric: str | None = None, objective=None, drop_last: bool = False) -> TrainingArguments:
    """The stage's TrainingArguments, or the objective's subclass of them with its own settings
    (the `extra` keys were checked against TrainingArguments at load time)."""
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
        # transformers 5 name for it; under FSDP's own activation checkpointing that one does it
        activation_checkpointing=train.gradient_checkpointing and not fsdp_checkpoints_activations(),
        logging_steps=train.logging_steps,
        logging_nan_inf_filter=False,  # the guard must see NaN, not a filtered value
        save_strategy="steps",  # checkpoints for --resume; the run saves its final model itself
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        report_to=report_to,
        seed=seed,
        bf16=bf16,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        dataloader_drop_last=drop_last,  # `drops_last_batch`
        remove_unused_columns=False,  # samples are objects; the collator builds tensors
        ddp_find_unused_parameters=find_unused,  # None: Trainer's guess; ignored by one process
    )
    if metric is not None:
        settings.update(validation_arguments(train, metric))
    settings.update(sampling_arguments(train))  # train.group_by_length: Trainer's length-grouped sampler
    if objective is not None:
        settings.update(objective.trainer_arguments(train))
    settings.update(train.extra)  # explicit extras win over the defaults above
    return (getattr(objective, "arguments_class", None) or TrainingArguments)(**settings)


def train_stage(model, stage: StageConfig, objective, train_data: list, output_dir: Path,
                seed: int, bf16: bool, use_cpu: bool, report_to: list[str], resume: bool = False,
                validation: Validation | None = None, extra_callbacks: list[TrainerCallback] = ()) -> list[dict]:
    """Train `model` in place for one stage with `objective` (its collate, loss, step hooks),
    validated with `validation` if given (with `load_best_at_end`, `model` ends as the best
    checkpoint); returns the trainer's log history. `resume`: continue from the latest checkpoint in
    `output_dir` (weights, optimizer, scheduler, RNG, data order), if there is one. Raises
    `Interrupted` after saving a checkpoint when a signal stopped it. `extra_callbacks`: more Trainer
    callbacks (the benchmark's step clock). Under FSDP `model` ends whole in every process (its
    shards gathered), so that the run evaluates, merges and saves it as under DDP."""
    batch = objective.samples_per_step(stage.train)
    drop_last = drops_last_batch(stage.train, len(train_data), batch)
    steps = total_steps(stage.train, len(train_data), batch, drop_last)
    train = dataclasses.replace(stage.train, logging_steps=min(stage.train.logging_steps, max(1, steps // LOSS_POINTS)))
    args = training_arguments(train, output_dir, seed, bf16, use_cpu, report_to,
                              find_unused_parameters(model, objective, train_data),
                              validation.metric if validation else None, objective, drop_last)
    if stage.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings + checkpointing need grads on inputs
    trainer = trainer_class_for(objective)(
        model=model, args=args, objective=objective, validation=validation,
        callbacks=stage_callbacks(stage, validation, objective.loss_is_positive) + list(extra_callbacks),
        **batching_inputs(objective.trainer_inputs(train_data, validation.samples if validation else []),
                          model, stage.train))  # train.packing / group_by_length (D31)
    checkpoint = latest_checkpoint(output_dir) if resume else None
    if checkpoint is not None and ends_its_stage(checkpoint) and launch_strategy() != "fsdp":
        take_back_finished_stage(trainer, checkpoint)  # Trainer would train one step more (D32)
    else:
        with training_phase() as stop, without_kv_cache(model), packing_attention(model, stage.train):
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if stop is not None and stop.received is not None:
            raise Interrupted(stop.received, stage.name, trainer.state.global_step)
    gather_full_weights(trainer.model)
    return trainer.state.log_history


@contextmanager
def without_kv_cache(model):
    """Training forwards build no KV cache (generation asks for one itself): a layer recomputed by
    FSDP's activation checkpointing would otherwise append its keys to the cache a second time."""
    config = getattr(model, "config", None)  # None: a plain torch module (tests)
    configs = list({id(c): c for c in (config, config.get_text_config())}.values()) if config else []
    saved = [getattr(config, "use_cache", None) for config in configs]
    for config in configs:
        config.use_cache = False
    try:
        yield
    finally:
        for config, value in zip(configs, saved):
            config.use_cache = value


def drops_last_batch(train: TrainConfig, num_samples: int, batch_size: int) -> bool:
    """Whether the stage drops an epoch's last, partial global batch (`train.drop_last`): only when a
    full global batch (micro-batch x processes) exists, so a split smaller than one still trains."""
    return train.drop_last and num_samples >= batch_size * rank_and_world()[1]


def total_steps(train: TrainConfig, num_samples: int, batch_size: int | None = None, drop_last: bool = False) -> int:
    """Optimizer steps of a stage (one process), as the Trainer counts them; `batch_size`: samples per
    micro-batch (default: train.per_device_train_batch_size); `drop_last`: the partial last batch
    of an epoch is dropped."""
    if train.max_steps > 0:
        return train.max_steps
    batch_size = batch_size or train.per_device_train_batch_size
    batches = num_samples // batch_size if drop_last else math.ceil(num_samples / batch_size)
    per_epoch = max(1, batches // train.gradient_accumulation_steps)
    return math.ceil(per_epoch * train.num_train_epochs)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-<step>` folder in `output_dir`, or None; torn ones are skipped
    with one line naming each (training/checkpoints.py)."""
    return newest_complete(output_dir)


def stage_callbacks(stage: StageConfig, validation: Validation | None, positive_loss: bool = True) -> list[TrainerCallback]:
    callbacks = [DivergenceGuard(stage.train.divergence_factor, positive_loss), StopOnSignal(stage.name)]
    if validation:
        callbacks.append(EvaluateAtStageEnd())
    if validation and stage.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(stage.train.early_stopping_patience))
    return callbacks
