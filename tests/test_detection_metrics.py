import pytest

from vlm_recipes.errors import InputError
from vlm_recipes.evaluation.detection import box_iou, detection_metrics

T = (0.0, 0.0, 10.0, 10.0)
KEYS = {"mean_iou", "median_iou", "detection_rate", "iou_gt_0.5", "iou_gt_0.7", "ap", "ap50", "n"}


def test_iou_identical():
    assert box_iou(T, T) == 1.0


def test_iou_disjoint_and_touching():
    assert box_iou(T, (20, 20, 30, 30)) == 0.0
    assert box_iou(T, (10, 0, 20, 10)) == 0.0  # shared edge, no area


def test_iou_half_overlap():
    # intersection 5x10 = 50, union 100 + 100 - 50 = 150
    assert box_iou(T, (5, 0, 15, 10)) == pytest.approx(50 / 150)


def test_iou_contained():
    # inner 4x4 = 16 inside 100
    assert box_iou(T, (2, 2, 6, 6)) == pytest.approx(16 / 100)
    assert box_iou((2, 2, 6, 6), T) == pytest.approx(16 / 100)


def test_iou_degenerate():
    assert box_iou(T, (5, 5, 5, 8)) == 0.0
    assert box_iou((5, 5, 5, 5), (5, 5, 5, 5)) == 0.0


def test_metrics_hand_computed():
    preds = [T, (5, 0, 15, 10), (0, 0, 10, 6), None, (20, 20, 30, 30)]
    # IoUs: 1, 1/3, 0.6, 0 (missing), 0 (disjoint)
    m = detection_metrics(preds, [T] * 5)
    assert set(m) == KEYS
    assert m["mean_iou"] == pytest.approx((1 + 1 / 3 + 0.6) / 5)
    assert m["median_iou"] == pytest.approx(1 / 3)
    assert m["detection_rate"] == pytest.approx(4 / 5)
    assert m["iou_gt_0.5"] == pytest.approx(2 / 5)
    assert m["iou_gt_0.7"] == pytest.approx(1 / 5)
    assert m["n"] == 5


def test_all_perfect():
    m = detection_metrics([T, (1, 2, 3, 4)], [T, (1, 2, 3, 4)])
    assert m["ap"] == pytest.approx(1.0)
    assert m["ap50"] == pytest.approx(1.0)
    assert m["mean_iou"] == 1.0 and m["detection_rate"] == 1.0 and m["iou_gt_0.7"] == 1.0


def test_all_missing():
    m = detection_metrics([None, None], [T, T])
    assert m["ap"] == 0.0 and m["ap50"] == 0.0
    assert m["mean_iou"] == 0.0 and m["median_iou"] == 0.0 and m["detection_rate"] == 0.0


def test_ap_uses_scores():
    # 3 targets: one perfect hit, one miss (IoU 0), one image without a prediction.
    # Recall tops out at 1/3, so COCO's 101 recall points 0.00..0.33 (34 of them) carry
    # the interpolated precision and the rest carry 0.
    preds = [T, (20, 20, 30, 30), None]
    hit_first = detection_metrics(preds, [T] * 3, scores=[0.9, 0.8, 0.5])
    assert hit_first["ap"] == pytest.approx(34 / 101, abs=1e-6)
    assert hit_first["ap50"] == pytest.approx(34 / 101, abs=1e-6)
    # ranking the wrong box above the right one halves the precision at recall 1/3
    miss_first = detection_metrics(preds, [T] * 3, scores=[0.8, 0.9, 0.5])
    assert miss_first["ap"] == pytest.approx(0.5 * 34 / 101, abs=1e-6)


def test_ap_averages_iou_thresholds():
    # IoU 0.63 is a hit at thresholds 0.50, 0.55 and 0.60 only: 3 of the 10 thresholds
    m = detection_metrics([(0, 0, 10, 6.3)], [T])
    assert m["ap50"] == pytest.approx(1.0)
    assert m["ap"] == pytest.approx(0.3)


def test_empty_input_is_input_error():
    with pytest.raises(InputError, match="no samples"):
        detection_metrics([], [])


def test_length_mismatch_is_a_bug():
    with pytest.raises(ValueError):
        detection_metrics([T], [T, T])
    with pytest.raises(ValueError):
        detection_metrics([T], [T], scores=[1.0, 0.5])
