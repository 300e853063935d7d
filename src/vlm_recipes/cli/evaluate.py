"""`vlm-recipes evaluate --model M --dataset D [--recipe NAME] [--split S] [--out DIR] [--max-test N]`: score a model.

Any model (a run's, an export, a base) on any split the recipes read: its test split, scored by
the objective's own evaluator (`api.evaluate`). Prints the metrics table; --out writes
metrics.json and predictions.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .predict import model_parser, run_main


def build_parser() -> argparse.ArgumentParser:
    p = model_parser("evaluate", "Evaluate a model on a dataset's test split (detection IoU/AP, or retrieval "
                     "for mrl models) with the code a run evaluates with.")
    p.add_argument("--dataset", required=True, help="'synthetic', a hub id, a saved datasets dir, parquet or "
                   "JSON Lines file(s); name[test:N] takes N test rows")
    p.add_argument("--recipe", help="objective and prompt for a model without a run (default r4-joint); a run's "
                   "model always uses its own recipe")
    p.add_argument("--out", type=Path, help="directory for metrics.json and predictions.json")
    p.add_argument("--split", help="the split scored (default: the recipe's data.test_split, 'test', which falls "
                   "back to val/validation), e.g. testA of RefCOCO")
    p.add_argument("--max-test", type=int, help="score at most N test rows (default: the recipe's data.max_test)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


def run(args) -> int:
    from .. import api
    from ..errors import InputError

    if args.max_test is not None and args.max_test < 1:
        raise InputError(f"--max-test {args.max_test}: must be >= 1")
    report = api.evaluate(args.model, args.dataset, recipe=args.recipe, out_dir=args.out, device=args.device,
                          max_test=args.max_test, split=args.split)
    print(f"# {args.model} on {args.dataset} ({report['recipe']}, objective {report['objective']})\n")
    print(metrics_table(args.model, report["metrics"]))
    if args.out is not None:
        print(f"\nwritten: {args.out / 'metrics.json'}, {args.out / 'predictions.json'}")
    return 0


def metrics_table(name: str, metrics: dict) -> str:
    """The evaluator's table for one model: detection, sets of boxes, retrieval (per direction and dim)
    or exact match."""
    from ..evaluation.answers import detection_table, set_table

    if "mean_iou" in metrics:
        return detection_table([(name, metrics)])
    if "f1" in metrics:
        return set_table([(name, metrics)])
    if "t2i" in metrics or "t2v" in metrics:
        what = "video" if "t2v" in metrics else "image"
        forward, backward = ("t2v", "v2t") if what == "video" else ("t2i", "i2t")
        tables = [f"{title}\n\n{retrieval_rows(metrics[key])}" for key, title in
                  ((forward, f"Text -> {what}"), (backward, f"{what.capitalize()} -> text"))]
        if "order" in metrics:
            tables.append("Order test (own clip above it reversed)\n\n| dim | fraction |\n|---|---|\n"
                          + "\n".join(f"| {dim} | {value:.3f} |" for dim, value in metrics["order"].items()))
        return "\n\n".join(tables)
    return f"| model | exact match |\n|---|---|\n| {name} | {metrics['exact_match']:.3f} |"


def retrieval_rows(by_dim: dict) -> str:
    from ..evaluation.retrieval import METRIC_NAMES

    lines = ["| dim | " + " | ".join(METRIC_NAMES) + " |", "|" + "---|" * (len(METRIC_NAMES) + 1)]
    lines += [f"| {dim} | " + " | ".join(f"{row[m]:.3f}" for m in METRIC_NAMES) + " |" for dim, row in by_dim.items()]
    return "\n".join(lines)
