"""Predictions where people already look: a fixed sample of test images with their true and
predicted boxes, logged to TensorBoard (drawn images, one tag per image, so TensorBoard's step
slider shows how the boxes move) and to W&B (`wandb.Image` with box overlays), at every validation
while a stage trains and for the base and fine-tuned test evaluations at the end; plus report.html.

  trainer/<stage>/predictions/   TensorBoard images at each validation (tags predictions/<image id>)
  trainer/evaluation/            the final ones (predictions/base/<id>, predictions/finetuned/<id>)

Detection runs only (an `mrl` run's report shows its retrievals; TensorBoard gets its scalars).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers import TrainerCallback

from ..evaluation.answers import AnswerEvaluator, detection_view
from ..evaluation.gallery import predicted_objects, true_objects
from ..evaluation.report import write_report
from ..evaluation.thumbnails import FOLDER, INDEX, thumbnail
from ..models.distributed import full_weights, is_main_process

SAMPLE_SIZE = 8
"""Test images logged at each evaluation: the first ones of the test split, the same every time."""
TRUE_COLOUR, PREDICTED_COLOUR = (0, 200, 83), (255, 23, 68)


def draw_boxes(image: Image.Image, width: int, height: int, row: dict, label: str | None = None) -> Image.Image:
    """`image` (any size; boxes are in pixels of a width x height original) with the row's true boxes
    in green and predicted boxes in red."""
    drawn = image.convert("RGB").copy()
    sx, sy = drawn.width / width, drawn.height / height
    pen = ImageDraw.Draw(drawn)
    for objects, colour in ((true_objects(row, label), TRUE_COLOUR), (predicted_objects(row), PREDICTED_COLOUR)):
        for obj in objects:
            x1, y1, x2, y2 = obj.box
            pen.rectangle((x1 * sx, y1 * sy, x2 * sx, y2 * sy), outline=colour, width=2)
    return drawn


def wandb_image(image: Image.Image, width: int, height: int, row: dict, label: str | None = None):
    """A `wandb.Image` with W&B's own overlays: "truth" and "prediction" box groups."""
    import wandb

    sx, sy = image.width / width, image.height / height

    def group(objects, class_id):
        return {"box_data": [{"position": {"minX": o.box[0] * sx, "minY": o.box[1] * sy, "maxX": o.box[2] * sx,
                                           "maxY": o.box[3] * sy}, "domain": "pixel", "class_id": class_id,
                              "box_caption": o.label or ""} for o in objects],
                "class_labels": {0: "true", 1: "predicted"}}

    boxes = {"truth": group(true_objects(row, label), 0), "prediction": group(predicted_objects(row), 1)}
    return wandb.Image(image, caption=str(row.get("image_id", "")), boxes=boxes)


def log_rows(rows: list[dict], images: dict[str, tuple[Image.Image, int, int]], step: int, tag: str,
             log_dir: Path | None, use_wandb: bool) -> None:
    """Each row (a predictions.json row) whose image is in `images` (id -> image, width, height):
    a drawn image to TensorBoard under `log_dir` (None: none), a wandb.Image to the open W&B run."""
    shown = [(row, *images[str(row["image_id"])]) for row in rows if str(row["image_id"]) in images]
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(log_dir)) as writer:
            for row, image, width, height in shown:
                writer.add_image(f"{tag}/{row['image_id']}", np.asarray(draw_boxes(image, width, height, row)), step,
                                 dataformats="HWC")
    if use_wandb:
        import wandb

        if wandb.run is not None:  # the Trainer's run
            # one key per image (images of several sizes in one list are shown distorted by W&B)
            wandb.run.log({**{f"{tag}/{row['image_id']}": wandb_image(image, width, height, row)
                              for row, image, width, height in shown}, "train/global_step": step})


class PredictionLogger(TrainerCallback):
    """After each validation, the model's answers on the fixed test sample, logged with boxes."""

    def __init__(self, evaluator: AnswerEvaluator, samples: list, log_dir: Path, report_to: list[str]):
        self.evaluator, self.samples, self.log_dir, self.report_to = evaluator, samples, log_dir, report_to
        views = [detection_view(s, evaluator.family, evaluator.processor) for s in samples]
        self.images = {str(v.image_id): (thumbnail(v.image), v.width, v.height) for v in views}

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        with full_weights(model):  # every process takes part (sharded generation); the main one logs
            result = self.evaluator.evaluate(model, self.samples, desc=f"logged sample, step {state.global_step}")
        if is_main_process():
            log_rows(result.predictions, self.images, state.global_step, "predictions",
                     self.log_dir if "tensorboard" in self.report_to else None, "wandb" in self.report_to)


def prediction_callbacks(evaluator, test_samples: list, stage_dir: Path, report_to: list[str]) -> list:
    """[PredictionLogger] for a detection run that logs anywhere, else []."""
    if not isinstance(evaluator, AnswerEvaluator) or not {"tensorboard", "wandb"} & set(report_to):
        return []
    sample = [test_samples[i] for i in range(min(SAMPLE_SIZE, len(test_samples)))]  # any sequence, lazy ones too
    if not sample or any(detection_view(s, evaluator.family, evaluator.processor) is None for s in sample):
        return []  # answers that are not boxes (diffusion on a text dataset)
    return [PredictionLogger(evaluator, sample, stage_dir / "predictions", report_to)]


def log_final_predictions(run_dir: Path, report_to: list[str]) -> None:
    """The base and fine-tuned answers on the same fixed sample, from predictions.json and the
    run's stored thumbnails, at the run's last training step."""
    index_path = run_dir / FOLDER / INDEX
    if not index_path.is_file() or not {"tensorboard", "wandb"} & set(report_to):
        return
    index = json.loads(index_path.read_text())
    predictions = json.loads((run_dir / "predictions.json").read_text())
    if not predictions["finetuned"] or "image_id" not in predictions["finetuned"][0]:
        return  # retrieval
    ids = [str(row["image_id"]) for row in predictions["finetuned"][:SAMPLE_SIZE]]
    images = {i: (Image.open(run_dir / FOLDER / index[i]["file"]), index[i]["width"], index[i]["height"])
              for i in ids if "file" in index.get(i, {})}
    history = json.loads((run_dir / "train_log.json").read_text()) if (run_dir / "train_log.json").is_file() else []
    step = max((entry.get("step", 0) for entry in history), default=0)
    for name in ("base", "finetuned"):
        log_rows(predictions[name][:SAMPLE_SIZE], images, step, f"predictions/{name}",
                 run_dir / "trainer" / "evaluation" if "tensorboard" in report_to else None, "wandb" in report_to)


def finish_report(run_dir: Path, report_to: list[str]) -> Path:
    """The end of a run: report.html, and the final predictions to TensorBoard / W&B."""
    log_final_predictions(run_dir, report_to)
    return write_report(run_dir)
