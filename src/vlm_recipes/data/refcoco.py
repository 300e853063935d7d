"""Referring expressions in the lmms-lab/RefCOCO parquet schema (RefCOCO, RefCOCO+, RefCOCOg).

Columns: `image` (embedded), `question` (a generic captioning prompt: not used), `answer` (the referring
expressions of one object, a list), `bbox` as [x, y, width, height] pixels of the image. Its splits are
`val`, `test`, `testA` and `testB` (no train): pick them with `--split` / `data.test_split` and
`data.train_split`.

Each expression is one sample (task "refer"): the expression is the prompt, the answer is the one box
labelled with it. This is how the RefCOCO benchmark counts (testA: 1,975 objects, 5,657 expressions),
so Acc@0.5 over the samples is the figure papers report.

Loading reads the image's header (its size, to check the box) and decodes nothing.
"""

from __future__ import annotations

import io
from numbers import Real

from PIL import Image

from ..boxes import validate_box
from ..errors import InputError
from .index import Entry, fractions

COLUMNS = {"image", "answer", "bbox"}


def is_refcoco(columns) -> bool:
    return COLUMNS <= set(columns) and "objects" not in columns


def refcoco_entries(row: dict, i: int, where: str, default_id: str, reading) -> list[Entry]:
    """One entry per referring expression of the row's object."""
    expressions = row.get("answer")
    expressions = [expressions] if isinstance(expressions, str) else expressions or []
    expressions = [e.strip() for e in expressions if isinstance(e, str) and e.strip()]
    if not expressions:
        raise InputError(f"{where}: field 'answer' holds no referring expression; add one or drop the row")
    bbox = row.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(isinstance(v, Real) for v in bbox):
        raise InputError(f"{where}: field 'bbox' is {bbox!r}, not 4 numbers [x, y, width, height]; fix or drop the row")
    width, height = image_size(row.get("image"), where)
    x, y, w, h = (float(v) for v in bbox)
    box = (x, y, x + w, y + h)
    validate_box(box, width, height, f"{where} field 'bbox'")
    base_id = str(row.get("question_id") or default_id)
    return [Entry(image=i, objects=((text, fractions(box, width, height)),), image_id=f"{base_id}#{k}", prompt=text,
                  label=text, where=where, task="refer", size=(width, height))
            for k, text in enumerate(expressions)]


def image_size(value, where: str) -> tuple[int, int]:
    """(width, height) from a stored image's header ({"bytes", "path"}, bytes or a path): nothing decoded."""
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    try:
        with Image.open(io.BytesIO(value) if isinstance(value, bytes) else value) as image:
            return image.size
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise InputError(f"{where}: field 'image' is not a readable image ({e}); fix or drop the row") from None
