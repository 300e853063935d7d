"""Scoring generated answers: detection IoU/AP when every reference is a box (r1-r4, and diffusion
on detection data), else exact match of the text (diffusion on a `messages` dataset).

The evaluator does not know how answers are produced: the objective hands it a `generate`
function (greedy decoding for SFT, iterative unmasking for MDLM), so both share one scorer.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable

from ..boxes import reported_box
from ..data.detection import DetectionSample
from ..models.distributed import map_sharded
from .detection import detection_metrics
from .generation import first_box
from .plots import plot_box_grid
from .result import EvalResult, stages_line

Generate = Callable[[object, list, str], tuple[list[str], list[float]]]
"""(model, samples, desc) -> (answer texts, confidences), one each per sample."""

DETECTION_COLUMNS = [("mean_iou", "mean IoU"), ("median_iou", "median IoU"), ("detection_rate", "detection rate"),
                     ("iou_gt_0.5", "IoU>0.5"), ("iou_gt_0.7", "IoU>0.7"), ("ap", "AP@[.5:.95]"), ("ap50", "AP50")]


class AnswerEvaluator:
    def __init__(self, generate: Generate, processor, family, num_plot: int = 8, batch_size: int = 16):
        self.generate, self.processor, self.family, self.num_plot = generate, processor, family, num_plot
        self.batch_size = batch_size
        """The batch `generate` runs: each process of several generates whole batches of it."""

    def evaluate(self, model, samples: list, desc: str) -> EvalResult:
        """With several processes each generates 1/N of the batches; all score the gathered answers."""
        answers = map_sharded(lambda part: list(zip(*self.generate(model, part, desc))), samples, self.batch_size)
        texts, scores = [text for text, _ in answers], [score for _, score in answers]
        return score_answers(samples, texts, scores, self.family, self.processor)

    def summary(self, metrics: dict, finetuned: EvalResult) -> str:
        if "mean_iou" not in metrics["finetuned"]:
            return text_summary(metrics)
        return detection_summary(metrics)

    def write_report(self, run_dir: Path, metrics: dict, base: EvalResult, finetuned: EvalResult,
                     samples: list) -> None:
        summary = self.summary(metrics, finetuned)
        if "mean_iou" not in metrics["finetuned"]:
            (run_dir / "results.md").write_text(f"{summary}\n\n![training loss](loss.png)\n")
            return
        (run_dir / "results.md").write_text(f"{summary}\n\n![training loss](loss.png)\n\n"
                                            "![predictions](predictions.png)\n")
        views = [detection_view(s, self.family, self.processor) for s in samples]
        boxes = {name: [p["predicted"] for p in result.predictions]
                 for name, result in (("base", base), ("fine-tuned", finetuned))}
        plot_box_grid(views, boxes, run_dir / "predictions.png", num=self.num_plot)


def detection_view(sample, family, processor) -> DetectionSample | None:
    """The sample as a detection target: itself, or the first box of its reference answer."""
    if isinstance(sample, DetectionSample):
        return sample
    if not sample.images:
        return None
    image = sample.images[0]
    box = first_box(sample.answer, *image.size, family, processor)
    return DetectionSample(image, box, *image.size, sample.image_id) if box else None


def score_answers(samples: list, texts: list[str], scores: list[float], family, processor) -> EvalResult:
    views = [detection_view(s, family, processor) for s in samples]
    if all(v is not None for v in views):
        boxes = [first_box(text, view.width, view.height, family, processor) for view, text in zip(views, texts)]
        return detection_result(views, boxes, texts, scores)
    hits = [text.strip() == s.answer.strip() for s, text in zip(samples, texts)]
    return EvalResult({"exact_match": statistics.fmean(hits), "n": len(hits)},
                      [{"image_id": s.image_id, "target": s.answer, "text": t} for s, t in zip(samples, texts)])


def detection_result(samples: list[DetectionSample], boxes: list, texts: list[str],
                     scores: list[float] | None = None) -> EvalResult:
    """Detection metrics and per-image predictions; `scores` rank detections for AP (default 1)."""
    metrics = detection_metrics(boxes, [s.box for s in samples], scores)
    scores = scores or [1.0] * len(samples)
    predictions = [{"image_id": s.image_id, "target": list(s.box), "predicted": reported_box(b),
                    "text": t, "score": round(c, 4)} for s, b, t, c in zip(samples, boxes, texts, scores)]
    return EvalResult(metrics, predictions)


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
