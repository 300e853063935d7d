"""The interface every objective implements (SFT, GRPO, contrastive MRL, masked diffusion).

An objective is built once per run and stage, `build_objective(recipe, processor, family, config)`,
and holds its parsed options, the processor and the family. What varies between objectives, and so
is all an objective supplies: the batch (`collate`), the loss or the whole step, and the evaluator.
An objective whose library ships its own trainer (GRPO: TRL's GRPOTrainer) names that class and
its arguments class; the shared run still builds, validates, checkpoints and saves it.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import TrainerCallback

from ..config import ObjectiveConfig, RecipeConfig, TrainConfig
from ..data.index import GroundingIndex, every_single_box
from ..data.samples import GroundingSample
from ..data.splits import load_splits


class Objective:
    name: str = ""
    data_kind: Literal["detection", "retrieval", "chat"] = "detection"
    """What `data.load_splits` opens for it: detection rows, retrieval pairs or conversations."""

    compute_loss_func = None
    """Trainer's `compute_loss_func(outputs, labels, num_items_in_batch)` for an objective whose loss is
    the model's own from `labels` (SFT); None: `compute_loss` below, or the model's loss as it is."""

    loss_is_positive = True
    """A cross-entropy-like loss: exactly 0 after the first step means nothing is trained (the
    divergence guard stops the run). A policy-gradient loss (GRPO) is often 0 or negative."""

    trainer_class = None
    """The Trainer subclass to train with; None: transformers' Trainer. The run mixes its own hooks
    (validation, objective steps) into whichever class this is."""

    arguments_class = None
    """Its TrainingArguments subclass (TRL's GRPOConfig); None: TrainingArguments."""

    def __init__(self, recipe: RecipeConfig, processor, family, config: ObjectiveConfig | None = None):
        self.recipe, self.config = recipe, config or recipe.objective
        self.options = self.config.options
        self.processor, self.family = processor, family

    set_data: bool | None = None
    """Whether the training rows are grounding sets (several, no or referred objects; set by
    `load_data`): then the validation rows carved from them are scored by set metrics even when the
    few drawn hold one box each (`training.steps.validation_evaluator`); the test split is scored by
    its own rows. None (conversations, or no data loaded): validation too goes by its own rows."""

    def load_data(self) -> dict[str, list]:
        """{"train": [...], "test": [...]}: the recipe's data as this objective's samples."""
        data = load_splits(self.recipe.data, self.data_kind, self.recipe.seed)
        train = data.get("train")
        if isinstance(train, GroundingIndex) or (train and all(isinstance(s, GroundingSample) for s in train)):
            self.set_data = not every_single_box(train)
        return data

    def prepare_run(self, device: str) -> None:
        """Hook after the data loads, before the run directory is made: check what else the run
        needs, so that bad input fails in one line with nothing written (mrl: its teacher)."""

    def reference_rows(self, test: list, device: str) -> dict:
        """Models the report compares besides base and fine-tuned, as {name: test metrics} (mrl
        distillation: "teacher", "untaught"); each becomes a top-level key of metrics.json. Default: none."""
        return {}

    def samples_per_step(self, train: TrainConfig) -> int:
        """Training samples one optimizer step of one process consumes (before accumulation)."""
        return train.per_device_train_batch_size

    def trainer_arguments(self, train: TrainConfig) -> dict:
        """Arguments of `arguments_class` the objective sets itself (GRPO: its group size, sampling,
        KL and clipping). Default: none."""
        return {}

    def trainer_inputs(self, train: list, val: list) -> dict:
        """The keyword arguments, besides model, args and callbacks, that build the trainer."""
        return {"train_dataset": train, "eval_dataset": val or None, "data_collator": self.collate,
                "compute_loss_func": self.compute_loss_func}

    def prepare_model(self, model):
        """Hook after loading, before freezing/LoRA (e.g. a mask token). Returns the model."""
        return model

    def collate(self, samples: list) -> dict:
        """list[sample] -> batch dict of tensors (the Trainer's data collator)."""
        raise NotImplementedError

    def compute_loss(self, model, inputs: dict[str, torch.Tensor], num_items_in_batch=None) -> torch.Tensor | None:
        """The loss; None means "the model's own loss from `labels`" (next-token cross-entropy)."""
        return None

    def prepare_trainer(self, trainer) -> None:
        """Hook when the Trainer is built, before its optimizer: add callbacks or training-only
        parameters (mrl: a learned temperature, weight EMA). Default: nothing."""

    def training_step(self, trainer, model, inputs: dict, num_items_in_batch=None) -> torch.Tensor | None:
        """A whole training step (forward and backward) when the objective needs several backward
        passes (mrl's gradient caching); returns the detached loss. None: the Trainer's own step."""
        return None

    def every_step_sees_images(self, samples: list) -> bool:
        """Whether every training step runs the vision tower (so DDP need not look for unused
        parameters): every sample holds an image. Detection rows always do; conversations may not."""
        if isinstance(samples, GroundingIndex):  # every entry names its image: walking it would decode them all
            return True
        return all(getattr(s, "image", None) is not None or getattr(s, "images", None) for s in samples)

    def evaluator(self):
        """The evaluation.Evaluator that scores this objective's models on its test split."""
        raise NotImplementedError

    def summary(self, model) -> dict:
        """Extra top-level keys for metrics.json (mrl: its Matryoshka "dims"). Default: none."""
        return {}


class DropOnTrainEnd(TrainerCallback):
    """Deletes a training-only attribute of the model (a parameter or submodule an objective
    added: mrl's learned temperature, pretraining's dense head) when training ends, so the saved
    checkpoint holds only the architecture's own weights."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def on_train_end(self, args, state, control, **kwargs):
        delattr(self.model, self.name)
