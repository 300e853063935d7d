"""The entry point every objective calls: `load_splits(data, kind, seed)` opens `data.dataset` for
one kind of objective through its loader (detection, retrieval, synthetic-video motion, messages)
and carves the validation split from the training rows. The top of `data/`: it imports the
loaders, which import `sources` (the bottom), never this module.
"""

from __future__ import annotations

import random
from typing import Literal

from ..config import DataConfig
from ..errors import InputError
from .detection import load_detection_splits
from .messages import messages_splits, open_messages_source
from .motion import load_motion_splits
from .retrieval import load_retrieval_splits
from .sources import parse_split_spec


def load_splits(data: DataConfig, kind: Literal["detection", "retrieval", "chat"], seed: int,
                num_hard_negatives: int = 0) -> dict[str, list]:
    """{"train": samples, "val": samples, "test": samples} of `data.dataset` for one kind of
    objective; "val" is carved from the training samples (`carve_validation`); detection data with
    `data.num_shifted` > 0 adds "shifted", the out-of-domain test split.

    A slice `name[train:N,test:M]` overrides `data.max_train`/`data.max_test` for every kind: a
    seeded random subset of detection rows, the first rows of retrieval and conversation data.
    "chat": a dataset with a `messages` column gives ChatSamples (sliced, `max_*` unused); any other
    source gives DetectionSamples. `num_hard_negatives`: retrieval only, negatives each row must have.
    """
    if kind not in ("detection", "retrieval", "chat"):
        raise ValueError(f"kind={kind!r}: must be detection, retrieval or chat")
    if data.num_shifted and kind != "detection":
        raise InputError(f"data.num_shifted={data.num_shifted}: an out-of-domain split is scored by detection "
                         "IoU, which this recipe's objective does not use; set data.num_shifted=0")
    return carve_validation(_load_kind(data, kind, seed, num_hard_negatives), data.num_val, seed)


def _load_kind(data: DataConfig, kind: str, seed: int, num_hard_negatives: int) -> dict[str, list]:
    source, limits = parse_split_spec(data.dataset)
    max_train, max_test = limits.get("train", data.max_train), limits.get("test", data.max_test)
    if kind == "retrieval" and source == "synthetic-video":
        return load_motion_splits(data.num_train, data.num_test, seed, num_hard_negatives, max_train, max_test,
                                  data.video)
    if kind == "retrieval":
        return load_retrieval_splits(source, data.num_train, data.num_test, seed, num_hard_negatives,
                                     max_train, max_test, data.video)
    if source == "synthetic-video":
        raise InputError("data.dataset=synthetic-video is retrieval data (text <-> video pairs): use it with "
                         "an mrl recipe (mrl-video)")
    messages = open_messages_source(source) if kind == "chat" else None
    if messages is not None:
        return messages_splits(messages, source, limits)
    return load_detection_splits(source, num_train=data.num_train, num_test=data.num_test, max_train=max_train,
                                 max_test=max_test, seed=seed, num_shifted=data.num_shifted, prompt=data.prompt,
                                 label=data.label, keep_negatives=data.keep_negatives, train_split=data.train_split,
                                 test_split=data.test_split, coco_samples=data.coco_samples,
                                 coco_negative_rate=data.coco_negative_rate)


def carve_validation(splits: dict[str, list], num_val: int, seed: int) -> dict[str, list]:
    """`splits` with "val": min(num_val, a tenth of train) training samples picked at random
    (seeded), removed from "train", which keeps its order. Never taken from "test": the test split
    stays the untouched final judge, and the validation rows are never trained on."""
    train = splits["train"]
    count = min(num_val, len(train) // 10)
    picked = set(random.Random(seed).sample(range(len(train)), count))
    if hasattr(train, "subset"):  # an index (data/index.py): rows picked, nothing decoded
        rest = train.subset([i for i in range(len(train)) if i not in picked])
        return {**splits, "train": rest, "val": train.subset(sorted(picked)) if picked else []}
    rest = [s for i, s in enumerate(train) if i not in picked] if isinstance(train, list) else Without(train, picked)
    return {**splits, "train": rest, "val": [train[i] for i in sorted(picked)]}


class Without:
    """A lazily generated split (synthetic rows rendered when indexed) without some of its rows, still
    lazy: walking it into a list would render every row up front and hold them all in memory."""

    def __init__(self, rows, dropped: set[int]):
        self.rows, self.kept = rows, [i for i in range(len(rows)) if i not in dropped]

    def __len__(self) -> int:
        return len(self.kept)

    def __getitem__(self, index: int):
        return self.rows[self.kept[index]]
