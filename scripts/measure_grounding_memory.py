#!/usr/bin/env python
"""Peak memory of a grounding run against the size of its dataset: COCO-layout sets of N small images.

    OMP_NUM_THREADS=1 PYTHONPATH=tests python scripts/measure_grounding_memory.py --images 1000 20000 [--dir /tmp/coco-mem]

For each N: writes DIR/N (COCO 2017 layout, 64x64 JPEGs, 1-2 boxes each; 200 validation images), times
loading its index in this process, then runs `vlm-recipes train --recipe r4-joint` for 20 steps with a
64-sample evaluation (base and fine-tuned) in a child process and reports the child's peak RSS
(`wait4`'s ru_maxrss). Prints one JSON line per N and the difference (README, DECISIONS D34).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def write_coco(root: Path, count: int) -> Path:
    """A COCO 2017 layout of `count` training and 200 validation pictures (tests/grounding_formats.py)."""
    try:  # the fixture writer lives with the tests: PYTHONPATH=tests
        from grounding_formats import CLASSES, coco_json
    except ImportError:
        sys.exit("error: tests/grounding_formats.py writes the fixture: run as PYTHONPATH=tests python "
                 "scripts/measure_grounding_memory.py ...")

    if (root / "annotations" / "instances_train2017.json").is_file():
        return root
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in CLASSES.items()]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("val", 200, 2), ("train", count, 1)):
        data = coco_json(root / f"{split}2017", n, seed, categories)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def load_seconds(root: Path) -> tuple[float, int]:
    from vlm_recipes.config import DataConfig
    from vlm_recipes.data import load_splits

    start = time.perf_counter()
    splits = load_splits(DataConfig(dataset=str(root)), "detection", seed=0)
    return time.perf_counter() - start, len(splits["train"])


def run_peak_rss_mb(root: Path, out: Path) -> float:
    """Peak RSS (MB) of a 20-step r4-joint run with a 64-sample evaluation on `root`."""
    command = [sys.executable, "-m", "vlm_recipes", "train", "--recipe", "r4-joint", "--dataset", str(root),
               "--max-steps", "20", "--set", "train.per_device_train_batch_size=2", "--set", "data.max_test=64",
               "--set", "data.num_val=0", "--set", "eval.max_new_tokens=24", "--no-wandb", "--overwrite",
               "--output-dir", str(out)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"run on {root} failed: {child.stderr.read()[-2000:]}")
    return usage.ru_maxrss / 1024  # Linux: kilobytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="+", default=[1000, 20000])
    p.add_argument("--dir", type=Path, default=Path("/tmp/coco-mem"))
    args = p.parse_args(argv)
    from vlm_recipes.data import detection, messages, retrieval  # noqa: F401  imported before any timing
    peaks = {}
    for count in args.images:
        root = write_coco(args.dir / str(count), count)
        seconds, samples = load_seconds(root)
        peaks[count] = run_peak_rss_mb(root, args.dir / f"run-{count}")
        print(json.dumps({"images": count, "train_samples": samples, "load_s": round(seconds, 2),
                          "peak_rss_mb": round(peaks[count], 1)}), flush=True)
    if len(peaks) > 1:
        low, high = min(peaks), max(peaks)
        print(json.dumps({"difference_mb": round(peaks[high] - peaks[low], 1),
                          "ratio": round(peaks[high] / peaks[low], 3)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
