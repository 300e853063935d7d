"""Where a model goes wrong, image by image: the error analysis behind report.html and
`compare --html`.

Every image is read as two LISTS of (label, box) objects, the true ones and the predicted ones,
matched one-to-one by IoU (Hungarian, scipy). Single-box runs (one target, the first predicted box)
are the one-element case, so multi-object predictions need no other code. Failure kinds of an image:

  no_parse             the image has objects, the answer gave no box
  wrong_label          a matched prediction names another label than its true object
  iou_below_0.5        a matched prediction overlaps its true object with IoU < 0.5
  missed_object        a true object left without a prediction (the answer gave fewer boxes)
  extra_box            a prediction left without a true object on an image that has objects
  false_positive_on_negative   a box on an image with no object

The last three need several objects or negative images; on single-box data they are empty.
An image's score (worst first = lowest first) is the sum of its matched IoUs, a wrong label counting
0, over max(true, predicted) objects; an empty answer on a negative image scores 1.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .matching import match_by_iou

KINDS = ("no_parse", "wrong_label", "iou_below_0.5", "missed_object", "extra_box", "false_positive_on_negative")
RETRIEVAL_KINDS = ("wrong_top1", "positive_not_in_top5", "positive_not_in_top10")
TEXT_KINDS = ("wrong_answer",)
IOU_OK = 0.5


@dataclass
class Object:
    label: str | None
    """None: the label is unknown (a prediction saved without one is never called a wrong label)."""
    box: list[float]


@dataclass
class ImageOutcome:
    kinds: list[str]
    score: float
    ious: list[float] = field(default_factory=list)
    """IoU of each true object with its matched prediction (0 when unmatched), in true-object order."""

    @property
    def correct(self) -> bool:
        return not self.kinds


def _is_box(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)


def objects_of(value, label: str | None = None) -> list[Object]:
    """A list of objects from what a predictions.json row holds: None, one box [x1, y1, x2, y2],
    a list of boxes, of {"label", "box"|"bbox"} dicts, or of [label, box] pairs."""
    if value is None:
        return []
    if _is_box(value):
        return [Object(label, [float(v) for v in value])]
    found = []
    for item in value:
        if _is_box(item):
            found.append(Object(label, [float(v) for v in item]))
        elif isinstance(item, dict):
            found.append(Object(item.get("label", label), [float(v) for v in item.get("box", item.get("bbox"))]))
        else:
            found.append(Object(item[0], [float(v) for v in item[1]]))
    return found


def true_objects(row: dict, label: str | None) -> list[Object]:
    """The image's true objects: `objects` (multi-object rows) or `target` (one box, labelled `label`)."""
    return objects_of(row["objects"] if "objects" in row else row.get("target"), row.get("target_label", label))


def predicted_objects(row: dict) -> list[Object]:
    """The answer's objects: `predicted_objects` (multi-object rows) or `predicted` (one box or None)."""
    if "predicted_objects" in row:
        return objects_of(row["predicted_objects"])
    return objects_of(row.get("predicted"), row.get("predicted_label"))


def match(truth: list[Object], predicted: list[Object]) -> list[tuple[int, int, float]]:
    """(true index, predicted index, IoU) pairs of the one-to-one matching with the largest total IoU."""
    return match_by_iou([t.box for t in truth], [p.box for p in predicted])


def same_label(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a.strip().lower() == b.strip().lower()


def analyse(truth: list[Object], predicted: list[Object]) -> ImageOutcome:
    """The failure kinds and score of one image."""
    if not truth:
        return ImageOutcome(["false_positive_on_negative"] if predicted else [], 0.0 if predicted else 1.0)
    if not predicted:
        return ImageOutcome(["no_parse"], 0.0, [0.0] * len(truth))
    pairs = match(truth, predicted)
    kinds = []
    if any(not same_label(truth[t].label, predicted[p].label) for t, p, _ in pairs):
        kinds.append("wrong_label")
    if any(iou < IOU_OK for _, _, iou in pairs):
        kinds.append("iou_below_0.5")
    if len(pairs) < len(truth):
        kinds.append("missed_object")
    if len(pairs) < len(predicted):
        kinds.append("extra_box")
    ious = [0.0] * len(truth)
    for t, _, iou in pairs:
        ious[t] = iou
    earned = sum(iou for t, p, iou in pairs if same_label(truth[t].label, predicted[p].label))
    return ImageOutcome(kinds, earned / max(len(truth), len(predicted)), ious)


def analyse_rows(rows: list[dict], label: str | None) -> list[ImageOutcome]:
    return [analyse(true_objects(row, label), predicted_objects(row)) for row in rows]


def kind_counts(outcomes: list[ImageOutcome], kinds=KINDS) -> dict[str, int]:
    """Images per failure kind (an image may have several), and the correct ones."""
    counts = Counter(kind for outcome in outcomes for kind in outcome.kinds)
    return {"correct": sum(o.correct for o in outcomes), **{kind: counts[kind] for kind in kinds}}


def per_label(rows: list[dict], label: str | None) -> list[dict]:
    """Per true label: objects, found (matched with IoU >= 0.5 and the right label), mean IoU."""
    table: dict[str, dict] = {}
    for row in rows:
        truth, predicted = true_objects(row, label), predicted_objects(row)
        found = {t: (iou, same_label(truth[t].label, predicted[p].label)) for t, p, iou in match(truth, predicted)}
        for index, obj in enumerate(truth):
            entry = table.setdefault(obj.label or "(none)", {"label": obj.label or "(none)", "objects": 0,
                                                             "found": 0, "iou_sum": 0.0})
            iou, label_ok = found.get(index, (0.0, False))
            entry["objects"] += 1
            entry["found"] += iou >= IOU_OK and label_ok
            entry["iou_sum"] += iou
    return [{"label": e["label"], "objects": e["objects"], "found": e["found"],
             "mean_iou": e["iou_sum"] / e["objects"]} for e in table.values()]


# --- retrieval (mrl) ----------------------------------------------------------------------------

def retrieval_outcome(row: dict) -> ImageOutcome:
    """A query's kinds from its top-10 list; score = 1 / rank of the positive (0 beyond the top 10)."""
    top = row["top10"]
    rank = top.index(row["target"]) + 1 if row["target"] in top else None
    kinds = [] if rank == 1 else ["wrong_top1"]
    if rank is None or rank > 5:
        kinds.append("positive_not_in_top5")
    if rank is None:
        kinds.append("positive_not_in_top10")
    return ImageOutcome(kinds, 1.0 / rank if rank else 0.0)


# --- two runs on one test set -------------------------------------------------------------------

def is_retrieval_rows(rows: list[dict]) -> bool:
    """predictions.json rows of a retrieval run (each with its top-10 list)."""
    return bool(rows) and "top10" in rows[0]


def kind_of_rows(rows: list[dict]) -> str:
    """"retrieval" (top-10 lists), "text" (answers scored by exact match: diffusion on conversation
    data, whose target is a text) or "detection"."""
    if is_retrieval_rows(rows):
        return "retrieval"
    return "text" if rows and isinstance(rows[0].get("target"), str) else "detection"


def text_outcome(row: dict) -> ImageOutcome:
    right = row["text"].strip() == row["target"].strip()
    return ImageOutcome([] if right else ["wrong_answer"], float(right))


def split_key(rows: list[dict]) -> dict[str, str]:
    """What identifies a run's test set: each image id (query) with its true objects (target)."""
    if is_retrieval_rows(rows):
        return {f"{i}:{row['query']}": str(row["target"]) for i, row in enumerate(rows)}
    return {str(row["image_id"]): str(row.get("objects", row.get("target"))) for row in rows}


def different_test_sets(a: list[dict], b: list[dict]) -> str | None:
    """Why two runs' predictions are not on the same test set, or None when they are."""
    key_a, key_b = split_key(a), split_key(b)
    if len(key_a) != len(key_b):
        return f"{len(key_a)} test items against {len(key_b)}"
    only = sorted(set(key_a) - set(key_b))
    if only:
        return f"{len(only)} test items of the first run are not in the second (e.g. {only[0]!r})"
    differ = [k for k in key_a if key_a[k] != key_b[k]]
    if differ:
        first = differ[0]
        return f"{len(differ)} test items have other targets (e.g. {first!r}: {key_a[first]} vs {key_b[first]})"
    return None


def outcome_of_pair(a: ImageOutcome, b: ImageOutcome) -> str:
    """"a_wins" | "b_wins" | "both_wrong" | "both_right" for one image."""
    if a.correct and b.correct:
        return "both_right"
    if a.correct:
        return "a_wins"
    return "b_wins" if b.correct else "both_wrong"
