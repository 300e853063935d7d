"""Batched greedy generation of grounding answers, parsed into boxes."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..boxes import parse_answer
from ..data.chat import encode_for_generation, resized_image_size


@torch.no_grad()
def generate_texts(model, processor, images, prompts, max_new_tokens: int) -> list[str]:
    """Answer text per image: special tokens kept (Qwen2-VL boxes are written with them),
    cut at the first <|im_end|>."""
    batch = encode_for_generation(processor, images, prompts).to(model.device)
    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model.train(was_training)
    new_tokens = out[:, batch["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=False)
    return [t.split(tokenizer.eos_token)[0].replace(tokenizer.pad_token, "") for t in texts]


def predict_boxes(model, processor, family, samples, prompt: str, batch_size: int, max_new_tokens: int,
                  desc: str = "evaluating") -> tuple[list, list[str]]:
    """(first parsed box or None, raw answer) per sample."""
    boxes, texts = [], []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch"):
        chunk = samples[start:start + batch_size]
        answers = generate_texts(model, processor, [s.image for s in chunk], [prompt] * len(chunk), max_new_tokens)
        for sample, text in zip(chunk, answers):
            resized = resized_image_size(processor, family, sample.width, sample.height)
            found = parse_answer(text, sample.width, sample.height, family, resized)
            boxes.append(found[0][1] if found else None)
            texts.append(text)
    return boxes, texts
