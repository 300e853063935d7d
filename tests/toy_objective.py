"""A toy objective that lives outside the package, to show what adding one takes: this module
(exposing OBJECTIVE_CLASS) plus one `ObjectiveSpec` entry in `config.OBJECTIVES`
(tests/test_config.py::test_a_new_objective_is_one_spec_and_one_module)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F

from vlm_recipes.errors import InputError
from vlm_recipes.objectives.sft import SFT


@dataclass(frozen=True)
class SmoothedOptions:
    label_smoothing: float = 0.1
    loss_on: Literal["answer", "all"] = "answer"
    max_length: int = 2048

    def __post_init__(self):
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"objective.options.label_smoothing={self.label_smoothing}: must be in [0, 1)")


class SmoothedSFT(SFT):
    """SFT on the grounding answers with label-smoothed next-token cross-entropy."""
    name = "smoothed-sft"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.compute_loss_func = self.smoothed_loss

    def smoothed_loss(self, outputs, labels, num_items_in_batch=None):
        logits, targets = outputs.logits[:, :-1].float(), labels[:, 1:]
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                label_smoothing=self.options.label_smoothing, reduction="sum")
        return total / (num_items_in_batch or (targets != -100).sum())


OBJECTIVE_CLASS = SmoothedSFT
