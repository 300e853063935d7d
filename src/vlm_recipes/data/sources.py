"""Opening datasets, once for every loader: the loaders (detection, retrieval, messages) only convert
the rows opened here into their samples. The bottom of `data/`: it imports no other module of it
(`splits.load_splits`, the entry point every objective calls, dispatches to the loaders).

Sources (`data.dataset`):
  "synthetic"                 not opened here: each loader generates its own rows
  "synthetic-video"           generated text <-> video retrieval (data/motion.py); retrieval only
  name[train:N,test:M]        any source below, with at most N train / M test rows (`parse_split_spec`)
  a directory saved by `DatasetDict.save_to_disk`
  parquet: a file, or a directory of them (searched recursively)
  JSON Lines (.jsonl) or JSON (.json, a list of rows): a file, or a directory of them (top level)
  anything else               a hub id, e.g. openfoodfacts/nutrition-table-detection

Split names: a file's split is its name's first word (`train-00000-of-00002.parquet` -> "train",
`test.jsonl` -> "test"), or its folder's name for numbered shards (`default/val/0000.parquet` ->
"val"). A file given alone is the split its name names, else "train"; `train.jsonl` (or
`train.json`) given alone brings its sibling test/val/validation file as its test split.

The test split: asking for "test" reads "test", else "val", else "validation" (`resolve_split`).
The OpenFoodFacts detection data and many hub datasets publish only train and val/validation.
This is the only fallback: every loader asks it.

Images stay as stored ({"bytes", "path"}) until `decode_image`, so that a bad one is reported by
its row instead of failing inside `datasets`.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

from PIL import ExifTags, Image, ImageOps

from ..errors import InputError, first_line
from ..readers import read_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
JSON_SUFFIXES = (".jsonl", ".json")
TEST_FALLBACKS = ("test", "val", "validation")
SOURCES_HELP = ("pass 'synthetic', a directory saved with DatasetDict.save_to_disk, parquet file(s), "
                ".jsonl/.json file(s), or a hub id such as openfoodfacts/nutrition-table-detection")

_SPEC = re.compile(r"^(?P<source>.+?)\[(?P<body>[^\[\]]*)\]$")


class Rows(Protocol):
    """One split: sized, indexable dict rows. A `datasets.Dataset` is one."""
    column_names: list[str]

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> dict[str, Any]: ...


@dataclass
class Opened:
    splits: dict[str, Rows]
    base_dir: Path
    """Where a relative path in a row points from: a JSON file's folder (rows written next to their
    images), else the working directory."""


# --- the data.dataset string -------------------------------------------------------------------

def parse_split_spec(dataset: str) -> tuple[str, dict[str, int]]:
    """"name[train:800,test:100]" -> ("name", {"train": 800, "test": 100}); no brackets -> no limits.

    As in dllm's dataset arguments; either part may be left out.
    """
    match = _SPEC.match(dataset.strip())
    if not match:
        return dataset, {}
    limits = {}
    for part in filter(None, (p.strip() for p in match["body"].split(","))):
        split, _, count = part.partition(":")
        if split.strip() not in ("train", "test") or not count.strip().isdigit() or int(count) < 1:
            raise InputError(f"data.dataset={dataset!r}: bad slice {part!r}; write e.g. name[train:800,test:100]")
        limits[split.strip()] = int(count)
    return match["source"], limits


def resolve_split(splits, split: str) -> str | None:
    """The split that stands for `split` in `splits` (a name -> rows mapping), or None.

    Only "test" falls back (to "val", then "validation"): asking for "train" or any other name
    means exactly that split.
    """
    candidates = TEST_FALLBACKS if split == "test" else (split,)
    return next((name for name in candidates if name in splits), None)


# --- opening -----------------------------------------------------------------------------------

def open_source(source: str) -> Opened:
    """Every split of `source` (not "synthetic"; see the module docstring), rows not read yet."""
    path = Path(source).expanduser()
    if path.is_file():
        return _open_file(source, path)
    if path.is_dir():
        return _open_dir(source, path)
    looks_local = (source.startswith(("/", ".", "~")) or source.endswith((".parquet", *JSON_SUFFIXES))
                   or source.count("/") > 1)
    if looks_local:
        raise InputError(f"dataset path {source} does not exist: {SOURCES_HELP}")
    return Opened(_open_hub(source), Path.cwd())


def _open_file(source: str, path: Path) -> Opened:
    if path.suffix == ".parquet":
        return Opened(_by_split(source, [path], _ParquetRows, alone=True), Path.cwd())
    if path.suffix in JSON_SUFFIXES:
        siblings = [path.with_name(name + path.suffix) for name in TEST_FALLBACKS] if path.stem == "train" else []
        files = [path] + [f for f in siblings if f.is_file()]
        return Opened(_by_split(source, files, _JsonRows, alone=len(files) == 1), path.parent)
    raise InputError(f"dataset {source}: a single file must be .parquet, .jsonl or .json; {SOURCES_HELP}")


def _open_dir(source: str, path: Path) -> Opened:
    if (path / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        return Opened(undecoded(load_from_disk(str(path))), Path.cwd())  # memory-mapped: opening is cheap
    if (path / "state.json").is_file():
        raise InputError(f"dataset {source} was saved as a single Dataset: save a DatasetDict "
                         "with 'train' and 'test' splits instead")
    parquet = sorted(path.rglob("*.parquet"))
    if parquet:
        return Opened(_by_split(source, parquet, _ParquetRows), Path.cwd())
    json_files = sorted(f for f in path.iterdir() if f.suffix in JSON_SUFFIXES and f.is_file())
    if json_files:
        return Opened(_by_split(source, json_files, _JsonRows), path)
    raise InputError(f"directory {source} holds neither a saved DatasetDict nor .parquet files nor "
                     f".jsonl/.json files: {SOURCES_HELP}")


def _open_hub(source: str) -> dict[str, Rows]:
    from datasets import load_dataset

    check_hub_available(source, "dataset")
    if not constants_offline():
        from .hub import check_hub_download_size

        check_hub_download_size(source)  # too large to download whole: refused with advice (data/hub.py)
    try:
        dd = load_dataset(source)
    except Exception as e:  # network, auth, missing repo, bad files: all are "cannot load it"
        raise InputError(f"dataset {source} could not be loaded from the hub ({type(e).__name__}: "
                         f"{first_line(e)}): check the id and the network, or download it and pass a "
                         "local path (save_to_disk directory or parquet files)") from e
    return undecoded(dd)


def constants_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


HUB_CONNECT_TIMEOUT = 3.0
"""Seconds to wait for the hub's host before calling it unreachable: an offline machine learns that in
3 s instead of sleeping through the hub client's retries (148 s measured, issue 17)."""


def check_hub_available(repo_id: str, kind: Literal["model", "dataset"]) -> None:
    """Fail fast, in one line, when `repo_id` can come neither from the hub nor from the local cache.

    Offline (HF_HUB_OFFLINE=1, or the hub's host unreachable) a cached repo is used from the cache;
    an uncached one is an InputError with the fix."""
    from huggingface_hub import constants, try_to_load_from_cache

    probe = "config.json" if kind == "model" else "README.md"
    cached = isinstance(try_to_load_from_cache(repo_id, probe, repo_type=kind), str)
    offline = bool(constants.HF_HUB_OFFLINE) or not _hub_reachable(constants.ENDPOINT)
    if not offline:
        return
    if cached:
        constants.HF_HUB_OFFLINE = True  # use the cache without asking the hub again
        return
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} cannot be reached"
    flag = "--model" if kind == "model" else "--dataset"
    raise InputError(f"{kind} {repo_id} is not in the local hub cache and {why}: download it on a machine with "
                     f"network (`hf download {repo_id}{' --repo-type dataset' if kind == 'dataset' else ''}`, "
                     f"same HF_HOME) or pass a local directory to {flag}")


def _hub_reachable(endpoint: str) -> bool:
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError:
        return False
    return True


def undecoded(dd) -> dict[str, Rows]:
    """The splits of a DatasetDict with its Image columns left as stored, for `decode_image`.

    An image nested in a list column (`images`) stays decoded by `datasets`: casting it would
    rewrite the whole dataset on disk. `datasets` turns it upright, as `decode_image` would.
    """
    return {name: _undecoded(ds) for name, ds in dd.items()}


def _undecoded(ds) -> Rows:
    from datasets import Image as ImageFeature
    from datasets import Video as VideoFeature

    videos = []
    for column, feature in ds.features.items():
        if isinstance(feature, ImageFeature) and feature.decode:
            ds = ds.cast_column(column, ImageFeature(decode=False))  # the schema only: no data is rewritten
        elif isinstance(feature, VideoFeature) and feature.decode:  # datasets would decode with torchcodec
            ds = ds.cast_column(column, VideoFeature(decode=False))
            videos.append(column)
    return _MarkedVideos(ds, videos) if videos else ds


class _MarkedVideos:
    """A split whose Video columns' stored values ({"bytes", "path"}) come wrapped as {"video": ...}, so
    that a loader tells them from a stored image (which has the same keys) and reads them as videos."""

    def __init__(self, ds, columns: list[str]):
        self.ds, self.columns, self.column_names = ds, columns, ds.column_names

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.ds[i]
        return {k: {"video": v} if k in self.columns and v is not None else v for k, v in row.items()}


def _by_split(source: str, files: list[Path], rows_type, alone: bool = False) -> dict[str, Rows]:
    by_split: dict[str, list[Path]] = {}
    for f in files:
        by_split.setdefault(_split_of(f, alone), []).append(f)
    return {split: rows_type(source, fs) for split, fs in by_split.items()}


def _split_of(file: Path, alone: bool) -> str:
    word = re.split(r"[-_.]", file.stem)[0]
    split = word if word.isalpha() else file.parent.name  # numbered shards sit in a split folder
    # a file given alone is read whatever its name: "rows.jsonl" is the train split
    return split if not alone or split in ("train", *TEST_FALLBACKS) else "train"


class _ParquetRows:
    """One split's parquet files: the schema is read when asked for, the rows on first use (so that
    asking whether a large dataset has a column costs nothing)."""

    def __init__(self, source: str, files: list[Path]):
        self.source, self.files = source, files

    @property
    def column_names(self) -> list[str]:
        import pyarrow.parquet as pq

        return self._reading(lambda: pq.read_schema(self.files[0]).names)

    @cached_property
    def _table(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        return self._reading(lambda: pa.concat_tables([pq.read_table(f) for f in self.files]))

    def __len__(self) -> int:
        return self._table.num_rows

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._table.slice(i, 1).to_pylist()[0]  # one row, without converting the whole table

    def _reading(self, read):
        import pyarrow as pa

        try:
            return read()
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"parquet files of dataset {self.source} could not be read ({first_line(e)}): "
                             "check that they are parquet with one schema per split") from e


class _JsonRows:
    """One split's JSON Lines / JSON files, read on first use."""

    def __init__(self, source: str, files: list[Path]):
        self.source, self.files = source, files

    @property
    def column_names(self) -> list[str]:
        return list(dict.fromkeys(key for row in self._rows if isinstance(row, dict) for key in row))

    @cached_property
    def _rows(self) -> list:
        return [row for f in self.files for row in _read_json(f)]

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._rows[i]


def _read_json(path: Path) -> list:
    """A .json file holding a list of rows, or JSON Lines (one row a line, blank lines skipped)."""
    text = read_text(path, "save the rows as UTF-8 JSON")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return _parse_json(text, path, 1)
    return [_parse_json(line, path, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_json(text: str, path: Path, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{line + err.lineno - 1} is not valid JSON: {err.msg}") from None


# --- images ------------------------------------------------------------------------------------

def decode_image(value: Any, where: str, size: tuple[Any, Any] | None = None) -> Image.Image:
    """An RGB image from a row's value: a PIL image, raw bytes, a path, or a stored image
    ({"bytes", "path"} as `datasets` writes it). `where` names the row in the one-line error.

    EXIF orientation: with `size` (the row's width/height columns, which detection boxes are
    measured against) the image is turned upright only when that is the size the columns give;
    without, a stored image is turned upright as `datasets` does when it decodes one, and a path,
    bytes or PIL image is used as it is.
    """
    image = _load_image(value, where)
    if size is not None:
        image = _match_size_columns(image, *size, where)
    elif isinstance(value, dict):
        image = _upright(image)
    check_aspect_ratio(image, where)
    return to_rgb(image)


MAX_ASPECT_RATIO = 200
"""The Qwen-VL processors' limit (smart_resize refuses a longer side over 200x the shorter): such
an image is refused, naming it, rather than padded (padding would change what the box measures)."""


def check_aspect_ratio(image: Image.Image, where: str) -> None:
    w, h = image.size
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise InputError(f"{where}: the image is {w}x{h}, an aspect ratio over {MAX_ASPECT_RATIO} that the Qwen-VL "
                         "processors cannot resize; crop it or drop the row")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB as the model sees it, from any mode, the one conversion of every image the package
    reads. 16-bit (I;16, I;16B, I;16L) is scaled by its bit depth (PIL's convert clips it: a 16-bit
    PNG becomes almost all white); 32-bit I by its range (16-bit data when above 255); F as 0..1
    when it stays within 1, else 0..255; transparency (RGBA, LA, PA, P with a transparent colour) is
    composited over white, as a viewer shows it; CMYK, YCbCr, 1, L by PIL's conversion."""
    import numpy as np

    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
            values = values / 257.0
        elif image.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        gray = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))  # mode L
        return gray.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _load_image(value: Any, where: str) -> Image.Image:
    try:
        if isinstance(value, Image.Image):
            image = value
        else:
            if isinstance(value, dict):
                value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
            if isinstance(value, bytes):
                value = io.BytesIO(value)
            elif not isinstance(value, (str, Path)) or value == "":
                raise ValueError(f"no image bytes and no path (got {type(value).__name__})")
            image = Image.open(value)
        image.load()  # Image.open is lazy: truncated or corrupt data only fails here
        return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"unreadable image in {where}: {first_line(e)}; fix or drop the row") from e


def _upright(image: Image.Image) -> Image.Image:
    if image.getexif().get(ExifTags.Base.Orientation) is not None:
        return ImageOps.exif_transpose(image)
    return image


def _match_size_columns(image: Image.Image, width: Any, height: Any, where: str) -> Image.Image:
    """The image as the width/height columns describe it. A column that disagrees with the image by
    more than 1 px means a box may describe another picture (rotated or resized): an error rather
    than silently wrong training data, unless the EXIF-rotated image matches."""
    if width is None or height is None:
        return image
    w, h = image.size
    if abs(w - int(width)) <= 1 and abs(h - int(height)) <= 1:
        return image
    upright = _upright(image)  # annotators see photos rotated by their EXIF tag
    if abs(upright.width - int(width)) <= 1 and abs(upright.height - int(height)) <= 1:
        return upright
    raise InputError(f"{where} says its image is {int(width)}x{int(height)} but the image is {w}x{h}: "
                     "the box may refer to another picture; fix the width/height columns or drop the row")



def image_files(items) -> list[Path]:
    """Image files in `items` (files, or directories searched recursively by suffix), in order;
    what the commands' --images flag takes."""
    paths = []
    for item in [items] if isinstance(items, (str, Path)) else items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"--images {item}: the directory holds no {'/'.join(IMAGE_SUFFIXES)} file")
            paths += found
        elif path.is_file():
            paths.append(path)  # any name: decode_image tells a non-image apart
        else:
            raise InputError(f"--images {item}: no such file or directory")
    if not paths:
        raise InputError("no images given: pass image files or directories")
    return paths


def open_image(path: str | Path):
    """An RGB image turned upright by its EXIF orientation, as `datasets` decodes one: the boxes
    are in pixels of the picture as people see it."""
    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise InputError(f"--images {path} is not a readable image ({str(err).strip() or type(err).__name__}): "
                         "pass image files or directories") from None
    check_aspect_ratio(upright, f"--images {path}")
    return to_rgb(upright)
