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

    def evaluate(self, model, processor, family, recipe: RecipeConfig, samples: list, desc: str) -> dict:
        """{"metrics": {...}, "predictions": [...]}: the metrics go to metrics.json."""
        raise NotImplementedError

    def report(self, run_dir, metrics: dict, base_eval: dict, finetuned_eval: dict, samples: list) -> None:
        """Write results.md and plots for this objective's metrics."""
        raise NotImplementedError
