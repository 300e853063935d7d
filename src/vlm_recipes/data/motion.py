"""Synthetic video retrieval ("synthetic-video"): short clips of one coloured shape crossing the
frame, captioned by colour, shape and the direction it moves, e.g. "a red circle moving right".

A caption needs time to resolve: the same clip played backwards is "... moving left" and shows
exactly the same frames, so a model that averages its frames cannot tell the two apart. The
reversed clip is each training query's first hard negative; further negatives change the colour
or the shape (the direction kept). Sample i depends only on (seed, split, i).

A clip is 16 frames at 8 fps (2 s), 96x96 px; `data.video` samples it like any video file
(default for the mrl-video recipe: 8 frames, i.e. 4 temporal patches of 3x3 tokens on the tiny
base). The test gallery holds pairwise different motions: at most 5 colours x 4 shapes x 4
directions = 80 clips.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..config import VideoConfig
from ..errors import InputError
from .retrieval import SCENE_COLOURS, SCENE_SHAPES, RetrievalSample, Target
from .synthetic import COLOURS, draw_shape, jitter
from .video import Clip, sample_indices

SIDE = 96  # px, square frames
NATIVE_FRAMES, NATIVE_FPS = 16, 8.0
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


@dataclass(frozen=True)
class Motion:
    colour: str
    shape: str
    direction: str

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} moving {self.direction}"


ALL_MOTIONS = [Motion(c, s, d) for c in SCENE_COLOURS for s in SCENE_SHAPES for d in DIRECTIONS]


def random_motion(rng: random.Random) -> Motion:
    return Motion(rng.choice(SCENE_COLOURS), rng.choice(SCENE_SHAPES), rng.choice(list(DIRECTIONS)))


def appearance_change(rng: random.Random, motion: Motion) -> Motion:
    """The same direction with another colour or shape."""
    if rng.random() < 0.5:
        return replace(motion, colour=rng.choice([c for c in SCENE_COLOURS if c != motion.colour]))
    return replace(motion, shape=rng.choice([s for s in SCENE_SHAPES if s != motion.shape]))


def render_motion(rng: random.Random, motion: Motion, video: VideoConfig) -> Clip:
    """The clip's frames that `video` samples: the shape crosses from one edge to the other at a
    steady speed, on a quiet noisy background that stays still."""
    size = rng.randint(26, 34)
    start, end = rng.randint(0, 6), SIDE - size - rng.randint(0, 6)  # along the motion
    across = rng.randint(6, SIDE - size - 6)  # perpendicular to it, fixed
    dx, dy = DIRECTIONS[motion.direction]
    if dx < 0 or dy < 0:
        start, end = end, start
    colour = jitter(rng, COLOURS[motion.colour], 12)
    base = rng.randint(205, 230)
    tint = np.array([base + rng.randint(-4, 4) for _ in range(3)], np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(-10, 11, (SIDE, SIDE, 1), dtype=np.int16)
    background = Image.fromarray(np.clip(tint + noise, 0, 255).astype(np.uint8))
    indices = sample_indices(NATIVE_FRAMES, NATIVE_FPS, video)
    frames = []
    for index in indices:
        along = round(start + (end - start) * index / (NATIVE_FRAMES - 1))
        x, y = (along, across) if dx else (across, along)
        frame = background.copy()
        draw_shape(ImageDraw.Draw(frame), motion.shape, (x, y, x + size, y + size), colour)
        frames.append(frame)
    return Clip(tuple(frames), NATIVE_FPS, tuple(indices), NATIVE_FRAMES)


def motion_sample(rng: random.Random, motion: Motion, sample_id: str, num_hard_negatives: int,
                  video: VideoConfig) -> RetrievalSample:
    clip = render_motion(rng, motion, video)
    negatives = [Target(video=clip.reversed(), key=f"{sample_id}-reversed")][:num_hard_negatives]
    for j in range(1, num_hard_negatives):
        other = render_motion(rng, appearance_change(rng, motion), video)
        negatives.append(Target(video=other, key=f"{sample_id}-neg{j}"))
    return RetrievalSample(motion.caption(), Target(video=clip, key=sample_id), negatives, sample_id)


class SyntheticMotion:
    """A lazily rendered synthetic video split (the Trainer indexes it; nothing is held in memory)."""

    def __init__(self, size: int, split: str, seed: int, num_hard_negatives: int, video: VideoConfig):
        self.size, self.split, self.seed = size, split, seed
        self.num_hard_negatives, self.video = num_hard_negatives, video

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> RetrievalSample:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = random.Random(f"motion:{self.seed}:{self.split}:{index}")
        return motion_sample(rng, random_motion(rng), f"{self.split}-{index:05d}", self.num_hard_negatives,
                             self.video)


def motion_gallery(size: int, seed: int, video: VideoConfig) -> list[RetrievalSample]:
    """`size` test clips of pairwise different motions, so that each caption has one right clip."""
    if size > len(ALL_MOTIONS):
        raise InputError(f"data.num_test={size}: synthetic-video has {len(ALL_MOTIONS)} different motions "
                         f"(colour x shape x direction); set data.num_test <= {len(ALL_MOTIONS)}")
    order = random.Random(f"motion:{seed}:test").sample(ALL_MOTIONS, size)
    return [motion_sample(random.Random(f"motion:{seed}:test:{i}"), motion, f"test-{i:05d}", 0, video)
            for i, motion in enumerate(order)]


def load_motion_splits(num_train: int, num_test: int, seed: int, num_hard_negatives: int, max_train: int | None,
                       max_test: int | None, video: VideoConfig) -> dict[str, Any]:
    train = num_train if max_train is None else min(num_train, max_train)
    test = num_test if max_test is None else min(num_test, max_test)
    return {"train": SyntheticMotion(train, "train", seed, num_hard_negatives, video),
            "test": motion_gallery(test, seed, video)}
