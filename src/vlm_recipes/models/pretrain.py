"""Pretraining the tiny base on a generic task, so that it behaves like a pretrained model.

The task is grounding generic shapes ("Locate the red circle.") and listing every object,
in the family's own box convention. It never shows a nutrition table: the recipes have to
teach that. The pretraining run uses the same Trainer as the recipes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..boxes import format_answer, resized_size
from ..config import FreezeConfig, StageConfig, TrainConfig
from ..data.chat import encode_for_training
from ..data.synthetic import render_shapes_example
from ..families import Family
from ..objectives.base import Objective
from ..training.trainer import train_stage
from .tiny import build_tiny, save_checkpoint

GROUND_PROMPTS = ["Locate the {} in the image.", "Find the {}.", "Where is the {}?", "Detect the {}."]
ALL_PROMPT = "Locate every object in the image."
# The tiny base's pixel budget (saved in its processor): at most 160x160 px, i.e. 5x5 tokens for
# Qwen3-VL, so that training steps take a fraction of a second on a CPU.
MIN_PIXELS, MAX_PIXELS = 3136, 25600


@dataclass
class ShapesSample:
    image: Image.Image
    prompt: str
    answer: str


class ShapesDataset:
    """Sample i is rendered on demand from its own seed: no images held in memory."""

    def __init__(self, size: int, family: Family, seed: int):
        self.size, self.family, self.seed = size, family, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> ShapesSample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = random.Random(self.seed * 1_000_003 + index)
        image, objects = render_shapes_example(rng)
        w, h = image.size
        resized = resized_size(w, h, self.family, MIN_PIXELS, MAX_PIXELS)
        if rng.random() < 0.6:
            label, box = rng.choice(objects)
            prompt, answer_objects = rng.choice(GROUND_PROMPTS).format(label), [(label, box)]
        else:
            # reading order (top to bottom, then left to right): a random order is unlearnable
            prompt, answer_objects = ALL_PROMPT, sorted(objects, key=lambda o: (o[1][1], o[1][0]))
        return ShapesSample(image, prompt, format_answer(answer_objects, w, h, self.family, resized))


def pretrain_base(family: Family, out_dir: Path, num_samples: int, epochs: float, learning_rate: float,
                  seed: int = 0, batch_size: int = 16, save_steps: int = 0) -> list[dict]:
    """Build the tiny model, pretrain it on shapes, save it with its processor to `out_dir`."""
    model, processor = build_tiny(family, MIN_PIXELS, MAX_PIXELS, seed=seed)
    samples = ShapesDataset(num_samples, family, seed)

    def collate(batch: list[ShapesSample]):
        return encode_for_training(processor, [s.image for s in batch], [s.prompt for s in batch],
                                   [s.answer for s in batch])

    stage = StageConfig(name="pretrain", freeze=FreezeConfig(vision=False, merger=False, llm=False),
                        train=TrainConfig(learning_rate=learning_rate, num_train_epochs=epochs,
                                          per_device_train_batch_size=batch_size, warmup_ratio=0.03,
                                          logging_steps=25, weight_decay=0.01,
                                          extra={"save_strategy": "steps", "save_steps": save_steps,
                                                 "save_only_model": True} if save_steps else {}))
    log = train_stage(model, stage, Objective(), collate, samples, out_dir / "_trainer", seed=seed, bf16=False,
                      use_cpu=True, report_to=[])
    save_checkpoint(model, processor, out_dir)
    return log
