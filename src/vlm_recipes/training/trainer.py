"""The one training loop: transformers' Trainer with a pluggable objective.

Trainer does the loop, accumulation, mixed precision, checkpointing and logging; an
objective only supplies the collator and, where it is not next-token cross-entropy, the loss.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from transformers import Trainer, TrainerCallback, TrainingArguments

from ..config import StageConfig, TrainConfig, TrainingDiverged
from ..models.distributed import launched
from ..models.loading import part_of
from .preemption import Interrupted, StopOnSignal, stop_requested, training_phase

LOSS_POINTS = 5
"""A stage logs its loss at least this many times (when it has that many steps): loss.png shows a curve
and the divergence check has a first value to compare with, however short the run."""


class RecipeTrainer(Trainer):
    def __init__(self, *args, objective, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        objective.prepare_trainer(self)

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
    """Raises on a non-finite (or exactly zero after step 1) logged training loss, and on a loss above
    `factor` x the first logged one (0: no such check)."""

    def __init__(self, factor: float = 0.0):
        self.factor, self.first = factor, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss, step = (logs or {}).get("loss"), state.global_step
        if loss is None:
            return
        if not math.isfinite(loss):
            raise TrainingDiverged(f"training loss became {loss} at step {step}: lower "
                                   "train.learning_rate, or use dtype float32/bfloat16 instead of float16", step)
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


def training_arguments(train: TrainConfig, output_dir: Path, seed: int, bf16: bool, use_cpu: bool,
                       report_to: list[str], find_unused: bool | None = None) -> TrainingArguments:
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
        save_strategy="steps",  # checkpoints for --resume; the run saves its final model itself
        save_steps=train.save_steps,
        save_total_limit=train.save_total_limit,
        report_to=report_to,
        seed=seed,
        bf16=bf16,
        use_cpu=use_cpu,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # samples are objects; the collator builds tensors
        ddp_find_unused_parameters=find_unused,  # None: Trainer's guess; ignored by one process
    )
    settings.update(train.extra)  # explicit extras win over the defaults above
    return TrainingArguments(**settings)


def train_stage(model, stage: StageConfig, objective, train_data: list, output_dir: Path,
                seed: int, bf16: bool, use_cpu: bool, report_to: list[str], resume: bool = False) -> list[dict]:
    """Train `model` in place for one stage with `objective` (its collate, loss, step hooks);
    returns the trainer's log history. `resume`: continue from the latest checkpoint in `output_dir`
    (weights, optimizer, scheduler, RNG, data order), if there is one. Raises `Interrupted` after
    saving a checkpoint when a signal stopped it."""
    train = dataclasses.replace(stage.train, logging_steps=min(stage.train.logging_steps,
                                                               max(1, total_steps(stage.train, len(train_data)) // LOSS_POINTS)))
    args = training_arguments(train, output_dir, seed, bf16, use_cpu, report_to,
                              find_unused_parameters(model, objective, train_data))
    if stage.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # frozen embeddings + checkpointing need grads on inputs
    trainer = RecipeTrainer(model=model, args=args, train_dataset=train_data, data_collator=objective.collate,
                            objective=objective, callbacks=[DivergenceGuard(train.divergence_factor),
                                                            StopOnSignal(stage.name)],
                            compute_loss_func=objective.compute_loss_func)
    checkpoint = latest_checkpoint(output_dir) if resume else None
    with training_phase():
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop_requested() is not None:
        raise Interrupted(stop_requested(), stage.name, trainer.state.global_step)
    return trainer.state.log_history


def total_steps(train: TrainConfig, num_samples: int) -> int:
    """Optimizer steps of a stage (one process), as the Trainer counts them."""
    if train.max_steps > 0:
        return train.max_steps
    per_epoch = max(1, math.ceil(num_samples / train.per_device_train_batch_size) // train.gradient_accumulation_steps)
    return math.ceil(per_epoch * train.num_train_epochs)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The Trainer's newest `checkpoint-<step>` folder in `output_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    return Path(found) if found else None
