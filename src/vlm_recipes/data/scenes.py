"""Generated grounding scenes beyond one box, in the OpenFoodFacts schema plus three columns that
say what is asked: `prompt` (the question), `category` (the category whose boxes answer it) and
`task` ("detect" or "refer"). `objects` lists every labelled object of a "synthetic-multi" scene
and the one referred object of a "synthetic-refer" scene; the loader keeps the asked category's.

* "synthetic-multi": 0-4 nutrition tables per image, 0-2 barcodes and 0-2 stars, text clutter; the
  question asks for every object of one category ("Detect every nutrition table."; tables half the
  time). Placed after the tables, barcodes and stars often find no room, so 38% of the questions
  ask for a category the image does not hold (the answer is empty): 20% of the table questions,
  43% of the barcode and 70% of the star questions (400 scenes counted).
* "synthetic-refer": 2-4 similar objects (nutrition tables, or stars of different colours) and a
  referring expression that singles out one ("the leftmost nutrition table", "the red star").

Barcodes (64-100 x 44-64 px) and stars (56-84 px) stay about a token wide or more after the
processor scales an image to the tiny base's 25,600-px budget (about 5x5 tokens of 32 px): drawn at
20-36 px, no run found them (README, "Grounding beyond one box").

All randomness comes from a `random.Random` seeded per row (`scene:{kind}:{seed}:{split}:{i}`), so
row i does not depend on the row count and train and test never share a scene.
"""

from __future__ import annotations

import io
import random

from datasets import Dataset, DatasetDict, Features, Value
from PIL import Image, ImageDraw

from ..errors import InputError
from .synthetic import (
    BRANDS,
    CATEGORY,
    CLAIMS,
    COLOURS,
    MAX_SIDE,
    MIN_SIDE,
    NUTRITION_FEATURES,
    Box,
    background,
    draw_item,
    jitter,
    load_font,
    nutrition_table,
    place,
    random_colour,
)

SCENE_FEATURES = Features({**NUTRITION_FEATURES, "prompt": Value("string"), "category": Value("string"),
                           "task": Value("string")})
CATEGORIES = {CATEGORY: "nutrition table", "barcode": "barcode", "star": "star"}
"""Category name in the rows -> the words a question and an answer use for it."""
DETECT_PROMPTS = ["Detect every {}.", "Locate every {} in the image.", "Find all the {}s."]
STAR_COLOURS = ["red", "green", "blue", "yellow", "purple", "black"]


def make_scene_dataset(kind: str, n_train: int = 800, n_test: int = 100, seed: int = 0,
                       n_shifted: int = 0) -> DatasetDict:
    """Splits "train" and "test" of the `kind` ("multi" or "refer") scenes."""
    if n_shifted:
        raise InputError(f"data.num_shifted={n_shifted}: synthetic-{kind} has no out-of-domain style; set "
                         "data.num_shifted=0")
    if n_train < 0 or n_test < 0:
        raise InputError(f"n_train={n_train}, n_test={n_test}: row counts cannot be negative")
    render = {"multi": render_multi_scene, "refer": render_refer_scene}[kind]
    return DatasetDict({split: Dataset.from_list([_row(render, kind, split, i, seed) for i in range(n)],
                                                 features=SCENE_FEATURES)
                        for split, n in (("train", n_train), ("test", n_test))})


def _row(render, kind: str, split: str, i: int, seed: int) -> dict:
    image, objects, prompt, category, task = render(random.Random(f"scene:{kind}:{seed}:{split}:{i}"))
    w, h = image.size
    png = io.BytesIO()
    image.save(png, format="PNG", compress_level=1)
    return {"image_id": f"synthetic-{kind}-{seed}-{split}-{i:05d}", "image": {"bytes": png.getvalue(), "path": None},
            "width": w, "height": h,
            "meta": {"barcode": f"{seed:06d}{i:07d}", "off_image_id": str(i), "image_url": ""},
            "objects": {"bbox": [[y1 / h, x1 / w, y2 / h, x2 / w] for _, (x1, y1, x2, y2) in objects],
                        "category_id": [list(CATEGORIES).index(c) for c, _ in objects],
                        "category_name": [c for c, _ in objects]},
            "prompt": prompt, "category": category, "task": task}


# --- scenes ---------------------------------------------------------------------------------------

def _table(rng: random.Random, img: Image.Image, avoid: list[Box], scale: tuple[float, float]) -> Box | None:
    w, h = img.size
    box = place(rng, w, h, round(w * rng.uniform(*scale)), round(h * rng.uniform(*scale)), avoid)
    if box is not None:
        x1, y1, x2, y2 = (int(v) for v in box)
        img.paste(nutrition_table(rng, x2 - x1, y2 - y1), (x1, y1))
        avoid.append(box)
    return box


def _barcode(rng: random.Random, img: Image.Image, avoid: list[Box]) -> Box | None:
    box = place(rng, *img.size, rng.randint(64, 100), rng.randint(44, 64), avoid)
    if box is not None:
        draw_item(rng, img, "striped box", box, (0, 0, 0))
        avoid.append(box)
    return box


def _star(rng: random.Random, img: Image.Image, avoid: list[Box], colour: str) -> Box | None:
    s = rng.randint(56, 84)
    box = place(rng, *img.size, s, s, avoid)
    if box is None:
        return None
    avoid.append(box)
    return draw_item(rng, img, "star", box, jitter(rng, COLOURS[colour], 12))


def _clutter(rng: random.Random, img: Image.Image, avoid: list[Box]) -> None:
    """Brand names and claims: printed text, never one of the asked categories."""
    for _ in range(rng.randint(1, 3)):
        text = rng.choice(BRANDS + CLAIMS)
        size = rng.randint(8, 16)
        box = place(rng, *img.size, *ImageDraw.Draw(img).textbbox((0, 0), text, font=load_font(size))[2:], avoid)
        if box:
            ImageDraw.Draw(img).text(box[:2], text, font=load_font(size), fill=random_colour(rng))
            avoid.append(box)


def render_multi_scene(rng: random.Random):
    """(image, [(category, box), ...] of every labelled object, prompt, asked category, "detect")."""
    w, h = rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)
    img, avoid = background(rng, w, h), []
    objects = [(CATEGORY, b) for b in (_table(rng, img, avoid, (0.24, 0.42)) for _ in range(rng.randint(0, 4))) if b]
    objects += [("barcode", b) for b in (_barcode(rng, img, avoid) for _ in range(rng.randint(0, 2))) if b]
    objects += [("star", b) for b in (_star(rng, img, avoid, rng.choice(STAR_COLOURS))
                                      for _ in range(rng.randint(0, 2))) if b]
    _clutter(rng, img, avoid)
    category = rng.choice([CATEGORY, CATEGORY, "barcode", "star"])
    return img, objects, rng.choice(DETECT_PROMPTS).format(CATEGORIES[category]), category, "detect"


def render_refer_scene(rng: random.Random):
    """(image, [(category, box)] of the one referred object, its expression, category, "refer")."""
    w, h = rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)
    img, avoid = background(rng, w, h), []
    count = rng.randint(2, 4)
    if rng.random() < 0.5:
        colours = rng.sample(STAR_COLOURS, count)
        stars = [(c, b) for c, b in ((c, _star(rng, img, avoid, c)) for c in colours) if b]
        _clutter(rng, img, avoid)
        if len(stars) < 2:
            return render_refer_scene(rng)
        colour, box = rng.choice(stars)
        return img, [("star", box)], f"Locate the {colour} star.", "star", "refer"
    tables = [b for b in (_table(rng, img, avoid, (0.22, 0.38)) for _ in range(count)) if b]
    _clutter(rng, img, avoid)
    if len(tables) < 2:
        return render_refer_scene(rng)
    where, key = rng.choice([("leftmost", lambda b: b[0] + b[2]), ("rightmost", lambda b: -(b[0] + b[2])),
                             ("topmost", lambda b: b[1] + b[3]), ("bottom", lambda b: -(b[1] + b[3]))])
    box = min(tables, key=key)
    return img, [(CATEGORY, box)], f"Locate the {where} nutrition table.", CATEGORY, "refer"
