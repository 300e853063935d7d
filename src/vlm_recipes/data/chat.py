"""From (image, prompt, answer) to model inputs: chat template, image tokens, loss labels.

Only the assistant's answer (and the `<|im_end|>` that closes it) carries loss by default;
system, user and image tokens are set to -100. Sequences are never truncated: cutting inside
an image span breaks the model's image-token count, so an over-long sample is an error.
"""

from __future__ import annotations

from typing import Literal

import torch
from PIL import Image

from ..boxes import resized_size
from ..errors import InputError

IGNORE_INDEX = -100


def user_messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


def prompt_text(processor, prompt: str) -> str:
    """The chat-formatted prompt, ending where the assistant's answer starts."""
    return processor.apply_chat_template(user_messages(prompt), tokenize=False, add_generation_prompt=True)


def encode_for_training(processor, images: list[Image.Image], prompts: list[str], answers: list[str],
                        loss_on: Literal["answer", "all"] = "answer", max_length: int = 2048
                        ) -> dict[str, torch.Tensor]:
    """Right-padded batch with `labels`. Each answer is followed by `<|im_end|>`."""
    tokenizer = processor.tokenizer
    prompts_fmt = [prompt_text(processor, p) for p in prompts]
    texts = [p + a + tokenizer.eos_token for p, a in zip(prompts_fmt, answers)]
    tokenizer.padding_side = "right"
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    too_long = batch["attention_mask"].sum(1).max().item()
    if too_long > max_length:
        raise InputError(f"a training sequence has {too_long} tokens > max_length={max_length}: raise "
                         "objective.options.max_length or lower model.max_pixels (never truncated)")
    batch["labels"] = _labels(batch, prompts_fmt, processor, loss_on)
    return batch


def _labels(batch, prompts_fmt, processor, loss_on) -> torch.Tensor:
    input_ids, attention = batch["input_ids"], batch["attention_mask"]
    labels = input_ids.clone()
    labels[attention == 0] = IGNORE_INDEX
    if loss_on == "all":
        # image placeholders are inputs, not predictions
        image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        labels[input_ids == image_token_id] = IGNORE_INDEX
        return labels
    # The answer starts right after the prompt. Its length in tokens is the text's length with
    # the one <|image_pad|> expanded to the image's token count (grid cells / merge**2).
    merge = processor.image_processor.merge_size
    image_tokens = (batch["image_grid_thw"].prod(-1) // merge**2).tolist()
    for row, prompt in enumerate(prompts_fmt):
        prompt_len = len(processor.tokenizer(prompt)["input_ids"]) - 1 + image_tokens[row]
        labels[row, :prompt_len] = IGNORE_INDEX
    return labels


def resized_image_size(processor, family, width: int, height: int) -> tuple[int, int]:
    """(w, h) of the image as this processor feeds it to the model (its pixel budget)."""
    size = processor.image_processor.size
    return resized_size(width, height, family, size["shortest_edge"], size["longest_edge"])


def encode_for_generation(processor, images: list[Image.Image], prompts: list[str]) -> dict[str, torch.Tensor]:
    """Left-padded prompts, so every row's generation starts at the same position."""
    processor.tokenizer.padding_side = "left"
    texts = [prompt_text(processor, p) for p in prompts]
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt")
    processor.tokenizer.padding_side = "right"
    return batch
