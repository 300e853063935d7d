"""The grounding sample: one image, the question asked of it, and the objects that answer it. The
bottom of the grounding data: the index (`index.py`) builds samples, the loaders (`detection.py`)
build indexes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from PIL import Image

from ..boxes import Box
from ..config import DataConfig

Object = tuple[str, Box]
"""(label, canonical box): one object a grounding answer names."""


@dataclass
class GroundingSample:
    """One image, the question asked of it, and every object that answers it (zero or more).

    A category query ("Locate the nutrition table in the image.", "Detect every star.") is answered by
    every object of that category, a referring expression ("the leftmost table", task "refer") by the
    one object it singles out, and a question about an absent category by no object at all. The
    shipped recipes' nutrition-table rows are the one-object case."""
    image: Image.Image  # RGB; the one attribute that touches pixels (see `load_image`)
    objects: tuple[Object, ...]  # canonical (x1, y1, x2, y2) in pixels of `image`
    width: int
    height: int
    image_id: str
    prompt: str = DataConfig.prompt
    label: str = DataConfig.label
    """The name the question asks for: every object's label, and the answer's label for predictions."""
    task: Literal["detect", "refer"] = "detect"

    @property
    def box(self) -> Box:
        """The one object's box (single-box data: the recipes' nutrition table, dense targets)."""
        return self.objects[0][1]

    @property
    def boxes(self) -> list[Box]:
        return [box for _, box in self.objects]

    @property
    def single_box(self) -> bool:
        """The shape every sample of the shipped recipes has: one category query, one object."""
        return self.task == "detect" and len(self.objects) == 1


DetectionSample = GroundingSample
"""The name the single-box code knew it by."""
