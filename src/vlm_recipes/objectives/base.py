"""The interface every objective implements (SFT, contrastive MRL, masked diffusion).

An objective is built once per run, `build_objective(recipe, processor, family)`, and holds its
parsed options, the processor and the family. What varies between objectives, and so is all an
objective supplies: the batch (`collate`), the loss or the whole step, and the evaluator.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import TrainerCallback

from ..config import RecipeConfig
from ..data.sources import load_splits


class Objective:
    name: str = ""
    data_kind: Literal["detection", "retrieval", "chat"] = "detection"
    """What `data.load_splits` opens for it: detection rows, retrieval pairs or conversations."""

    compute_loss_func = None
    """Trainer's `compute_loss_func(outputs, labels, num_items_in_batch)` for an objective whose loss is
    the model's own from `labels` (SFT); None: `compute_loss` below, or the model's loss as it is."""

    def __init__(self, recipe: RecipeConfig, processor, family):
        self.recipe, self.options = recipe, recipe.objective.options
        self.processor, self.family = processor, family

    def load_data(self) -> dict[str, list]:
        """{"train": [...], "test": [...]}: the recipe's data as this objective's samples."""
        return load_splits(self.recipe.data, self.data_kind, self.recipe.seed)

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
