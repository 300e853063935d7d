"""Paired retrieval data: a text query, its target (an image, an image with text, or a text) and
optional hard negatives (targets that must rank below the positive).

Sources (`load_retrieval_splits(source)`): "synthetic", generated scenes whose captions need
composition (below), or anything `sources.open_source` opens (.jsonl file or a directory of them,
hub id, save_to_disk directory, parquet) with rows {"query": str, "target": image or image path
or text, optional "hard_negatives": [...], optional "target_text": str}. `train.jsonl` brings its
sibling test.jsonl (or val/validation.jsonl); a source with no test split (after the "test" ->
"val" -> "validation" fallback) keeps its last `data.num_test` train rows as the test split.

A string target is an image path when it ends in an image suffix, a video when it ends in a video
suffix (.mp4, .webm, .avi, ...; data/video.py) or names a directory of frames with a trailing "/"
(relative paths are relative to the .jsonl file; for other sources, to the working directory),
else a text. An image or video path that does not exist is an error, never a text. A query is a
text, or a video path (its text, if any, in "query_text"). Hard negatives take what targets take.
Videos are sampled as `data.video` says (config.VideoConfig), once, when the rows are read.

Synthetic scenes: two groups of identical shapes, one per half of the image (left/right or
top/bottom), e.g. "two red circles on the left and a blue star on the right". Resolving a caption
needs every attribute AND its binding to a position: a hard negative differs in exactly one
attribute (a count, a colour, a shape) or swaps the two groups' positions, which keeps the
caption's bag of words identical. Sample i depends only on (seed, split, i).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from ..config import VideoConfig
from ..errors import InputError
from .sources import IMAGE_SUFFIXES, Rows, decode_image, open_source, resolve_split
from .synthetic import COLOURS, draw_shape, jitter
from .video import VIDEO_SUFFIXES, Clip, read_video


@dataclass
class Target:
    """One retrievable item: an image or a video (each with optional text), or a text alone."""
    image: Image.Image | None = None  # RGB
    text: str | None = None
    key: str = ""  # identity in a gallery: equal keys are the same item
    video: Clip | None = None  # sampled frames (data/video.py)

    def __post_init__(self):
        if self.image is None and self.video is None and not self.text:
            raise ValueError("a target needs an image, a video or a text")
        if self.image is not None and self.video is not None:
            raise ValueError("a target is an image or a video, not both")

    @property
    def visual(self) -> Image.Image | Clip | None:
        """What the model sees besides the text: the image, the video's frames, or None."""
        return self.image if self.image is not None else self.video


@dataclass
class RetrievalSample:
    query: str  # its text ("" for a query that is only a video or image)
    target: Target
    hard_negatives: list[Target] = field(default_factory=list)
    sample_id: str = ""
    query_visual: Image.Image | Clip | None = None  # a video (or image) query

    @property
    def query_text(self) -> str | None:
        return self.query or None

    @property
    def query_label(self) -> str:
        """How reports name the query: its text, else its sample id."""
        return self.query or self.sample_id


# --- synthetic compositional scenes -------------------------------------------------------

SCENE_COLOURS = ("red", "green", "blue", "yellow", "black")
SCENE_SHAPES = ("circle", "square", "triangle", "cross")
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
PLURALS = {"cross": "crosses"}
HALF = 112  # px: a scene is 2x1 halves of HALF x HALF (8x4 = 32 LLM tokens for Qwen2-VL)
POSITIONS = {"horizontal": ("left", "right"), "vertical": ("top", "bottom")}
LAYOUTS = ("horizontal",)


@dataclass(frozen=True)
class Group:
    count: int
    colour: str
    shape: str

    def words(self) -> str:
        noun = self.shape if self.count == 1 else PLURALS.get(self.shape, self.shape + "s")
        return f"{'a' if self.count == 1 else COUNT_WORDS[self.count]} {self.colour} {noun}"


@dataclass(frozen=True)
class Scene:
    first: Group  # left or top
    second: Group  # right or bottom
    layout: Literal["horizontal", "vertical"]

    def caption(self, second_first: bool = False) -> str:
        """E.g. "two red circles on the left and a blue star on the right"."""
        parts = [f"{g.words()} {'at' if p in ('top', 'bottom') else 'on'} the {p}"
                 for g, p in zip((self.first, self.second), POSITIONS[self.layout])]
        return " and ".join(reversed(parts) if second_first else parts)


def random_group(rng: random.Random) -> Group:
    return Group(rng.randint(1, 3), rng.choice(SCENE_COLOURS), rng.choice(SCENE_SHAPES))


def random_scene(rng: random.Random) -> Scene:
    first = random_group(rng)
    second = random_group(rng)
    while (second.colour, second.shape) == (first.colour, first.shape):  # a swap must change the scene
        second = random_group(rng)
    return Scene(first, second, rng.choice(LAYOUTS))


def one_attribute_change(rng: random.Random, scene: Scene) -> Scene:
    """A different scene that differs from `scene` in one attribute, or by swapping positions."""
    kind = rng.choice(["count", "colour", "shape", "swap"])
    if kind == "swap":
        return replace(scene, first=scene.second, second=scene.first)
    which = rng.choice(["first", "second"])
    group, other = getattr(scene, which), scene.second if which == "first" else scene.first
    choices = {"count": [1, 2, 3], "colour": SCENE_COLOURS, "shape": SCENE_SHAPES}[kind]
    values = [v for v in choices if v != getattr(group, kind)]
    changed = replace(group, **{kind: rng.choice(values)})
    if (changed.colour, changed.shape) == (other.colour, other.shape):
        return replace(scene, first=scene.second, second=scene.first)  # keep both groups distinct
    return replace(scene, **{which: changed})


def render_scene(rng: random.Random, scene: Scene) -> Image.Image:
    """Each group drawn inside its own half on a light noisy background."""
    horizontal = scene.layout == "horizontal"
    w, h = (2 * HALF, HALF) if horizontal else (HALF, 2 * HALF)
    # a quiet background: what differs between two scenes is their objects, not the paper
    base = rng.randint(210, 230)
    tint = np.array([base + rng.randint(-4, 4) for _ in range(3)], np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-10, 11, (h, w, 1), dtype=np.int16)
    img = Image.fromarray(np.clip(tint + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for index, group in enumerate((scene.first, scene.second)):
        ox, oy = (index * HALF, 0) if horizontal else (0, index * HALF)
        # each object in its own cell of a 2x2 grid of the half, jittered: large shapes never
        # overlap, so colour, shape and count are plain to see even at 16-28 px per patch
        cells = rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], group.count)
        cell = HALF // 2
        for cx, cy in cells:
            size = rng.randint(34, cell - 4)
            x0 = ox + cx * cell + rng.randint(2, cell - size - 2)
            y0 = oy + cy * cell + rng.randint(2, cell - size - 2)
            draw_shape(draw, group.shape, (x0, y0, x0 + size, y0 + size), jitter(rng, COLOURS[group.colour], 12))
    return img


def scene_sample(seed: int, split: str, index: int, num_hard_negatives: int) -> RetrievalSample:
    """Sample `index` of a synthetic split: its caption, image and one-attribute hard negatives."""
    rng = random.Random(f"retrieval:{seed}:{split}:{index}")
    scene = random_scene(rng)
    return _scene_sample(rng, scene, f"{split}-{index:05d}", num_hard_negatives)


def _scene_sample(rng: random.Random, scene: Scene, sample_id: str, num_hard_negatives: int) -> RetrievalSample:
    caption = scene.caption(second_first=rng.random() < 0.5)
    negatives = []
    for j in range(num_hard_negatives):
        other = one_attribute_change(rng, scene)
        negatives.append(Target(render_scene(rng, other), key=f"{sample_id}-neg{j}"))
    target = Target(render_scene(rng, scene), key=sample_id)
    return RetrievalSample(caption, target, negatives, sample_id)


class SyntheticRetrieval:
    """A lazily rendered synthetic split (the Trainer indexes it; nothing is held in memory)."""

    def __init__(self, size: int, split: str, seed: int, num_hard_negatives: int = 0):
        self.size, self.split, self.seed, self.num_hard_negatives = size, split, seed, num_hard_negatives

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> RetrievalSample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return scene_sample(self.seed, self.split, index, self.num_hard_negatives)


def synthetic_gallery(size: int, seed: int) -> list[RetrievalSample]:
    """`size` test samples with pairwise different scenes, so each caption has one right image."""
    samples, seen = [], set()
    for index in range(100 * size):
        if len(samples) == size:
            break
        rng = random.Random(f"retrieval:{seed}:test:{index}")
        scene = random_scene(rng)
        if scene in seen:
            continue
        seen.add(scene)
        samples.append(_scene_sample(rng, scene, f"test-{len(samples):05d}", 0))
    return samples


# --- files and datasets ---------------------------------------------------------------------

def load_retrieval_splits(source: str, num_train: int, num_test: int, seed: int, num_hard_negatives: int,
                          max_train: int | None = None, max_test: int | None = None,
                          video: VideoConfig = VideoConfig()) -> dict[str, Any]:
    """{"train": indexable samples, "test": list of samples} from `source` (module docstring).

    `max_train`/`max_test` keep the first rows of a split; `num_train`/`num_test` are the row
    counts generated for "synthetic" ("synthetic-video" is motion.py's, dispatched by splits.py) (and `num_test` the rows held out of a
    train-only source). `video`: how video files and generated clips are sampled.
    """
    if source == "synthetic":
        train = SyntheticRetrieval(num_train if max_train is None else min(num_train, max_train), "train", seed,
                                   num_hard_negatives)
        return {"train": train, "test": synthetic_gallery(num_test if max_test is None else
                                                          min(num_test, max_test), seed)}
    opened = open_source(source)
    splits = {}
    for split, (rows, indices) in _train_test(opened.splits, source, num_test).items():
        limit = {"train": max_train, "test": max_test}[split]
        splits[split] = [row_sample(rows[j], f"row {i} of the {split} split of {source}", opened.base_dir,
                                    f"{split}-{i:05d}", video) for i, j in enumerate(indices[:limit])]
    _check_negatives(splits["train"], num_hard_negatives, source)
    return splits


def _train_test(splits: dict[str, Rows], source: str, num_test: int) -> dict[str, tuple[Rows, range]]:
    """Each split's rows and the indices that belong to it."""
    if "train" not in splits:
        raise InputError(f"data.dataset={source!r} needs a train split; it has {', '.join(splits) or 'none'}")
    train, test = splits["train"], resolve_split(splits, "test")
    if test is not None:
        return {"train": (train, range(len(train))), "test": (splits[test], range(len(splits[test])))}
    if len(train) <= num_test:
        raise InputError(f"data.dataset={source!r} has {len(train)} rows, not more than data.num_test="
                         f"{num_test}: add rows, lower data.num_test, or add a test.jsonl next to train.jsonl")
    held_out = len(train) - num_test
    return {"train": (train, range(held_out)), "test": (train, range(held_out, len(train)))}


def row_sample(row: dict, where: str, base_dir: Path, default_id: str, video: VideoConfig = VideoConfig()
               ) -> RetrievalSample:
    """A row {"query": text or video path, "target": ..., "hard_negatives": [...], "target_text",
    "query_text", "id"} as a sample; a video query may carry its own text in "query_text"."""
    query = row.get("query") if isinstance(row, dict) else None
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: needs a non-empty string 'query' (a text, or a video path)")
    if row.get("target") is None:
        raise InputError(f"{where}: needs a 'target' (an image or video path, or a text)")
    negatives = row.get("hard_negatives") or []
    if not isinstance(negatives, list):
        raise InputError(f"{where}: 'hard_negatives' must be a list of image or video paths or texts")
    query_visual = None
    if Path(query).suffix.lower() in VIDEO_SUFFIXES:
        query_visual = as_target(query, None, where, base_dir, video).video
        query = row.get("query_text") or ""
    target = as_target(row["target"], row.get("target_text"), where, base_dir, video)
    return RetrievalSample(query, target, [as_target(n, None, where, base_dir, video) for n in negatives],
                           str(row.get("id") or default_id), query_visual)


def as_target(value: Any, text: str | None, where: str, base_dir: Path, video: VideoConfig = VideoConfig()) -> Target:
    """An image (PIL, stored {"bytes", "path"} or a path with an image suffix), a video (a path
    with a video suffix, a directory of frames, or a stored {"path"} of a video) or a text."""
    if isinstance(value, dict) and value.get("video") is not None:  # a `datasets` Video column (sources.undecoded)
        stored = value["video"]
        if stored.get("bytes") is not None:
            return Target(text=text, key=f"video:{stored.get('path') or id(stored)}",
                          video=read_video(stored["bytes"], video, where))
        value = stored.get("path") or ""
    if isinstance(value, (Image.Image, dict)):
        image = decode_image(value, where)
        # no name to know it by: each occurrence is its own gallery item, as it always was for the
        # images `datasets` decodes
        return Target(image, text, key=f"image:{id(image)}")
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: a target must be an image or video path or a non-empty text, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    if Path(value).suffix.lower() in VIDEO_SUFFIXES or (value.endswith("/") and path.is_dir()):
        if not path.exists():
            raise InputError(f"{where}: video {value!r} not found (relative paths are relative to {base_dir})")
        return Target(text=text, key=f"video:{path.resolve()}", video=read_video(path, video, where))
    if Path(value).suffix.lower() in IMAGE_SUFFIXES:
        if not path.is_file():
            raise InputError(f"{where}: image {value!r} not found (relative paths are relative to {base_dir})")
        return Target(decode_image(str(path), where), text, key=f"image:{path.resolve()}")
    return Target(None, value, key=f"text:{value}")


def _check_negatives(samples: list[RetrievalSample], wanted: int, source: str) -> None:
    short = next((s for s in samples if len(s.hard_negatives) < wanted), None)
    if short is not None:
        raise InputError(f"data.dataset={source!r}: row {short.sample_id} has {len(short.hard_negatives)} hard "
                         f"negative(s) but objective.options.num_hard_negatives={wanted}; lower it or add negatives")
