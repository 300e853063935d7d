"""The test images a run's report shows, kept in the run directory as small JPEGs.

`report.html` is rebuilt from the run directory alone (`vlm-recipes report RUN_DIR`), so the
evaluator saves what the gallery needs once, at the end of the run: `test_images/index.json` maps
each test image id (detection) or gallery key (retrieval) to its thumbnail file and the size of
the image the boxes are in (boxes stay in original pixels; the page scales them).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from PIL import Image

FOLDER, INDEX = "test_images", "index.json"
THUMBNAIL_SIDE = 256
"""Longest side of a stored thumbnail (the synthetic images are 160-256 px; a real photo shrinks)."""


def thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> Image.Image:
    small = image.convert("RGB")
    small.thumbnail((side, side))
    return small


def file_name(key: str) -> str:
    """A safe, stable file name for any id or gallery key (keys may hold paths or long texts)."""
    return hashlib.sha1(key.encode()).hexdigest()[:16] + ".jpg"


def save_images(run_dir: Path, entries: dict[str, dict]) -> None:
    """`entries`: key -> {"image": PIL image or None, and JSON facts (width, height, text)}. Each
    image is saved as a thumbnail; index.json keeps the facts and the file name."""
    folder = run_dir / FOLDER
    folder.mkdir(exist_ok=True)
    index = {}
    for key, entry in entries.items():
        facts = {name: value for name, value in entry.items() if name != "image"}
        if entry.get("image") is not None:
            facts["file"] = file_name(key)
            thumbnail(entry["image"]).save(folder / facts["file"], quality=80)
        index[key] = facts
    (folder / INDEX).write_text(json.dumps(index))


def save_detection_images(run_dir: Path, views: list) -> None:
    """Detection samples (image, width, height, image_id) of the test split."""
    save_images(run_dir, {str(v.image_id): {"image": v.image, "width": v.width, "height": v.height}
                          for v in views if v is not None})


def save_retrieval_targets(run_dir: Path, samples: list) -> None:
    """The retrieval gallery: each target's image (a video: a strip of its frames) and text."""

    entries = {}
    for s in samples:
        target = s.target
        image = target.image if target.image is not None else filmstrip(target.video) if target.video else None
        entries.setdefault(target.key, {"image": image, "text": target.text or ""})
    save_images(run_dir, entries)


def read_index(run_dir: Path) -> dict[str, dict]:
    """key -> facts with "src" (a data URI of the thumbnail) where an image was stored; {} for a
    run saved before thumbnails were kept."""
    path = run_dir / FOLDER / INDEX
    if not path.is_file():
        return {}
    index = json.loads(path.read_text())
    for facts in index.values():
        if "file" in facts:
            facts["src"] = data_uri(run_dir / FOLDER / facts.pop("file"))
    return index


def data_uri(path: Path) -> str:
    kind = "png" if path.suffix == ".png" else "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def filmstrip(clip, frames: int = 4):
    """Up to `frames` of a clip's frames, evenly spread, side by side (time runs left to right)."""
    count = min(frames, len(clip.frames))
    picked = [clip.frames[round(i * (len(clip.frames) - 1) / max(count - 1, 1))] for i in range(count)]
    width, height = picked[0].size
    strip = Image.new("RGB", (width * len(picked) + 2 * (len(picked) - 1), height), "white")
    for i, frame in enumerate(picked):
        strip.paste(frame.resize((width, height)), (i * (width + 2), 0))
    return strip
