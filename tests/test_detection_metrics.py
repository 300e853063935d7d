import pytest

from vlm_recipes.errors import InputError
from vlm_recipes.evaluation.detection import box_iou, detection_metrics, match_boxes, set_metrics

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


# --- sets of boxes: hand-computed cases ------------------------------------------------------

A, B = (0.0, 0.0, 10.0, 10.0), (20.0, 0.0, 30.0, 10.0)
HALF_A = (0.0, 0.0, 10.0, 5.0)  # IoU 0.5 with A: counts at the 0.5 threshold


def test_matching_is_one_to_one_and_maximises_summed_iou():
    t1, t2 = (0.0, 0.0, 10.0, 10.0), (6.0, 0.0, 16.0, 10.0)
    p1, p2 = (2.0, 0.0, 12.0, 10.0), (0.0, 0.0, 9.0, 10.0)
    # p1-t1 0.667 + p2-t2 0.1875 = 0.854 loses to p1-t2 0.4286 + p2-t1 0.9 = 1.329
    pairs = sorted(match_boxes([p1, p2], [t1, t2]))
    assert [(p, t) for p, t, _ in pairs] == [(0, 1), (1, 0)]
    assert [iou for _, _, iou in pairs] == pytest.approx([60 / 140, 0.9])
    assert match_boxes([], [t1]) == [] and match_boxes([p1], []) == []


def test_set_metrics_hand_computed():
    predicted = [[B, HALF_A, B],  # B matched, half of A matched at IoU 0.5, a duplicate of B: 2 TP, 1 FP
                 [(0.0, 0.0, 5.0, 5.0)],  # a box on a negative: 1 FP
                 [],  # a negative answered empty
                 []]  # a positive answered empty: 1 miss
    true = [[A, B], [], [], [A]]
    m = set_metrics(predicted, true, ["t"] * 4, ["detect"] * 4)
    assert m["precision"] == pytest.approx(2 / 4) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)  # 2PR / (P + R)
    assert m["matched_iou"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["count_error"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert m["negative_empty"] == pytest.approx(0.5) and m["negative_fp"] == pytest.approx(0.5)
    assert (m["n"], m["n_negative"], m["n_refer"]) == (4, 2, 0) and "acc50" not in m


def test_answer_order_plays_no_part():
    m = set_metrics([[B, A]], [[A, B]], ["t"], ["detect"])
    assert m["precision"] == m["recall"] == m["f1"] == m["matched_iou"] == 1.0
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)


def test_referring_accuracy_scores_the_first_box():
    predicted = [[(0.0, 0.0, 10.0, 6.0)], [], [B, A]]  # IoU 0.6: hit; no box: miss; right box second: miss
    m = set_metrics(predicted, [[A], [A], [A]], ["t"] * 3, ["refer"] * 3)
    assert m["acc50"] == pytest.approx(1 / 3) and m["n_refer"] == 3


def test_map50_hand_computed_and_per_category():
    # category t: image 1 exact (score 0.9), image 2 a wrong box (score 0.8): precision 1 up to
    # recall 0.5, never recall 1: COCO's 101-point AP50 = 51 / 101. Category s: exact, AP 1.
    predicted = [[A], [B], [B]]
    m = set_metrics(predicted, [[A], [A], [B]], ["t", "t", "s"], ["detect"] * 3, scores=[0.9, 0.8, 0.7])
    assert m["per_category"]["t"]["ap50"] == pytest.approx(51 / 101, abs=1e-4)
    assert m["per_category"]["s"]["ap50"] == pytest.approx(1.0)
    assert m["map50"] == pytest.approx((51 / 101 + 1.0) / 2, abs=1e-4)


def test_set_metrics_empty_input_is_input_error():
    with pytest.raises(InputError):
        set_metrics([], [], [], [])
