"""Supervised fine-tuning on grounding answers: next-token loss on the assistant's box."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..boxes import format_answer
from ..config import RecipeConfig
from ..data.chat import encode_for_training, resized_image_size
from ..data.detection import load_detection_splits
from ..evaluation.detection import detection_metrics
from ..evaluation.generation import predict_boxes
from ..evaluation.report import write_detection_report
from .base import Objective


@dataclass(frozen=True)
class SFTOptions:
    loss_on: Literal["answer", "all"] = "answer"
    """"answer": only the assistant's answer carries loss; "all": every non-image token does."""
    max_length: int = 2048
    """Longest allowed training sequence; longer samples are an error, never truncated."""


def answer_for(sample, family, recipe: RecipeConfig, processor) -> str:
    resized = resized_image_size(processor, family, sample.width, sample.height)
    return format_answer([(recipe.data.label, sample.box)], sample.width, sample.height, family, resized)


class SFT(Objective):
    name = "sft"
    Options = SFTOptions

    def load_data(self, recipe):
        return load_detection_data(recipe)

    def make_collator(self, processor, family, recipe):
        options = self.options(recipe)

        def collate(samples):
            answers = [answer_for(s, family, recipe, processor) for s in samples]
            return encode_for_training(processor, [s.image for s in samples], [recipe.data.prompt] * len(samples),
                                       answers, loss_on=options.loss_on, max_length=options.max_length)
        return collate

    def evaluate(self, model, processor, family, recipe, samples, desc):
        boxes, texts, scores = predict_boxes(model, processor, family, samples, recipe.data.prompt,
                                             recipe.eval.batch_size, recipe.eval.max_new_tokens, desc=desc)
        return evaluation_result(samples, boxes, texts, scores)

    def report(self, run_dir, metrics, base_eval, finetuned_eval, samples):
        write_detection_report(run_dir, metrics, base_eval, finetuned_eval, samples)


def load_detection_data(recipe: RecipeConfig) -> dict[str, list]:
    data = recipe.data
    return load_detection_splits(data.dataset, num_train=data.num_train, num_test=data.num_test,
                                 max_train=data.max_train, max_test=data.max_test, seed=recipe.seed)


def evaluation_result(samples, boxes, texts, scores=None) -> dict:
    """Detection metrics and per-image predictions; `scores` rank detections for AP (default 1)."""
    metrics = detection_metrics(boxes, [s.box for s in samples], scores)
    scores = scores or [1.0] * len(samples)
    predictions = [{"image_id": s.image_id, "target": list(s.box), "predicted": list(b) if b else None,
                    "text": t, "score": round(c, 4)} for s, b, t, c in zip(samples, boxes, texts, scores)]
    return {"metrics": metrics, "predictions": predictions}


OBJECTIVE = SFT()
