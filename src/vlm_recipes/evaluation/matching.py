"""One-to-one matching of boxes by IoU, shared by the set metrics (`detection.py`) and the report's
failure kinds (`gallery.py`). numpy and scipy only: `vlm-recipes report` starts without torch."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..boxes import Box


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in a (N, 4) with every one in b (M, 4): (N, M); 0 for degenerate boxes.
    The same values as detection.box_iou, vectorised, without importing torch (the report command
    stays fast to start)."""
    width = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(min=0)
    height = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(min=0)
    inter = width * height
    area_a = ((a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0))[:, None]
    area_b = ((b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0))[None, :]
    union = area_a + area_b - inter
    valid = (area_a > 0) & (area_b > 0)
    return np.where(valid, inter / np.where(union > 0, union, 1.0), 0.0)


def match_by_iou(rows: Sequence[Box], columns: Sequence[Box]) -> list[tuple[int, int, float]]:
    """(row index, column index, IoU) of every pair of the one-to-one matching with the largest total
    IoU (Hungarian, scipy's linear_sum_assignment), zero-IoU pairs included; [] when either side is empty."""
    if not rows or not columns:
        return []
    ious = pairwise_iou(np.array(rows, dtype=float), np.array(columns, dtype=float))  # (rows, columns)
    picked_rows, picked_columns = linear_sum_assignment(ious, maximize=True)
    return [(int(r), int(c), float(ious[r, c])) for r, c in zip(picked_rows, picked_columns)]
