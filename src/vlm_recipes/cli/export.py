"""`vlm-recipes export --model RUN/model --out DIR`: a run's LoRA adapter merged into a plain checkpoint.

The adapter is merged into its base reloaded in FULL precision (models/export.py says why), saved
with the processor and the run's recipe, and checked: the merge must change the model's outputs,
and the saved copy must reload to the same logits. A run with full weights (r2) needs no export.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .predict import model_parser, run_main

RELOAD_TOLERANCE = 1e-3
"""The saved checkpoint must reload to the merged model's logits (float32: differences ~1e-6)."""


def build_parser() -> argparse.ArgumentParser:
    p = model_parser("export", "Merge a run's LoRA adapter into its full-precision base and save a checkpoint "
                     "that loads with from_pretrained.", "a run's model/ directory (or the run directory)")
    p.add_argument("--out", required=True, type=Path, help="directory for the merged checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


def run(args) -> int:
    import sys

    from .. import api
    from ..errors import EXIT_FAILED

    result = api.export(args.model, args.out, device=args.device)
    reload = "not checked" if result.reload_max_diff is None else f"{result.reload_max_diff:.3g}"
    print(f"merged {args.model} into {result.base} -> {result.path}\n"
          f"max logit change vs the base on the probe image: {result.max_logit_change:.4g} (> 0: the adapter acts)\n"
          f"max logit difference after reloading the saved checkpoint: {reload} (~0: saved as merged)")
    if result.reload_max_diff is not None and result.reload_max_diff > RELOAD_TOLERANCE:
        print(f"error: the checkpoint saved in {result.path} does not reload as merged (logits differ by "
              f"{result.reload_max_diff:.3g} > {RELOAD_TOLERANCE:g}): do not use it; export again into an empty "
              "directory", file=sys.stderr)
        return EXIT_FAILED
    return 0
