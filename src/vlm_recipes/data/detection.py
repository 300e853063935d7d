"""One loader for the grounding recipes: a split of grounding samples (image, prompt, zero or more
boxes) from any detection source, as an index (`index.GroundingIndex`: annotations read now, each
image decoded when its sample is used).

Sources (`load_detection_splits(source)`): "synthetic", "synthetic-multi", "synthetic-refer"
(generated, cached), a COCO 2017 or Roboflow layout (`coco.py`), or anything `sources.open_source`
opens (a save_to_disk directory, parquet or JSON file(s), a hub id such as
openfoodfacts/nutrition-table-detection), whose rows are read by their columns: the OpenFoodFacts
schema (here), the lmms-lab RefCOCO schema (`refcoco.py`) or ms-swift grounding rows (`swift.py`).
The real dataset's splits are "train" and "val": asking for "test" falls back to "val" (or
"validation"), the one fallback of `sources.resolve_split`.

Width/height columns: the decoded image is the truth, but a column that disagrees with it by
more than 1 px means the normalised box may describe a different picture (rotated or
resized), so that row is an error rather than silently wrong training data. One exception:
when the columns match the image after applying its EXIF orientation, the image is rotated to
match them (`sources.decode_image`). The image is checked when its sample is first read.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

from ..boxes import openfoodfacts_to_xyxy, validate_box
from ..config import DataConfig
from ..errors import InputError
from . import scenes, synthetic
from .cache import cached_dataset
from .coco import coco_entries, find_coco
from .index import Entry, GroundingIndex
from .refcoco import is_refcoco, refcoco_entries
from .samples import DetectionSample, GroundingSample, Object  # noqa: F401 (their names here, as before)
from .sources import Rows, open_source, resolve_split, undecoded
from .swift import is_swift, swift_entries
from .synthetic import CATEGORY, make_nutrition_dataset

log = logging.getLogger(__name__)


SYNTHETIC_SCENES = ("synthetic-multi", "synthetic-refer")
"""Generated grounding data beyond one box (data/scenes.py): several objects of several categories
with some questions about an absent one, and referring expressions."""


def load_detection_splits(source: str, train_split: str = "train", test_split: str = "test",
                          max_train: int | None = None, max_test: int | None = None, seed: int = 0,
                          num_train: int = 800, num_test: int = 100, max_side: int | None = 1024,
                          num_shifted: int = 0, prompt: str = DataConfig.prompt, label: str = DataConfig.label,
                          keep_negatives: bool = DataConfig.keep_negatives, coco_samples: str = "each",
                          coco_negative_rate: float = DataConfig.coco_negative_rate) -> dict[str, GroundingIndex]:
    """{"train": index, "test": index} from `source` (see the module docstring): annotations read, images
    decoded when a sample is used (data/index.py).

    `max_train`/`max_test` keep a random subset of that size, fixed by `seed`, in the original
    row order. `num_train`/`num_test` are the row counts generated for "synthetic" only.
    `max_side` downscales larger images (box scaled with them) so that a real dataset of
    multi-megapixel photos fits in memory; the Qwen processor shrinks them further anyway.
    None keeps full resolution. `num_shifted` > 0 adds "shifted": that many rows of the out-of-domain
    split (generated in the shifted style for "synthetic"; else the source's split "shifted").
    `prompt`/`label`: the question and answer label of rows that do not carry their own (the
    OpenFoodFacts schema). `keep_negatives`: keep such rows without a box of the asked category as
    negatives (answer: nothing); rows with their own `prompt` column are always kept.
    `coco_samples`, `coco_negative_rate`: how a COCO image becomes samples (data/coco.py).
    """
    _check_limits(max_train=max_train, max_test=max_test, max_side=max_side)
    coco = None if source == "synthetic" or source in SYNTHETIC_SCENES else find_coco(source)
    if coco is not None:
        if num_shifted:
            raise InputError(f"data.num_shifted={num_shifted}: COCO data has no out-of-domain split; set "
                             "data.num_shifted=0")
        splits = {"train": (train_split, max_train), "test": (test_split, max_test)}
        return {name: _coco_index(source, coco, *split, seed, max_side, coco_samples, coco_negative_rate)
                for name, split in splits.items()}
    base_dir = Path.cwd()
    if source == "synthetic" or source in SYNTHETIC_SCENES:
        # rows are i.i.d. and row i does not depend on the count: generating fewer is the same as
        # subsampling, only faster
        counts = dict(n_train=min(num_train, max_train or num_train), n_test=min(num_test, max_test or num_test),
                      n_shifted=num_shifted)
        splits = undecoded(generated(source, seed, **counts))
    else:
        opened = open_source(source)
        splits, base_dir = opened.splits, opened.base_dir
    reading = _Reading(source, max_side, prompt, label, keep_negatives, base_dir)
    out = {"train": _convert(reading, splits, train_split, max_train, seed),
           "test": _convert(reading, splits, test_split, max_test, seed)}
    if num_shifted:
        out["shifted"] = _convert(reading, splits, "shifted", num_shifted, seed)
    return out


def _check_limits(**limits) -> None:
    for name, value in limits.items():
        if value is not None and value < 1:
            raise InputError(f"{name}={value}: must be >= 1 (or None for no limit)")


def generated(source: str, seed: int, **counts):
    """The generated dataset `source` (synthetic, synthetic-multi, synthetic-refer), from the cache
    when it was generated before with the same arguments."""
    arguments = dict(counts, seed=seed)
    if source == "synthetic":
        return cached_dataset("nutrition", Path(synthetic.__file__), arguments, lambda: make_nutrition_dataset(**arguments))
    arguments["kind"] = source.removeprefix("synthetic-")
    return cached_dataset(source, Path(scenes.__file__), arguments, lambda: scenes.make_scene_dataset(**arguments))


def _coco_index(source: str, coco: dict, split: str, limit: int | None, seed: int, max_side: int | None,
                mode: str, negative_rate: float) -> GroundingIndex:
    name = resolve_split(coco, split)
    if name is None:
        raise InputError(f"dataset {source} has no split {split!r} (it has: {', '.join(coco)}): choose one of "
                         "those splits (--split, data.test_split, data.train_split)")
    entries = coco_entries(coco[name], mode, negative_rate, seed)
    if not entries:
        raise InputError(f"dataset {source} has no annotated image in split {name!r}: annotate some or choose "
                         "another split")
    index = GroundingIndex(entries, _path_image, max_side)
    if limit is not None and limit < len(index):
        index = index.subset(sorted(random.Random(f"{seed}:{name}").sample(range(len(index)), limit)))
    return index


def _path_image(entry: Entry):
    return entry.image


# --- rows -> index entries ---------------------------------------------------------------

@dataclass(frozen=True)
class _Reading:
    """How rows of one source become samples."""
    source: str
    max_side: int | None
    prompt: str
    label: str
    keep_negatives: bool
    base_dir: Path
    """Where a relative image path in a row points from (the JSON file's folder)."""


def _convert(reading: _Reading, splits: dict[str, Rows], split: str, limit: int | None,
             seed: int) -> GroundingIndex:
    """The split's rows as an index: annotations read now, images when a sample is asked for."""
    source = reading.source
    name = resolve_split(splits, split)
    if name is None:
        raise InputError(f"dataset {source} has no split {split!r} (it has: {', '.join(splits) or 'none'})"
                         ": choose one of those splits or add the missing one")
    rows = splits[name]
    if len(rows) == 0:
        raise InputError(f"dataset {source} has no rows in split {name!r}: add rows or choose another "
                         "split")
    indices = list(range(len(rows)))
    if limit is not None and limit < len(rows):
        # seeded by the split name too, so train and test subsets are drawn independently
        indices = sorted(random.Random(f"{seed}:{name}").sample(indices, limit))
    files = getattr(rows, "files", [])
    in_file = f" ({files[0].name})" if len(files) == 1 and str(files[0]) != source else ""  # e.g. train.jsonl
    entries_of = row_converter(rows.column_names)
    annotations = rows if entries_of is refcoco_entries else annotation_rows(rows)  # RefCOCO: sizes from headers
    entries, skipped = [], 0
    for i in indices:
        found = entries_of(annotations[i], i, f"row {i} of split {name!r} of dataset {source}{in_file}", f"{name}-{i}",
                           reading)
        skipped += not found
        entries += found
    if skipped:
        log.warning("skipped %d row(s) without any box in split %r of dataset %s "
                    "(data.keep_negatives=true keeps them as negatives)", skipped, name, source)
    if not entries:
        raise InputError(f"dataset {source} has no rows with a box in split {name!r}: "
                         "annotate at least one nutrition table or choose another split")
    return GroundingIndex(entries, _stored_image(rows), reading.max_side)


def annotation_rows(rows: Rows):
    """The rows without their image column where the rows are a `datasets.Dataset` (the synthetic cache,
    a saved DatasetDict, a hub download), so that reading the annotations copies no image bytes."""
    image_columns = [c for c in ("image", "images") if c in rows.column_names]
    if hasattr(rows, "select_columns") and image_columns:
        return rows.remove_columns(image_columns)
    return rows


def _stored_image(rows: Rows):
    def read(entry: Entry):
        return entry.image if isinstance(entry.image, str) else rows[entry.image]["image"]
    return read


def row_converter(columns: list[str]):
    """The function turning one row into entries, chosen by the split's columns: the RefCOCO parquet
    schema (question/answer/bbox), ms-swift grounding JSONL (messages/images/objects), else the
    OpenFoodFacts schema."""
    if is_refcoco(columns):
        return refcoco_entries
    if is_swift(columns):
        return swift_entries
    return _entries


def _entries(row: dict[str, Any], i: int, where: str, default_id: str, reading: _Reading) -> list[Entry]:
    """One OpenFoodFacts-schema row: every box of the asked category (the row's `category`, else the
    nutrition table). No entry for a row without one, unless it is kept as a negative."""
    if "objects" not in row:
        raise InputError(f"{where} has columns {sorted(row)}; need 'image' and 'objects' "
                         "(the OpenFoodFacts nutrition-table-detection schema)")
    objects = row["objects"] or {}
    if not isinstance(objects, dict):
        raise InputError(f"{where} has objects of type {type(objects).__name__}; need a dict of lists "
                         "{'bbox': [...], 'category_name': [...]} (the OpenFoodFacts schema)")
    bboxes, names = objects.get("bbox") or [], objects.get("category_name") or []
    category = row.get("category") or CATEGORY
    own_prompt = row.get("prompt")
    # unnamed boxes (no category_name column) are all of the asked category
    picked = [b for k, b in enumerate(bboxes) if not names or (k < len(names) and names[k] == category)]
    if not picked and not (own_prompt or reading.keep_negatives):
        return []
    for bbox in picked:
        if bbox is None or len(bbox) != 4 or not all(isinstance(v, Real) for v in bbox):
            raise InputError(f"{where} has bbox {bbox!r}: need 4 numbers (y_min, x_min, y_max, x_max) "
                             "normalised to 0-1; fix or drop the row")
        _check_box(bbox, row.get("width"), row.get("height"), where)
    label = reading.label if category == CATEGORY else category.replace("-", " ")
    boxes = tuple((label, _fractions(bbox)) for bbox in picked)
    size = (row.get("width"), row.get("height"))
    return [Entry(image=i, objects=boxes, image_id=str(row.get("image_id") or default_id),
                  prompt=own_prompt or reading.prompt, label=label, where=where,
                  task="refer" if row.get("task") == "refer" else "detect",
                  size=size if None not in size else None)]


def _check_box(bbox, width, height, where: str) -> None:
    """The box against the image size the row's columns give; without them, against the unit square
    (a 1000x1000 grid in the message): the image itself is not decoded to load the annotations."""
    grid = width is None or height is None
    width, height = (1000, 1000) if grid else (int(width), int(height))
    try:
        validate_box(openfoodfacts_to_xyxy(bbox, width, height), width, height,
                     f"{where} (normalised, on a 1000x1000 grid)" if grid else where)
    except InputError as e:
        if max(abs(float(v)) for v in bbox) > 1.5:
            raise InputError(f"{e} (its bbox {list(bbox)} looks like pixels: the schema wants "
                             "(y_min, x_min, y_max, x_max) normalised to 0-1)") from e
        raise


def _fractions(bbox) -> tuple[float, float, float, float]:
    """OpenFoodFacts (y_min, x_min, y_max, x_max) -> (x1, y1, x2, y2), fractions of the image."""
    y_min, x_min, y_max, x_max = (float(v) for v in bbox)
    return (x_min, y_min, x_max, y_max)
