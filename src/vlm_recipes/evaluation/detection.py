"""Detection metrics. Single-object data (each sample one target box, at most one prediction):
`detection_metrics`, the shipped recipes' IoU and AP. Sets of boxes (several objects, referring
expressions, images with none): `set_metrics`, after one-to-one Hungarian matching per image.

Boxes are canonical absolute `(x1, y1, x2, y2)` in original image pixels (see `boxes.py`).
"""

from __future__ import annotations

import statistics
from typing import Sequence

import torch
from torchmetrics.detection import MeanAveragePrecision

from ..boxes import Box
from ..errors import InputError
from .matching import match_by_iou


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


# --- sets of boxes: several objects, referring expressions, negatives ------------------------------

MATCH_IOU = 0.5
"""A predicted box is a true positive when matched to a true box with at least this IoU (COCO's AP50,
RefCOCO's Acc@0.5)."""


def match_boxes(predicted: Sequence[Box], true: Sequence[Box]) -> list[tuple[int, int, float]]:
    """One-to-one matching of predicted to true boxes that maximises the summed IoU (Hungarian,
    scipy's linear_sum_assignment): (predicted index, true index, IoU) per pair, pairs that do not
    overlap dropped. Position in the answer plays no part."""
    return [pair for pair in match_by_iou(predicted, true) if pair[2] > 0]


def image_counts(predicted: Sequence[Box], true: Sequence[Box]) -> dict[str, float]:
    """One image's matching: true positives at IoU >= 0.5, false positives, misses, summed IoU of
    the matched pairs and their number."""
    pairs = match_boxes(predicted, true)
    tp = sum(iou >= MATCH_IOU for _, _, iou in pairs)
    return {"tp": tp, "fp": len(predicted) - tp, "fn": len(true) - tp,
            "iou_sum": sum(iou for _, _, iou in pairs), "pairs": len(pairs)}


def set_metrics(predicted: Sequence[Sequence[Box]], true: Sequence[Sequence[Box]], categories: Sequence[str],
                tasks: Sequence[str], scores: Sequence[float] | None = None) -> dict:
    """Metrics over images that each have zero or more true and predicted boxes.

    `categories[i]`: what image i's question asks for (AP is per category); `tasks[i]`: "detect" or
    "refer"; `scores[i]`: the answer's confidence, shared by its boxes for AP (default 1.0).

    Keys:
      precision, recall, f1   at IoU 0.5, counted over all images (TP, FP, misses summed)
      matched_iou             mean IoU of the matched pairs (0 when there are none)
      count_error             mean |predicted boxes - true boxes| per image
      map, map50              COCO AP@[.5:.95] and AP50, averaged over categories, and per_category
      acc50                   referring expressions: fraction whose first box has IoU >= 0.5 (RefCOCO)
      negative_empty          images with no true box: fraction answered with no box
      negative_fp             images with no true box: predicted boxes per image
      n, n_negative, n_refer  numbers of images
    """
    if not true:
        raise InputError("no samples to evaluate: the evaluation split is empty; "
                         "point the recipe at a split with annotated images")
    if not len(predicted) == len(true) == len(categories) == len(tasks):
        raise ValueError(f"{len(predicted)} predictions for {len(true)} targets")
    scores = [1.0] * len(true) if scores is None else scores
    counts = [image_counts(p, t) for p, t in zip(predicted, true)]
    tp, fp, fn = (sum(c[key] for c in counts) for key in ("tp", "fp", "fn"))
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    pairs = sum(c["pairs"] for c in counts)
    metrics = {"precision": precision, "recall": recall,
               "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
               "matched_iou": sum(c["iou_sum"] for c in counts) / pairs if pairs else 0.0,
               "count_error": statistics.fmean(abs(len(p) - len(t)) for p, t in zip(predicted, true))}
    metrics.update(coco_map(predicted, true, categories, scores))
    refer = [(p, t) for p, t, task in zip(predicted, true, tasks) if task == "refer"]
    if refer:
        metrics["acc50"] = statistics.fmean(bool(p) and box_iou(p[0], t[0]) >= MATCH_IOU for p, t in refer)
    negatives = [p for p, t in zip(predicted, true) if not t]
    if negatives:
        metrics["negative_empty"] = statistics.fmean(not p for p in negatives)
        metrics["negative_fp"] = statistics.fmean(len(p) for p in negatives)
    metrics.update(n=len(true), n_negative=len(negatives), n_refer=len(refer))
    return metrics


def coco_map(predicted: Sequence[Sequence[Box]], true: Sequence[Sequence[Box]], categories: Sequence[str],
             scores: Sequence[float]) -> dict:
    """{"map", "map50", "per_category": {name: {"ap", "ap50"}}} by torchmetrics (pycocotools backend);
    a predicted box is of the category its question asked for. A category never present in the truth
    has no AP (COCO skips it): its false positives show in precision and negative_fp instead."""
    names = sorted(set(categories))
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend="pycocotools", class_metrics=True)
    preds, gts = [], []
    for boxes, targets, name, score in zip(predicted, true, categories, scores):
        label = names.index(name)
        preds.append({"boxes": torch.tensor(list(boxes), dtype=torch.float32).reshape(-1, 4),
                      "scores": torch.full((len(boxes),), float(score)),
                      "labels": torch.full((len(boxes),), label, dtype=torch.long)})
        gts.append({"boxes": torch.tensor(list(targets), dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.full((len(targets),), label, dtype=torch.long)})
    metric.update(preds, gts)
    result = metric.compute()
    classes = result["classes"].reshape(-1).tolist()
    per_class = result["map_per_class"].reshape(-1).tolist()
    per_category = {names[c]: {"ap": max(ap, 0.0)} for c, ap in zip(classes, per_class) if ap >= 0}
    for name in per_category:  # AP50 per class: torchmetrics reports it only overall, so one class at a time
        per_category[name]["ap50"] = _class_ap50(preds, gts, names.index(name))
    return {"map": max(float(result["map"]), 0.0), "map50": max(float(result["map_50"]), 0.0),
            "per_category": per_category}


def _class_ap50(preds: list[dict], gts: list[dict], label: int) -> float:
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend="pycocotools", iou_thresholds=[0.5])
    keep = [i for i, g in enumerate(gts) if (g["labels"] == label).any() or (preds[i]["labels"] == label).any()]
    metric.update([preds[i] for i in keep], [gts[i] for i in keep])
    return max(float(metric.compute()["map"]), 0.0)
