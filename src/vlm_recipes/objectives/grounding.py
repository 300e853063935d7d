"""The grounding task's text: the answer a detection sample is trained to give (sft and mdlm)."""

from __future__ import annotations

from ..boxes import format_answer
from ..data.chat import resized_image_size


def answer_for(sample, family, label: str, processor) -> str:
    """The family's box answer for `sample` (one box, labelled `label`), in the coordinates the
    processor's resize implies (Qwen2.5-VL writes pixels of the resized image)."""
    resized = resized_image_size(processor, family, sample.width, sample.height)
    return format_answer([(label, sample.box)], sample.width, sample.height, family, resized)
