"""ms-swift's grounding JSON Lines as grounding samples.

A row (ms-swift's "grounding" data format):

    {"messages": [{"role": "user", "content": "<image>Find <ref-object>"},
                  {"role": "assistant", "content": "<bbox>"}],
     "images": ["cat.jpg"],
     "objects": {"ref": ["cat"], "bbox": [[90.9, 160.8, 135, 212.8]], "bbox_type": "real"}}

* `<ref-object>` placeholders are filled with `objects.ref` in order (ms-swift's rule); the user turn,
  without `<image>`, is the prompt.
* `<bbox>` placeholders stand for the boxes `[x1, y1, x2, y2]`: one per box (`<ref-object><bbox>, ...` in
  the answer), or one for all of them. Any other count is an error, as is a `ref` list that is neither
  one name for every box nor one per box. A row without boxes (and without `<bbox>`) is a negative.
* `bbox_type`: "real" (default) is pixels of the image; "norm1000" is the 0-1000 grid.
* `images`: one image per row; a relative path is read from the JSONL file's folder. `objects` may be
  a JSON string, as ms-swift allows.

Loading checks each image file exists and reads its header (its size, for pixel boxes); nothing is
decoded.
"""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path

from ..boxes import validate_box
from ..errors import InputError
from .index import Entry
from .refcoco import image_size


def is_swift(columns) -> bool:
    return {"messages", "objects"} <= set(columns)


def swift_entries(row: dict, i: int, where: str, default_id: str, reading) -> list[Entry]:
    objects = _objects(row.get("objects"), where)
    refs, bboxes = objects.get("ref") or [], objects.get("bbox") or []
    texts = _texts(row.get("messages"), where)
    _check_counts(texts, refs, bboxes, where)
    path = _image_path(row.get("images"), reading.base_dir, where)
    kind = objects.get("bbox_type") or "real"
    if kind not in ("real", "norm1000"):
        raise InputError(f"{where}: field 'objects.bbox_type' is {kind!r}; use 'real' (pixels) or 'norm1000'")
    width, height = image_size(path, where) if kind == "real" else (1000, 1000)
    labels = refs if len(refs) == len(bboxes) else refs[:1] * len(bboxes)
    field = f"{where} field 'objects.bbox'" + (" (bbox_type norm1000: the image is a 0-1000 grid)" if kind == "norm1000" else "")
    found = tuple((str(label), _fractions(box, width, height, field))
                  for label, box in zip(labels, bboxes))
    user = next((t for role, t in texts if role == "user"), "")
    prompt = _fill_refs(user.replace("<image>", "").strip(), refs)
    return [Entry(image=str(path), objects=found, image_id=str(row.get("id") or default_id), prompt=prompt,
                  label=str(refs[0]) if refs else reading.label, where=where)]


def _objects(value, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f"{where}: field 'objects' is a string but not JSON; write a dict "
                             '{"ref": [...], "bbox": [...]}') from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{where}: field 'objects' is a {type(value).__name__}; write a dict "
                         '{"ref": [...], "bbox": [...]}')
    return value


def _texts(messages, where: str) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                 for m in messages):
        raise InputError(f"{where}: field 'messages' must be a list of {{'role', 'content'}} turns with text content")
    return [(m.get("role"), m["content"]) for m in messages]


def _check_counts(texts, refs: list, bboxes: list, where: str) -> None:
    count = sum(text.count("<bbox>") for _, text in texts)
    if count != len(bboxes) and not (count == 1 and bboxes):
        raise InputError(f"{where}: field 'messages' has {count} <bbox> placeholder(s) but objects.bbox has "
                         f"{len(bboxes)} box(es); write one <bbox> per box, or one for all of them")
    if bboxes and len(refs) not in (1, len(bboxes)):
        raise InputError(f"{where}: field 'objects.ref' has {len(refs)} name(s) for {len(bboxes)} box(es); "
                         "give one name per box, or one for all of them")


def _image_path(images, base_dir: Path, where: str) -> Path:
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or len(images) != 1 or not isinstance(images[0], str):
        raise InputError(f"{where}: field 'images' must hold exactly one image path (got {images!r})")
    path = Path(images[0]).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise InputError(f"{where}: field 'images': {path} does not exist; fix the path (relative paths are read "
                         "from the JSONL file's folder) or drop the row")
    return path


def _fractions(box, width: int, height: int, where: str):
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, Real) for v in box):
        raise InputError(f"{where}: {box!r} is not 4 numbers [x1, y1, x2, y2]; fix or drop the row")
    box = tuple(float(v) for v in box)
    validate_box(box, width, height, where)
    x1, y1, x2, y2 = box
    return (x1 / width, y1 / height, x2 / width, y2 / height)


def _fill_refs(text: str, refs: list) -> str:
    """Each <ref-object> replaced by the next name (the last one again when they run out)."""
    parts = text.split("<ref-object>")
    names = [str(r) for r in refs] or ["object"]
    return parts[0] + "".join(names[min(k, len(names) - 1)] + part for k, part in enumerate(parts[1:]))
