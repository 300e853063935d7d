"""Pretraining's objective: answer-token cross-entropy plus a dense loss on the vision tokens.

Used only to build the tiny base (`training/pretrain.py`); see `DenseGrounding`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..boxes import Box
from ..data.chat import encode_for_training
from ..data.objects import COLOUR_NAMES, IGNORE, KINDS, ObjectSample
from .base import DropOnTrainEnd, Objective

HEAD_NAME = "dense_grounding_head"
# the dense head's outputs per image token: coverage logit, box (4), kind logits, colour logits
BOX, KIND_LOGITS = slice(1, 5), slice(5, 5 + len(KINDS))
COLOUR_LOGITS = slice(KIND_LOGITS.stop, KIND_LOGITS.stop + len(COLOUR_NAMES))
HEAD_OUTPUTS = COLOUR_LOGITS.stop


def dense_targets(box: Box, width: int, height: int, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per merged image token (row-major over a `grid_h` x `grid_w` grid): the fraction of its cell
    the box covers, and the box normalised to 0-1 (x1, y1, x2, y2), repeated for every token."""
    x1, y1, x2, y2 = box[0] / width * grid_w, box[1] / height * grid_h, box[2] / width * grid_w, box[3] / height * grid_h
    cols, rows = torch.arange(grid_w, dtype=torch.float32), torch.arange(grid_h, dtype=torch.float32)
    overlap_x = (torch.clamp(cols + 1, max=x2) - torch.clamp(cols, min=x1)).clamp(min=0)
    overlap_y = (torch.clamp(rows + 1, max=y2) - torch.clamp(rows, min=y1)).clamp(min=0)
    coverage = (overlap_y[:, None] * overlap_x[None, :]).flatten()
    normalised = torch.tensor([box[0] / width, box[1] / height, box[2] / width, box[3] / height])
    return coverage, normalised.expand(grid_h * grid_w, 4)


class DenseGrounding(Objective):
    """Answer-token cross-entropy plus `weight` x a dense loss on the merged vision tokens: a linear
    head predicts, for every token, how much of it the object covers (BCE) and, where it covers
    most of it, the object's box (L1), kind and colour (cross-entropy each).

    Why: through the answer tokens alone the vision tower of a model this small learns
    object features too slowly, and the model settles on the average box (DECISIONS D14). The
    head gives the vision tower a direct gradient; it exists only during pretraining and is
    removed before the model is saved, so the checkpoint is a plain Qwen-VL one. The kind and
    colour terms make every covered token say what it shows, which the retrieval recipe needs
    (its scenes hold several small objects) and the answer tokens alone taught too slowly.
    """

    name = "dense-grounding-pretraining"

    def __init__(self, processor, weight: float, covered: float = 0.3):
        # no recipe: pretraining is configured by its own script (cli/build_base.py)
        self.processor, self.weight, self.covered = processor, weight, covered

    def prepare_trainer(self, trainer) -> None:
        if self.weight <= 0:
            return
        model = trainer.model
        model.add_module(HEAD_NAME, nn.Linear(model.config.text_config.hidden_size, HEAD_OUTPUTS))
        trainer.add_callback(DropOnTrainEnd(model, HEAD_NAME))

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        if self.weight <= 0:
            return None  # the answer tokens' cross-entropy alone
        coverage, boxes = inputs.pop("dense_coverage"), inputs.pop("dense_boxes")
        kinds, colours = inputs.pop("dense_kind"), inputs.pop("dense_colour")
        captured = []
        # the model's forward does not return the merged image tokens: a hook reads them
        # without a second vision pass
        hook = model.model.visual.merger.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            loss = model(**inputs).loss
        finally:
            hook.remove()
        prediction = getattr(model, HEAD_NAME)(captured[0])
        coverage_loss = nn.functional.binary_cross_entropy_with_logits(prediction[:, 0], coverage)
        covered = coverage > self.covered
        box_l1 = (prediction[:, BOX].sigmoid() - boxes).abs().sum(-1)
        box_loss = (box_l1 * covered).sum() / covered.sum().clamp(min=1)
        kind_loss = _masked_cross_entropy(prediction[:, KIND_LOGITS], kinds.masked_fill(~covered, IGNORE))
        colour_loss = _masked_cross_entropy(prediction[:, COLOUR_LOGITS], colours.masked_fill(~covered, IGNORE))
        return loss + self.weight * (coverage_loss + box_loss + kind_loss + colour_loss)

    def collate(self, batch: list[ObjectSample]) -> dict[str, torch.Tensor]:
        processor = self.processor
        encoded = encode_for_training(processor, [s.image for s in batch], [s.prompt for s in batch],
                                      [s.answer for s in batch])
        if self.weight <= 0:
            return encoded
        merge = processor.image_processor.merge_size
        targets = [dense_targets(s.box, *s.image.size, int(thw[1]) // merge, int(thw[2]) // merge)
                   for s, thw in zip(batch, encoded["image_grid_thw"])]
        encoded["dense_coverage"] = torch.cat([t[0] for t in targets])
        encoded["dense_boxes"] = torch.cat([t[1] for t in targets])
        tokens = torch.tensor([len(t[0]) for t in targets])  # each sample's label, once per image token
        encoded["dense_kind"] = torch.tensor([s.kind for s in batch]).repeat_interleave(tokens)
        encoded["dense_colour"] = torch.tensor([s.colour for s in batch]).repeat_interleave(tokens)
        return encoded


def _masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != IGNORE; zero (not NaN) when there are none."""
    if not (targets != IGNORE).any():
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE)
