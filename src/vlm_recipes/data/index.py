"""A grounding split as an index: annotations in memory, images decoded when a sample is asked for.

Loading a source (OpenFoodFacts rows, COCO JSON, RefCOCO parquet, ms-swift JSONL, the synthetic cache)
reads its annotations only: where each image is, its size when the annotations give it, and its
objects. `GroundingIndex[i]` decodes image i and returns a `GroundingSample`; nothing keeps the pixels,
so memory does not grow with the dataset (COCO train2017's 118k images would need over 100 GB
decoded). The Trainer's sampler, the validation carve-out, `data.max_train`, the `name[train:N]` slice
and the sharding of evaluation between processes all pick row numbers of the index.

Our own index rather than a `datasets.Dataset` of paths: a COCO or ms-swift annotation file is read
once into small records (a whole run on 20,000 images: +15.4 MB peak RSS over 1,000, measured), with no Arrow copy on disk and no
`datasets` cache to invalidate; row-based sources that are Arrow already (the synthetic cache, a
saved DatasetDict, a hub download) are memory-mapped by `datasets` and the index holds row numbers.

Boxes are stored as fractions of the image's width and height, (x1, y1, x2, y2), so a sample is exact
at any size the image is decoded or downscaled to (`max_side`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..boxes import Box
from .samples import GroundingSample
from .sources import decode_image

Fractions = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Entry:
    """One sample's annotations: everything but the pixels."""
    image: Any
    """Where the image is: a file path, or a row number of the split it was read from."""
    objects: tuple[tuple[str, Fractions], ...]
    """(label, box as fractions (x1, y1, x2, y2) of the image's width and height); () for a negative."""
    image_id: str
    prompt: str
    label: str
    where: str
    """The row in words, for a one-line error when the image turns out unreadable."""
    task: str = "detect"
    size: tuple[Any, Any] | None = None
    """(width, height) the annotations give; the decoded image is checked against it."""


def fractions(box: Box, width: float, height: float) -> Fractions:
    x1, y1, x2, y2 = box
    return (x1 / width, y1 / height, x2 / width, y2 / height)


class GroundingIndex(Sequence):
    """A split of `Entry`s; indexing one decodes its image into a `GroundingSample`.

    `read_image(entry)` gives the stored image (a path, bytes, or {"bytes", "path"}), `max_side`
    downscales larger images (boxes follow, being fractions)."""

    def __init__(self, entries: Sequence[Entry], read_image: Callable[[Entry], Any], max_side: int | None):
        self.entries, self.read_image, self.max_side = list(entries), read_image, max_side

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self.sample(self.entries[i]) for i in range(*index.indices(len(self)))]
        return self.sample(self.entries[index])

    def __add__(self, other) -> list:
        return list(self) + list(other)  # as lists add: the samples, decoded

    def __radd__(self, other) -> list:
        return list(other) + list(self)

    def subset(self, indices: Sequence[int]) -> GroundingIndex:
        """These rows, still undecoded (validation carve-out, max_train, slices)."""
        return GroundingIndex([self.entries[i] for i in indices], self.read_image, self.max_side)

    def sample(self, entry: Entry):
        image = decode_image(self.read_image(entry), entry.where, size=entry.size)
        image = downscaled(image, self.max_side)
        width, height = image.size
        objects = tuple((label, canonical(box, width, height)) for label, box in entry.objects)
        return GroundingSample(image=image, objects=objects, width=width, height=height, image_id=entry.image_id,
                               prompt=entry.prompt, label=entry.label, task=entry.task)


def every_single_box(samples) -> bool:
    """Whether every sample is one object asked by category (`GroundingSample.single_box`), read from
    an index's annotations without decoding its images."""
    if isinstance(samples, GroundingIndex):
        return all(e.task == "detect" and len(e.objects) == 1 for e in samples.entries)
    return all(s.single_box for s in samples)


def downscaled(image: Image.Image, max_side: int | None) -> Image.Image:
    """`image` with its longer side at most `max_side` (None: as it is); the processor shrinks it further anyway."""
    width, height = image.size
    if max_side is None or max(width, height) <= max_side:
        return image
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def canonical(box: Fractions, width: int, height: int) -> Box:
    """The fractional box in pixels of a width x height image, clipped inside it. Rounding to 1/1000 px
    drops float noise (114.0000048 -> 114.0) and nothing else."""
    x1, y1, x2, y2 = (round(v, 3) for v in (box[0] * width, box[1] * height, box[2] * width, box[3] * height))
    return (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
