"""Scoring generated answers: detection IoU/AP when every reference is one box (r1-r4, and diffusion
on detection data), set metrics (Hungarian-matched F1, mAP, Acc@0.5, negatives) when references are
sets of boxes, referring expressions or empty, else exact match of the text (a `messages` dataset
whose answers are not boxes).

The evaluator does not know how answers are produced: the objective hands it a `generate`
function (greedy decoding for SFT, iterative unmasking for MDLM), so both share one scorer.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

from ..boxes import is_empty_answer, reported_box
from ..data.detection import GroundingSample
from ..models.distributed import map_sharded
from .detection import detection_metrics, set_metrics
from .generation import answer_boxes
from .plots import plot_box_grid
from .result import EvalResult, stages_line
from .thumbnails import save_detection_images

Generate = Callable[[object, list, str], tuple[list[str], list[float]]]
"""(model, samples, desc) -> (answer texts, confidences), one each per sample."""

DETECTION_COLUMNS = [("mean_iou", "mean IoU"), ("median_iou", "median IoU"), ("detection_rate", "detection rate"),
                     ("iou_gt_0.5", "IoU>0.5"), ("iou_gt_0.7", "IoU>0.7"), ("ap", "AP@[.5:.95]"), ("ap50", "AP50")]


class AnswerEvaluator:
    def __init__(self, generate: Generate, processor, family, num_plot: int = 8, batch_size: int = 16,
                 sets: bool | None = None):
        self.generate, self.processor, self.family, self.num_plot = generate, processor, family, num_plot
        self.sets = sets
        """Score what `evaluate` is given by set metrics (True), single-box metrics (False) or as its
        rows are (None, the default; a run's validation evaluator is told its training data's kind)."""
        self.batch_size = batch_size
        """The batch `generate` runs: each process of several generates whole batches of it."""

    def evaluate(self, model, samples: list, desc: str) -> EvalResult:
        """With several processes each generates 1/N of the batches; all score the gathered answers."""
        answers = map_sharded(lambda part: list(zip(*self.generate(model, part, desc))), samples, self.batch_size)
        texts, scores = [text for text, _ in answers], [score for _, score in answers]
        return score_answers(samples, texts, scores, self.family, self.processor, self.sets)

    def summary(self, metrics: dict, finetuned: EvalResult) -> str:
        if "mean_iou" in metrics["finetuned"]:
            return detection_summary(metrics)
        if "f1" in metrics["finetuned"]:
            return set_summary(metrics)
        return text_summary(metrics)

    def write_report(self, run_dir: Path, metrics: dict, base: EvalResult, finetuned: EvalResult,
                     samples: list) -> None:
        summary = self.summary(metrics, finetuned)
        if "exact_match" in metrics["finetuned"]:
            (run_dir / "results.md").write_text(f"{summary}\n\n![training loss](loss.png)\n")
            return
        (run_dir / "results.md").write_text(f"{summary}\n\n![training loss](loss.png)\n\n"
                                            "![predictions](predictions.png)\n")
        views = [detection_view(s, self.family, self.processor) for s in samples]
        boxes = {name: [p["predicted"] for p in result.predictions]
                 for name, result in (("base", base), ("fine-tuned", finetuned))}
        plot_box_grid(views, boxes, run_dir / "predictions.png", num=self.num_plot)
        save_detection_images(run_dir, views)  # report.html's gallery (vlm-recipes report rebuilds it)


def detection_view(sample, family, processor) -> GroundingSample | None:
    """The sample as a grounding target: itself, or a conversation's image with every box of its
    reference answer (none: the family's empty answer); None when the reference is other text."""
    if isinstance(sample, GroundingSample):
        return sample
    if not sample.images:
        return None
    image = sample.images[0]
    objects = tuple(answer_boxes(sample.answer, *image.size, family, processor))
    if not objects and not is_empty_answer(sample.answer, family):
        return None
    label = objects[0][0] if objects else ""
    return GroundingSample(image, objects, *image.size, sample.image_id, prompt="", label=label)


def score_answers(samples: list, texts: list[str], scores: list[float], family, processor,
                  sets: bool | None = None) -> EvalResult:
    """Today's single-box metrics when every sample is one object asked by category; set metrics when
    the references are boxes of another shape (or `sets`: the training data's kind decides); exact
    match otherwise."""
    views = [detection_view(s, family, processor) for s in samples]
    if all(v is not None for v in views):
        found = [answer_boxes(text, v.width, v.height, family, processor) for v, text in zip(views, texts)]
        if single_box_metrics(views, sets):  # the first box, and the label it was given (report: wrong label)
            boxes, labels = [f[0][1] if f else None for f in found], [f[0][0] if f else None for f in found]
            return detection_result(views, boxes, texts, scores, labels)
        return set_result(views, found, texts, scores)
    hits = [text.strip() == s.answer.strip() for s, text in zip(samples, texts)]
    return EvalResult({"exact_match": statistics.fmean(hits), "n": len(hits)},
                      [{"image_id": s.image_id, "target": s.answer, "text": t} for s, t in zip(samples, texts)])


def single_box_metrics(views: list, sets: bool | None) -> bool:
    """Whether these references are scored by single-box metrics: `sets` when the data's kind is
    known (a validation split of a few rows may hold one box each by chance), else their shape."""
    return all(v.single_box for v in views) if sets is None else not sets


def detection_result(samples: list[GroundingSample], boxes: list, texts: list[str],
                     scores: list[float] | None = None, labels: list[str | None] | None = None) -> EvalResult:
    """Detection metrics and per-image predictions; `scores` rank detections for AP (default 1);
    `labels`: the label the answer gave its box (the report's "wrong label"), if known."""
    metrics = detection_metrics(boxes, [s.box for s in samples], scores)
    scores = scores or [1.0] * len(samples)
    labels = labels or [None] * len(samples)
    predictions = [{"image_id": s.image_id, "target": list(s.box), "predicted": reported_box(b),
                    "predicted_label": label, "text": t, "score": round(c, 4)}
                   for s, b, t, c, label in zip(samples, boxes, texts, scores, labels)]
    return EvalResult(metrics, predictions)


def set_result(samples: list[GroundingSample], answers: list[list], texts: list[str],
               scores: list[float] | None = None) -> EvalResult:
    """Set metrics and per-image predictions: every true and every predicted (label, box)."""
    scores = scores or [1.0] * len(samples)
    metrics = set_metrics([[box for _, box in a] for a in answers], [s.boxes for s in samples],
                          [s.label for s in samples], [s.task for s in samples], scores)
    predictions = [{"image_id": s.image_id, "prompt": s.prompt, "task": s.task,
                    "target": [[label, list(box)] for label, box in s.objects],
                    "predicted": [[label, reported_box(box)] for label, box in a], "text": t, "score": round(c, 4)}
                   for s, a, t, c in zip(samples, answers, texts, scores)]
    return EvalResult(metrics, predictions)


SET_COLUMNS = [("precision", "P@0.5"), ("recall", "R@0.5"), ("f1", "F1@0.5"), ("matched_iou", "matched IoU"),
               ("count_error", "count error"), ("map", "mAP"), ("map50", "mAP50"), ("acc50", "Acc@0.5"),
               ("negative_empty", "empty on negatives"), ("negative_fp", "FP / negative")]
"""The set table's columns; Acc@0.5 and the negatives' only when the data has such images."""


def set_table(rows: list[tuple[str, dict]]) -> str:
    columns = [(k, t) for k, t in SET_COLUMNS if all(k in m for _, m in rows)]
    lines = ["| model | " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k, _ in columns) + " |" for name, m in rows]
    return "\n".join(lines)


def set_summary(metrics: dict) -> str:
    """Base against each stage on sets of boxes, and AP per category."""
    by_stage = metrics.get("by_stage") or {"": metrics["finetuned"]}
    rows = stage_rows(metrics["recipe"], metrics["base"], by_stage)
    tuned = metrics["finetuned"]
    gain = tuned["f1"] - metrics["base"]["f1"]
    per_category = "\n".join(f"| {name} | {m['ap']:.3f} | {m['ap50']:.3f} |"
                              for name, m in sorted(tuned.get("per_category", {}).items()))
    return (f"# {metrics['recipe']}: base vs fine-tuned\n\n{set_table(rows)}\n\n"
            f"F1@0.5 gain: {gain:+.3f} on {tuned['n']} test images ({tuned['n_negative']} without the asked "
            f"object, {tuned['n_refer']} referring expressions). Base model: `{metrics['base_model']}` "
            f"({metrics['family']}). Stages: {stages_line(metrics)}.\n\n"
            f"AP per category (fine-tuned):\n\n| category | AP | AP50 |\n|---|---|---|\n{per_category}")


def detection_table(rows: list[tuple[str, dict]]) -> str:
    header = "| model | " + " | ".join(title for _, title in DETECTION_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(DETECTION_COLUMNS) + 1)]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(f"{metrics[key]:.3f}" for key, _ in DETECTION_COLUMNS) + " |")
    return "\n".join(lines)


def detection_summary(metrics: dict) -> str:
    """Base against fine-tuned; a multi-stage run shows each stage's output, and a run with an
    out-of-domain split (data.num_shifted) shows it in a second table."""
    by_stage = metrics.get("by_stage") or {"": metrics["finetuned"]}
    table = detection_table(stage_rows(metrics["recipe"], metrics["base"], by_stage))
    gain = metrics["finetuned"]["mean_iou"] - metrics["base"]["mean_iou"]
    text = (f"# {metrics['recipe']}: base vs fine-tuned\n\n{table}\n\n"
            f"Mean IoU gain: {gain:+.3f} on {metrics['finetuned']['n']} test images. "
            f"Base model: `{metrics['base_model']}` ({metrics['family']}). Stages: {stages_line(metrics)}.")
    shifted = metrics.get("shifted")
    if shifted:
        rows = stage_rows(metrics["recipe"], shifted["base"], {k: v for k, v in shifted.items() if k != "base"})
        text += (f"\n\n## Out-of-domain split ({shifted['base']['n']} images of the shifted style, never trained on)"
                 f"\n\n{detection_table(rows)}")
    return text


def stage_rows(recipe: str, base: dict, by_stage: dict) -> list[tuple[str, dict]]:
    """Table rows: base, then each stage's output (stage name -> metrics, in order), the last named
    after the recipe; one stage is the recipe's row alone."""
    names = list(by_stage)
    return [("base", base)] + [(recipe if len(names) == 1 else f"{recipe} ({name})" if name == names[-1]
                                else f"after {name}", by_stage[name]) for name in names]


def text_summary(metrics: dict) -> str:
    base, tuned = metrics["base"]["exact_match"], metrics["finetuned"]["exact_match"]
    return (f"# {metrics['recipe']}: base vs fine-tuned\n\n| model | exact match |\n|---|---|\n"
            f"| base | {base:.3f} |\n| {metrics['recipe']} | {tuned:.3f} |\n\n"
            f"{metrics['finetuned']['n']} test conversations; base model `{metrics['base_model']}`.")
