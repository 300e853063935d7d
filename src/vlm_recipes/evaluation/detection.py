"""Single-object detection metrics: each sample has one target box and at most one prediction.

Boxes are canonical absolute `(x1, y1, x2, y2)` in original image pixels (see `boxes.py`).
"""

from __future__ import annotations

import statistics
from typing import Sequence

import torch
from torchmetrics.detection import MeanAveragePrecision

from ..boxes import Box
from ..errors import InputError


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes; 0 when they do not overlap or one is degenerate."""
    if a[2] <= a[0] or a[3] <= a[1] or b[2] <= b[0] or b[3] <= b[1]:
        return 0.0
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area_a + area_b - inter)


def _coco_ap(predictions: Sequence[Box | None], targets: Sequence[Box],
             scores: Sequence[float]) -> tuple[float, float]:
    """COCO AP@[.50:.05:.95] and AP@.50 for one class, via torchmetrics (pycocotools backend).

    Every image has exactly one ground-truth box; a missing prediction is an image with no
    detections, which COCO counts as a miss at every threshold.
    """
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend="pycocotools")
    preds, gts = [], []
    for pred, target, score in zip(predictions, targets, scores):
        if pred is None:
            preds.append({"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0),
                          "labels": torch.zeros(0, dtype=torch.long)})
        else:
            preds.append({"boxes": torch.tensor([pred], dtype=torch.float32),
                          "scores": torch.tensor([score], dtype=torch.float32),
                          "labels": torch.zeros(1, dtype=torch.long)})
        gts.append({"boxes": torch.tensor([target], dtype=torch.float32),
                    "labels": torch.zeros(1, dtype=torch.long)})
    metric.update(preds, gts)
    result = metric.compute()
    return float(result["map"]), float(result["map_50"])


def detection_metrics(predictions: Sequence[Box | None], targets: Sequence[Box],
                      scores: Sequence[float] | None = None) -> dict[str, float]:
    """Metrics over samples that each have one target box and at most one predicted box.

    `predictions[i]` is None when the model gave no parseable box; it then counts IoU 0.
    `scores` rank predictions for AP (default 1.0 for all, i.e. no ranking).

    Keys:
      mean_iou, median_iou   IoU per sample, missing predictions included as 0
      detection_rate         fraction of samples with a parseable predicted box, right or wrong
      iou_gt_0.5, iou_gt_0.7 fraction of samples with IoU strictly above 0.5 / 0.7
      ap                     COCO AP averaged over IoU thresholds 0.50:0.05:0.95
      ap50                   COCO AP at IoU 0.50
      n                      number of samples
    """
    if not targets:
        raise InputError("no samples to evaluate: the evaluation split is empty; "
                         "point the recipe at a split with annotated images")
    # mismatched lengths are a bug in the caller, not bad user input
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if scores is None:
        scores = [1.0] * len(targets)
    elif len(scores) != len(targets):
        raise ValueError(f"{len(scores)} scores for {len(targets)} targets")

    ious = [0.0 if p is None else box_iou(p, t) for p, t in zip(predictions, targets)]
    n = len(ious)
    ap, ap50 = _coco_ap(predictions, targets, scores)
    return {
        "mean_iou": statistics.fmean(ious),
        "median_iou": statistics.median(ious),
        "detection_rate": sum(p is not None for p in predictions) / n,
        "iou_gt_0.5": sum(iou > 0.5 for iou in ious) / n,
        "iou_gt_0.7": sum(iou > 0.7 for iou in ious) / n,
        "ap": ap,
        "ap50": ap50,
        "n": n,
    }
