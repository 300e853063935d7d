"""COCO detection JSON as grounding samples, in the two layouts people have.

* COCO 2017: `DIR/annotations/instances_<split>.json` (`instances_train2017.json` is split "train"),
  images under `DIR/<split>2017/` or `DIR/<split>/`.
* Roboflow's COCO export: `DIR/<split>/_annotations.coco.json` with the images beside it; its splits
  `train` / `valid` / `test` (`valid` is read as "val", the test split's fallback).
A single annotation file may be passed too: it is the split its name or its folder names.

How annotations become samples (`data.coco_samples`):
* "each" (default): one sample per (image, category present), prompt "Detect every <category>.", answer
  every box of that category; and, for a seeded `data.coco_negative_rate` of the images, one sample
  asking for a category absent from the image (answer: nothing). The question names one category, as
  grounding prompts do, and an image with k categories gives k samples (k + 1 with a negative), each
  with the image id "<id>/<category>". Category names read as words: "red-square" -> "red square".
* "all": one sample per image, prompt "Detect every object.", answer every box labelled with its
  category; an image without objects is a negative.

Category 0 of Roboflow: its export adds a category named after the project (`id 0`,
`supercategory: "none"`) that the real classes name as their supercategory. A category that another
category names as its supercategory is a group, not a class: it is never asked for and its boxes
(rare) are skipped. COCO 2017's own supercategories ("animal", "vehicle") are no categories, and a
category that is its own supercategory ("person") stays a class.

`iscrowd: 1` boxes follow COCO's evaluation rule: a crowd region is neither an object to find nor a
false positive, so it is no target; an (image, category) whose boxes are all crowd gives no sample at
all (neither a positive nor a negative), and such a category is never the absent one of a negative.

Loading reads the JSON only (file names, sizes, boxes; each image file's existence is checked):
images are decoded when a sample is used (`index.GroundingIndex`).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..boxes import validate_box
from ..errors import InputError
from .index import Entry, fractions

ROBOFLOW_FILE = "_annotations.coco.json"
SPLIT_ALIASES = {"valid": "val"}


@dataclass(frozen=True)
class CocoSplit:
    annotations: Path
    images: Path


def find_coco(source: str) -> dict[str, CocoSplit] | None:
    """The COCO splits of `source` by name, or None when it is not in a COCO layout."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".json" and (path.name == ROBOFLOW_FILE or path.name.startswith("instances_")):
        return {_split_name(path): CocoSplit(path, _images_dir(path))}
    if not path.is_dir():
        return None
    found = {_split_name(f): CocoSplit(f, _images_dir(f)) for f in sorted(path.glob("annotations/instances_*.json"))}
    found.update({_split_name(f): CocoSplit(f, f.parent) for f in sorted(path.glob(f"*/{ROBOFLOW_FILE}"))})
    return found or None


def _split_name(file: Path) -> str:
    if file.name == ROBOFLOW_FILE:
        name = file.parent.name
    else:
        name = re.sub(r"\d{4}$", "", file.stem.removeprefix("instances_"))  # instances_val2017 -> val
    return SPLIT_ALIASES.get(name, name)


def _images_dir(file: Path) -> Path:
    if file.name == ROBOFLOW_FILE:
        return file.parent
    root, stem = file.parent.parent, file.stem.removeprefix("instances_")  # annotations/ sits in the root
    return next((d for d in (root / stem, root / re.sub(r"\d{4}$", "", stem)) if d.is_dir()), root / stem)


def coco_entries(split: CocoSplit, mode: str, negative_rate: float, seed: int) -> list[Entry]:
    """Every sample of one split's annotation file (see the module docstring)."""
    data = _read(split.annotations)
    where = str(split.annotations)
    classes, groups = _classes(data.get("categories") or [])
    images = _images(data.get("images") or [], split.images, where)
    found = _boxes(data.get("annotations") or [], images, classes, groups, where)
    entries = []
    for image_id, (path, width, height, k) in images.items():
        boxes, crowd = found.get(image_id, ({}, set()))
        image = Entry(image=path, objects=(), image_id=str(image_id), prompt="Detect every object.", label="object",
                      where=f"{where} images[{k}]", size=(width, height))
        if mode == "all":
            objects = tuple(obj for cat in sorted(boxes) for obj in boxes[cat])
            if objects or not crowd:
                entries.append(replace(image, objects=objects))
            continue
        asked = list(boxes)
        absent = [cat for cat in classes if cat not in boxes and cat not in crowd]
        rng = random.Random(f"{seed}:coco-negative:{image_id}")
        if absent and rng.random() < negative_rate:
            asked.append(rng.choice(absent))
        entries += [replace(image, objects=tuple(boxes.get(cat, ())), image_id=f"{image_id}/{classes[cat]}",
                            prompt=f"Detect every {classes[cat]}.", label=classes[cat]) for cat in sorted(asked)]
    return entries


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is not a readable COCO JSON file ({e}): fix or re-export it") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{path}: no 'images' list; a COCO detection file has 'images', 'annotations' and "
                         "'categories'")
    return data


def _classes(categories: list) -> tuple[dict[int, str], set]:
    """({category id: name} of the classes, {ids of the group categories}): a category that another
    category names as its supercategory is a group."""
    names = {c.get("supercategory") for c in categories if c.get("supercategory") != c.get("name")}
    groups = {c.get("id") for c in categories if c.get("name") in names}
    # Roboflow names classes like file names ("red-square"); a question reads "red square"
    words = {c["id"]: str(c["name"]).replace("-", " ").replace("_", " ") for c in categories}
    return {cid: name for cid, name in words.items() if cid not in groups}, groups


def _images(images: list, folder: Path, where: str) -> dict:
    """{image id: (path, width, height, position in 'images')}; a missing file is an error now, not
    during training."""
    out = {}
    for k, image in enumerate(images):
        for field in ("id", "file_name", "width", "height"):
            if field not in image:
                raise InputError(f"{where}: images[{k}] has no field '{field}': fix or re-export the file")
        path = folder / image["file_name"]
        if not path.is_file():
            raise InputError(f"{where}: images[{k}] field 'file_name': {path} does not exist; add the image or "
                             "drop its entry")
        out[image["id"]] = (str(path), int(image["width"]), int(image["height"]), k)
    return out


def _boxes(annotations: list, images: dict, classes: dict[int, str], groups: set, where: str) -> dict:
    """{image id: ({category id: [(label, fractions)]}, {crowd category ids})}; group categories'
    boxes skipped, crowd boxes kept apart."""
    known = classes.keys()
    found: dict = {}
    for k, ann in enumerate(annotations):
        place = f"{where}: annotations[{k}]"
        if ann.get("image_id") not in images:
            raise InputError(f"{place} field 'image_id': {ann.get('image_id')!r} is not in 'images'; fix or drop it")
        cat = ann.get("category_id")
        if cat not in known:
            if cat in groups:
                continue
            raise InputError(f"{place} field 'category_id': {cat!r} is not in 'categories'; fix or drop it")
        _, width, height, _ = images[ann["image_id"]]
        box = _xyxy(ann.get("bbox"), place)
        validate_box(box, width, height, f"{place} field 'bbox'")
        boxes, crowd = found.setdefault(ann["image_id"], ({}, set()))
        if ann.get("iscrowd"):
            crowd.add(cat)
        else:
            boxes.setdefault(cat, []).append((classes[cat], fractions(box, width, height)))
    return found


def _xyxy(bbox, place: str):
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise InputError(f"{place} field 'bbox': {bbox!r} is not 4 numbers [x, y, width, height]; fix or drop it")
    x, y, w, h = (float(v) for v in bbox)
    return (x, y, x + w, y + h)
