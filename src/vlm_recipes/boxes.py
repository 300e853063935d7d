"""Bounding-box conventions: datasets, the three Qwen-VL grounding formats, validation.

The canonical box everywhere else in the package is absolute pixel `(x1, y1, x2, y2)` as
floats in ORIGINAL image coordinates. Conversions to and from other conventions happen
only here, so a coordinate bug has exactly one place to live.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator, Sequence

from qwen_vl_utils import smart_resize

from .errors import InputError
from .families import Family

Box = tuple[float, float, float, float]

GRID = 1000  # Qwen2-VL and Qwen3-VL express coordinates on a 0..1000 grid


# --- datasets -------------------------------------------------------------------------

def openfoodfacts_to_xyxy(bbox: Sequence[float], width: int, height: int) -> Box:
    """OpenFoodFacts `(y_min, x_min, y_max, x_max)` normalised to 0..1 -> canonical box."""
    y_min, x_min, y_max, x_max = (float(v) for v in bbox)
    return (x_min * width, y_min * height, x_max * width, y_max * height)


def xyxy_to_openfoodfacts(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    """Canonical box -> OpenFoodFacts `(y_min, x_min, y_max, x_max)` normalised to 0..1."""
    x1, y1, x2, y2 = box
    return (y1 / height, x1 / width, y2 / height, x2 / width)


def validate_box(box: Box, width: int, height: int, where: str) -> None:
    """Raise InputError if `box` is degenerate or outside its `width`x`height` image.

    `where` names the sample for the message, e.g. "sample 12 of train".
    """
    x1, y1, x2, y2 = box
    shown = f"({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    fix = "fix the annotation or drop the sample"
    if not all(math.isfinite(v) for v in box):
        raise InputError(f"box {shown} of {where} has a non-finite coordinate: {fix}")
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"box {shown} of {where} has zero or negative area "
                         f"(need x1 < x2 and y1 < y2): {fix}")
    tol = 1.0  # normalised annotations times the image size can overshoot by a rounding error
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise InputError(f"box {shown} of {where} lies outside its {width}x{height} image: {fix}")


# --- what the model sees --------------------------------------------------------------

def resized_size(width: int, height: int, family: Family,
                 min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """The `(w, h)` the Qwen processor resizes a `width`x`height` image to.

    None for min/max pixels means qwen_vl_utils' defaults.
    """
    try:
        h, w = smart_resize(height, width, factor=family.pixels_per_token_side,
                            min_pixels=min_pixels, max_pixels=max_pixels)
    except ValueError as e:  # extreme aspect ratio: the processor would refuse it too
        raise InputError(f"image of size {width}x{height} cannot be fed to {family.name}: {e}; "
                         f"crop or drop the image") from e
    return w, h


# --- answer text ----------------------------------------------------------------------

def _to_model(box: Box, width: int, height: int, family: Family,
              resized: tuple[int, int]) -> list[int]:
    """Canonical box -> integer coordinates in the family's answer space, clamped to it."""
    if family.box_format == "json_abs_resized":
        sx, sy = resized[0] / width, resized[1] / height
        lim_x, lim_y = resized
    else:
        sx, sy = GRID / width, GRID / height
        lim_x = lim_y = GRID
    x1, y1, x2, y2 = box
    return [min(max(round(x1 * sx), 0), lim_x), min(max(round(y1 * sy), 0), lim_y),
            min(max(round(x2 * sx), 0), lim_x), min(max(round(y2 * sy), 0), lim_y)]


def _from_model(coords: Sequence[float], width: int, height: int, family: Family,
                resized: tuple[int, int]) -> Box:
    """Model-space coordinates -> canonical box, corners ordered and clamped to the image."""
    if family.box_format == "json_abs_resized":
        sx, sy = width / resized[0], height / resized[1]
    else:
        sx, sy = width / GRID, height / GRID
    x1, y1, x2, y2 = (float(c) for c in coords)
    x1, x2 = sorted((min(max(x1 * sx, 0.0), width), min(max(x2 * sx, 0.0), width)))
    y1, y2 = sorted((min(max(y1 * sy, 0.0), height), min(max(y2 * sy, 0.0), height)))
    return (x1, y1, x2, y2)


EMPTY_REF_ANSWER = "None"
"""Qwen2-VL's answer when nothing matches: its `<|object_ref_start|>...<|box_end|>` pairs have no
list around them, so zero pairs would be an empty turn; one plain word keeps the answer a written
decision, parses to no box, and is what the family already writes as prose (DECISIONS D29)."""


def reading_order(boxes: Sequence[tuple[str, Box]]) -> list[tuple[str, Box]]:
    """The stated order of a multi-object answer: top to bottom by the box's top edge, then left to
    right, so that an SFT target is one fixed text (DECISIONS D29). Stable: equal corners keep
    their given order."""
    return sorted(boxes, key=lambda item: (item[1][1], item[1][0]))


def format_answer(boxes: Sequence[tuple[str, Box]], width: int, height: int, family: Family,
                  resized: tuple[int, int]) -> str:
    """The assistant's answer for labelled canonical boxes, in the family's grounding format and
    the given order (training targets pass `reading_order(...)`); no boxes is the family's empty
    answer (`[]`, or `EMPTY_REF_ANSWER`).

    `resized` is `resized_size(...)` of the image; only Qwen2.5-VL uses it, because its
    coordinates are absolute pixels of the resized image.
    """
    if family.box_format == "ref_box_1000":
        if not boxes:
            return EMPTY_REF_ANSWER
        parts = []
        for label, box in boxes:
            x1, y1, x2, y2 = _to_model(box, width, height, family, resized)
            parts.append(f"<|object_ref_start|>{label}<|object_ref_end|>"
                         f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>")
        return "".join(parts)
    items = [{"bbox_2d": _to_model(box, width, height, family, resized), "label": label}
             for label, box in boxes]
    # ensure_ascii=False keeps non-English labels as the words the model should write
    return json.dumps(items, separators=(", ", ": "), ensure_ascii=False)


_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
# Box tokens are optional: decoding with skip_special_tokens=True drops them (and the
# label markers), leaving a bare "(x1,y1),(x2,y2)" that is still worth reading.
_REF_BOX = re.compile(
    r"(?:<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>)?\s*(?:<\|box_start\|>)?"
    rf"\({_NUM},{_NUM}\)\s*,\s*\({_NUM},{_NUM}\)", re.DOTALL)


def _json_values(text: str) -> Iterator[Any]:
    """Every JSON array/object that decodes starting at some '[' or '{' in `text`.

    Scanning start positions copes with ```json fences, prose around the JSON, and a
    truncated list whose leading objects are still complete.
    """
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "[{":
            try:
                yield decoder.raw_decode(text, i)[0]
            except (ValueError, RecursionError):  # not JSON here, or absurdly deep nesting
                continue


def _json_items(value: Any) -> list[tuple[str, list[float]]]:
    """(label, 4 coordinates) for each well-formed `{"bbox_2d": [...]}` in a decoded value."""
    found = []
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, dict):
            continue
        coords = item.get("bbox_2d")
        if (not isinstance(coords, list) or len(coords) != 4
                or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coords)):
            continue
        try:
            coords = [float(c) for c in coords]
        except OverflowError:  # an integer too big for a float
            continue
        if not all(math.isfinite(c) for c in coords):  # json accepts NaN and Infinity
            continue
        label = item.get("label")
        found.append((label if isinstance(label, str) else "", coords))
    return found


def parse_answer(text: str, width: int, height: int, family: Family,
                 resized: tuple[int, int]) -> list[tuple[str, Box]]:
    """Labelled canonical boxes from a model answer; inverse of `format_answer`.

    Never raises: output we cannot read yields [] (the sample then counts as missed).
    Missing labels become "", swapped corners are reordered, and coordinates off the
    grid are clamped to the image.
    """
    if family.box_format == "ref_box_1000":
        # float() of a huge digit string is inf, which the clamp then maps onto the border
        found = [((m["label"] or "").strip(), [float(m[i]) for i in range(2, 6)])
                 for m in _REF_BOX.finditer(text)]
    else:
        # the first JSON value holding any well-formed box is taken as the answer
        found = next((f for f in map(_json_items, _json_values(text)) if f), [])
    return [(label, _from_model(coords, width, height, family, resized))
            for label, coords in found]


def is_empty_answer(text: str, family: Family) -> bool:
    """Whether `text` is the family's explicit empty answer (`[]`, or `EMPTY_REF_ANSWER`), as
    opposed to an answer we could not read; surrounding whitespace and a ```json fence are allowed."""
    body = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    if family.box_format == "ref_box_1000":
        return body == EMPTY_REF_ANSWER
    try:
        return json.loads(body) == []
    except ValueError:
        return False


REPORTED_DECIMALS = 1
"""Box coordinates as predictions are reported (predictions.json, `predict`): a tenth of a pixel.
Finer digits are float noise of the coordinate conversion, not information a pixel carries; the
metrics are computed on the unrounded boxes."""


def reported_box(box) -> list[float] | None:
    return [round(float(v), REPORTED_DECIMALS) for v in box] if box else None
