"""Generated datasets kept on disk between runs, as `datasets` keeps a hub download.

The embedded default would generate its 3,300 images on every run otherwise (about 30 s of a 4-minute
r4-joint run on 2 cores). A cached copy is named by the generator's own source code and its
arguments, so any change to either generates afresh; nothing is ever invalidated by hand.

Where: $VLM_RECIPES_CACHE, else $XDG_CACHE_HOME/vlm-recipes, else ~/.cache/vlm-recipes.
VLM_RECIPES_CACHE=off turns caching off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from datasets import DatasetDict, load_from_disk
from datasets.utils import disable_progress_bars, enable_progress_bars, is_progress_bar_enabled

log = logging.getLogger(__name__)


def cache_root() -> Path | None:
    """The cache directory, or None when caching is off."""
    setting = os.environ.get("VLM_RECIPES_CACHE", "")
    if setting.lower() in ("off", "0", "false", "none"):
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vlm-recipes"


def cached_dataset(name: str, generator_source: Path, arguments: dict, build: Callable[[], DatasetDict]) -> DatasetDict:
    """`build()`'s DatasetDict, from the cache when this generator (its source file's bytes) was run
    with these `arguments` before. Several processes may build at once (data-parallel ranks): each
    writes a private copy and renames it into place; the first rename wins, the others are dropped."""
    root = cache_root()
    if root is None:
        return build()
    import numpy
    import PIL

    # Pillow draws the text and numpy draws the noise: a new version may change the pixels
    versions = f"{PIL.__version__}|{numpy.__version__}|{sorted(arguments.items())}"
    digest = hashlib.sha256(generator_source.read_bytes() + versions.encode()).hexdigest()
    path = root / f"{name}-{digest[:16]}"
    if (path / "dataset_dict.json").is_file():
        try:
            return load_from_disk(str(path))
        except Exception as err:  # a damaged copy (disk full, killed mid-write): generate again
            log.warning("ignoring the damaged cached dataset %s (%s)", path, err)
    dataset = build()
    try:
        partial = root / f".{path.name}.{uuid.uuid4().hex}"
        with quiet_progress():
            dataset.save_to_disk(str(partial))
        try:
            os.rename(partial, path)
        except OSError:  # another process got there first, or a damaged copy is in the way
            shutil.rmtree(partial, ignore_errors=True)
    except OSError as err:  # a read-only or full disk costs speed, never the run
        log.warning("could not cache the generated dataset in %s (%s); set VLM_RECIPES_CACHE", root, err)
    return dataset


@contextmanager
def quiet_progress() -> Iterator[None]:
    """No "Saving the dataset" bars in the run's log: the cache is not the user's business."""
    was_enabled = is_progress_bar_enabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            enable_progress_bars()
