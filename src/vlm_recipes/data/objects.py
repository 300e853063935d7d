"""The tiny base's generic pretraining data: one generic object per image ("Locate the star." ->
its box, labelled "red star"): a shape, a framed box, a text block or a striped box on a noisy
background, answered in the family's own box convention. It never shows a nutrition table: the
recipes have to teach that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from ..boxes import Box, format_answer, resized_size
from ..config import DataConfig
from ..families import Family
from .synthetic import COLOURS, GENERIC, SHAPES, render_object_example

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
KINDS, COLOUR_NAMES = SHAPES + GENERIC, list(COLOURS)
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
        resized = resized_size(w, h, self.family, MIN_PIXELS, MAX_PIXELS)
        answer = format_answer([(label, box)], w, h, self.family, resized)
        return ObjectSample(image, prompt, answer, box, KINDS.index(kind),
                            COLOUR_NAMES.index(colour) if colour else IGNORE)


def _alias(rng: random.Random) -> str:
    while True:
        alias = " ".join(rng.sample(ALIAS_WORDS, rng.choice([1, 2, 2])))
        if alias not in HELD_OUT_LABELS:
            return alias
