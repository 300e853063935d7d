"""Small datasets in the formats users bring (COCO 2017, Roboflow's COCO export, lmms-lab RefCOCO parquet,
ms-swift grounding JSONL), written by the tests: coloured squares and discs on a plain background, so
each box really frames its object."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

CLASSES = {1: "red square", 2: "blue disc"}
COLOURS = {1: (220, 30, 30), 2: (30, 60, 220)}


def picture(rng: random.Random, size: int = 64, count: int | None = None):
    """(image, [(category id, [x, y, w, h])]) with 1-2 objects that do not overlap."""
    image = Image.new("RGB", (size, size), (235, 235, 225))
    draw, objects = ImageDraw.Draw(image), []
    for k in range(count or rng.randint(1, 2)):
        cat, side = rng.choice(list(CLASSES)), rng.randint(12, 20)
        x = k * size // 2 + rng.randint(0, size // 2 - side)
        y = rng.randint(0, size - side)
        box = [x, y, side, side]
        (draw.rectangle if cat == 1 else draw.ellipse)([x, y, x + side - 1, y + side - 1], fill=COLOURS[cat])
        objects.append((cat, box))
    return image, objects


def coco_json(folder: Path, count: int, seed: int, categories: list[dict], class_ids: dict[int, int] | None = None,
              crowd: bool = False, size: int = 64) -> dict:
    """Pictures saved in `folder` and their COCO detection dict; `class_ids` maps our classes to the file's ids."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, images, annotations = random.Random(seed), [], []
    for i in range(count):
        image, objects = picture(rng, size)
        name = f"{seed:02d}{i:06d}.jpg"
        image.save(folder / name, quality=95)
        images.append({"id": i + 1, "file_name": name, "width": image.width, "height": image.height})
        for cat, box in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "bbox": box, "area": box[2] * box[3],
                                "category_id": (class_ids or {}).get(cat, cat), "iscrowd": 0})
    if crowd:  # a crowd region over the first image: neither a target nor a negative (COCO's rule)
        annotations.append({"id": len(annotations) + 1, "image_id": 1, "bbox": [0, 0, 64, 10], "area": 640,
                            "category_id": (class_ids or {}).get(1, 1), "iscrowd": 1})
    return {"images": images, "annotations": annotations, "categories": categories}


def make_coco2017(root: Path, n_train: int = 12, n_val: int = 4, size: int = 64) -> Path:
    """root/annotations/instances_{train,val}2017.json, images (size x size) in root/{train,val}2017/."""
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CLASSES.items()]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, count, seed in (("train", n_train, 1), ("val", n_val, 2)):
        data = coco_json(root / f"{split}2017", count, seed, categories, crowd=split == "train", size=size)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def make_roboflow(root: Path, n_train: int = 12, n_valid: int = 3, n_test: int = 4) -> Path:
    """root/{train,valid,test}/_annotations.coco.json beside the images; category 0 is the project."""
    categories = [{"id": 0, "name": "shapes-xyz", "supercategory": "none"},
                  {"id": 1, "name": "red-square", "supercategory": "shapes-xyz"},
                  {"id": 2, "name": "blue-disc", "supercategory": "shapes-xyz"}]
    for split, count, seed in (("train", n_train, 3), ("valid", n_valid, 4), ("test", n_test, 5)):
        data = coco_json(root / split, count, seed, categories)
        (root / split / "_annotations.coco.json").write_text(json.dumps(data))
    return root


def refcoco_rows(count: int, seed: int) -> list[dict]:
    """lmms-lab/RefCOCO rows: one object per row with its expressions, bbox [x, y, w, h] pixels."""
    rng, rows = random.Random(seed), []
    for i in range(count):
        image, objects = picture(rng, count=2)
        png = io.BytesIO()
        image.save(png, format="PNG")
        k = rng.randrange(2)
        cat, box = objects[k]
        side = "left" if k == 0 else "right"
        rows.append({"question_id": f"{seed}-{i}", "image": {"bytes": png.getvalue(), "path": None},
                     "question": "Please carefully observe the area circled in the image and come up with a caption "
                                 "for the area.",
                     "answer": [f"the {side} shape", f"{CLASSES[cat]} on the {side}"], "segmentation": [0.0] * 8,
                     "bbox": [float(v) for v in box], "iscrowd": 0, "file_name": f"COCO_train2014_{i:012d}.jpg"})
    return rows


def write_refcoco(root: Path, splits: dict[str, int]) -> Path:
    """root/data/<split>-00000-of-00001.parquet as lmms-lab publishes them."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for seed, (split, count) in enumerate(splits.items(), 10):
        pq.write_table(pa.Table.from_pylist(refcoco_rows(count, seed)), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def swift_row(image_name: str, objects: list, size: int, norm1000: bool, style: str) -> dict:
    """One ms-swift grounding row. style "each": one <ref-object><bbox> pair per object in the answer;
    "one": one <ref-object> in the question and one <bbox> for every box of that category."""
    def xyxy(box):
        x, y, w, h = box
        corners = [x, y, x + w, y + h]
        return [round(v * 1000 / size) for v in corners] if norm1000 else corners
    kind = {"bbox_type": "norm1000"} if norm1000 else {}
    if style == "each":
        return {"messages": [{"role": "user", "content": "<image>Detect every shape."},
                             {"role": "assistant", "content": ", ".join(["<ref-object><bbox>"] * len(objects))}],
                "images": [image_name],
                "objects": {"ref": [CLASSES[c] for c, _ in objects], "bbox": [xyxy(b) for _, b in objects], **kind}}
    cat = objects[0][0]
    same = [b for c, b in objects if c == cat]
    return {"messages": [{"role": "user", "content": "<image>Find every <ref-object>."},
                         {"role": "assistant", "content": "<bbox>"}],
            "images": [image_name], "objects": {"ref": [CLASSES[cat]], "bbox": [xyxy(b) for b in same], **kind}}


def make_swift(root: Path, n_train: int = 12, n_test: int = 4) -> Path:
    """root/{train,test}.jsonl with images beside them; rows alternate pixel / norm1000 boxes and the two
    placeholder styles."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(7)
    for split, count in (("train", n_train), ("test", n_test)):
        lines = []
        for i in range(count):
            image, objects = picture(rng)
            name = f"{split}-{i}.png"
            image.save(root / name)
            lines.append(json.dumps(swift_row(name, objects, image.width, norm1000=i % 2 == 1,
                                              style="each" if i % 4 < 2 else "one")))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root
