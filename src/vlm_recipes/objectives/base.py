"""The interface every objective implements (SFT, contrastive MRL, masked diffusion)."""

from __future__ import annotations

from typing import Any

import torch

from ..config import RecipeConfig, from_dict


class Objective:
    """Defaults shared by all objectives; subclasses override what differs."""

    name: str = ""
    Options: type = None  # a frozen dataclass of this objective's options

    def parse_options(self, raw: dict) -> Any:
        return from_dict(self.Options, raw, "objective.options")

    def options(self, recipe: RecipeConfig) -> Any:
        return self.parse_options(recipe.objective.options)

    def load_data(self, recipe: RecipeConfig) -> dict[str, list]:
        """{"train": [...], "test": [...]} samples for this objective."""
        raise NotImplementedError

    def prepare_model(self, model, processor, recipe: RecipeConfig):
        """Hook after loading, before freezing/LoRA (e.g. attention changes). Returns the model."""
        return model

    def make_collator(self, processor, family, recipe: RecipeConfig):
        """A function list[sample] -> batch dict of tensors."""
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

    def summary(self, model, recipe: RecipeConfig) -> dict:
        """Extra top-level keys for metrics.json (mrl: its Matryoshka "dims"). Default: none."""
        return {}

    def evaluate(self, model, processor, family, recipe: RecipeConfig, samples: list, desc: str) -> dict:
        """{"metrics": {...}, "predictions": [...]}: the metrics go to metrics.json."""
        raise NotImplementedError

    def report(self, run_dir, metrics: dict, base_eval: dict, finetuned_eval: dict, samples: list) -> None:
        """Write results.md and plots for this objective's metrics."""
        raise NotImplementedError
