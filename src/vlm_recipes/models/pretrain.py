"""Pretraining the tiny base on a generic task, so that it behaves like a pretrained model.

The task is grounding and naming one generic object ("Locate the star." -> its box, labelled
"red star"): a shape, a framed box, a text block or a striped box on a noisy background,
answered in the family's own box convention. It never shows a nutrition table: the recipes have
to teach that. The pretraining run uses the same Trainer as the recipes, with one addition that
only pretraining has: a dense auxiliary loss on the vision tower's output tokens (see
`DenseGroundingObjective`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..boxes import Box, format_answer, resized_size
from ..config import DataConfig, FreezeConfig, StageConfig, TrainConfig
from ..data.chat import encode_for_training
from ..data.synthetic import COLOURS, GENERIC, SHAPES, render_object_example
from ..families import Family
from ..objectives.base import Objective
from ..training.trainer import DropOnTrainEnd, train_stage
from .tiny import build_tiny, save_checkpoint

GROUND_PROMPTS = ["Locate the {} in the image.", "Find the {}.", "Where is the {}?", "Detect the {}."]
# Names a prompt may give the object instead of its kind, answered verbatim as the label: a
# pretrained VLM names what it is asked for, so a recipe that freezes the language model (r2)
# can still say a new label. Words the base knows, never a kind or colour word (those labels
# come from the image); the task's own label phrase is never one of them. Off for the shipped
# base (D16: measured, not shipped).
ALIAS_WORDS = """picture photo sign card panel sticker logo badge chart grid list code stamp
note print page sheet area region patch slot field window frame plate tag ticket notice table
nutrition facts information energy protein sugar salt water milk flour brand ingredients
organic natural total serving product package wrapper front back main side small large""".split()
HELD_OUT_LABELS = {DataConfig.label}  # the recipes' own task label, from its one definition
# Prompts that do not name the object: the answer's label must come from the image.
DESCRIBE_PROMPTS = ["Detect the object in the image.", "What is in the image, and where?",
                    "Locate the main object."]
# The tiny base's pixel budget (saved in its processor): at most 160x160 px, i.e. 5x5 tokens for
# Qwen3-VL, so that training steps take a fraction of a second on a CPU.
MIN_PIXELS, MAX_PIXELS = 3136, 25600
HEAD_NAME = "dense_grounding_head"
KINDS, COLOUR_NAMES = SHAPES + GENERIC, list(COLOURS)
# the dense head's outputs per image token: coverage logit, box (4), kind logits, colour logits
BOX, KIND_LOGITS = slice(1, 5), slice(5, 5 + len(KINDS))
COLOUR_LOGITS = slice(KIND_LOGITS.stop, KIND_LOGITS.stop + len(COLOUR_NAMES))
HEAD_OUTPUTS = COLOUR_LOGITS.stop
IGNORE = -100  # cross_entropy's ignore_index: uncovered tokens, and items without a named colour


@dataclass
class ObjectSample:
    image: Image.Image
    prompt: str
    answer: str
    box: Box  # canonical pixel box of the object, for the dense auxiliary targets
    kind: int  # index in KINDS
    colour: int  # index in COLOUR_NAMES, or IGNORE for an item without a named colour


class ObjectsDataset:
    """Sample i is rendered on demand from its own seed: no images held in memory."""

    def __init__(self, size: int, family: Family, seed: int, aliases: bool = True):
        self.size, self.family, self.seed, self.aliases = size, family, seed, aliases

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> ObjectSample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = random.Random(self.seed * 1_000_003 + index)
        image, kind, colour, box = render_object_example(rng)
        w, h = image.size
        label = f"{colour} {kind}".strip()
        # prompts name nothing, the kind, or colour and kind: the label always names both, so the
        # colour has to be read from the image. With aliases (the shipped base), a quarter name the
        # object by an alias instead, which the answer repeats as its label, so that the base can
        # say a task's label it never saw, as a real Qwen-VL does (D16).
        named = rng.choice(["", kind, label] + ([None] if self.aliases else []))
        if named is None:
            named = label = _alias(rng)
        prompt = rng.choice(GROUND_PROMPTS).format(named) if named else rng.choice(DESCRIBE_PROMPTS)
        answer = format_answer([(label, box)], w, h, self.family, resized_size(w, h, self.family, MIN_PIXELS, MAX_PIXELS))
        return ObjectSample(image, prompt, answer, box, KINDS.index(kind),
                            COLOUR_NAMES.index(colour) if colour else IGNORE)


def _alias(rng: random.Random) -> str:
    while True:
        alias = " ".join(rng.sample(ALIAS_WORDS, rng.choice([1, 2, 2])))
        if alias not in HELD_OUT_LABELS:
            return alias


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


class DenseGroundingObjective(Objective):
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

    def __init__(self, weight: float, covered: float = 0.3):
        self.weight, self.covered = weight, covered

    def prepare_trainer(self, trainer) -> None:
        model = trainer.model
        model.add_module(HEAD_NAME, nn.Linear(model.config.text_config.hidden_size, HEAD_OUTPUTS))
        trainer.add_callback(DropOnTrainEnd(model, HEAD_NAME))

    def compute_loss(self, model, inputs, num_items_in_batch=None):
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


def _masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over targets != IGNORE; zero (not NaN) when there are none."""
    if not (targets != IGNORE).any():
        return logits.sum() * 0.0
    return nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE)


def make_collator(processor, dense: bool):
    merge = processor.image_processor.merge_size

    def collate(batch: list[ObjectSample]) -> dict[str, torch.Tensor]:
        encoded = encode_for_training(processor, [s.image for s in batch], [s.prompt for s in batch],
                                      [s.answer for s in batch])
        if not dense:
            return encoded
        targets = [dense_targets(s.box, *s.image.size, int(thw[1]) // merge, int(thw[2]) // merge)
                   for s, thw in zip(batch, encoded["image_grid_thw"])]
        encoded["dense_coverage"] = torch.cat([t[0] for t in targets])
        encoded["dense_boxes"] = torch.cat([t[1] for t in targets])
        tokens = torch.tensor([len(t[0]) for t in targets])  # each sample's label, once per image token
        encoded["dense_kind"] = torch.tensor([s.kind for s in batch]).repeat_interleave(tokens)
        encoded["dense_colour"] = torch.tensor([s.colour for s in batch]).repeat_interleave(tokens)
        return encoded

    return collate


def pretrain_base(family: Family, out_dir: Path, num_samples: int, epochs: float, learning_rate: float,
                  seed: int = 0, batch_size: int = 16, save_steps: int = 0, aux_weight: float = 1.0,
                  aliases: bool = True) -> list[dict]:
    """Build the tiny model, pretrain it on generic objects, save it with its processor to `out_dir`."""
    model, processor = build_tiny(family, MIN_PIXELS, MAX_PIXELS, seed=seed)
    stage = StageConfig(name="pretrain", freeze=FreezeConfig(vision=False, merger=False, llm=False),
                        train=TrainConfig(learning_rate=learning_rate, num_train_epochs=epochs,
                                          per_device_train_batch_size=batch_size, warmup_ratio=0.03,
                                          logging_steps=25, weight_decay=0.01,
                                          extra={"save_strategy": "steps", "save_steps": save_steps,
                                                 "save_only_model": True} if save_steps else {}))
    objective = DenseGroundingObjective(aux_weight) if aux_weight > 0 else Objective()
    log = train_stage(model, stage, objective, make_collator(processor, dense=aux_weight > 0),
                      ObjectsDataset(num_samples, family, seed, aliases),
                      out_dir / "_trainer", seed=seed, bf16=False, use_cpu=True, report_to=[])
    save_checkpoint(model, processor, out_dir)
    return log
