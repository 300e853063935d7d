"""The grounding task's text: the answer a grounding sample is trained to give (sft, mdlm, grpo's reference)."""

from __future__ import annotations

from ..boxes import format_answer, reading_order
from ..data.chat import resized_image_size


def answer_for(sample, family, label: str | None, processor) -> str:
    """The family's answer for `sample`: every object, in the stated order, labelled `label` (None:
    each object's own label), in the coordinates the processor's resize implies (Qwen2.5-VL writes
    pixels of the resized image); no object is the family's empty answer (boxes.format_answer)."""
    resized = resized_image_size(processor, family, sample.width, sample.height)
    objects = [(label if label is not None else own, box) for own, box in reading_order(sample.objects)]
    return format_answer(objects, sample.width, sample.height, family, resized)
