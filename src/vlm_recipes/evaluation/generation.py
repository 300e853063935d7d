"""Batched greedy generation of grounding answers, parsed into boxes."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..boxes import parse_answer
from ..data.chat import encode_for_generation, resized_image_size


def generate_texts(model, processor, images, prompts, max_new_tokens: int) -> list[str]:
    """Answer text per image: special tokens kept (Qwen2-VL boxes are written with them),
    cut at the first <|im_end|>."""
    return generate_texts_with_confidence(model, processor, images, prompts, max_new_tokens)[0]


@torch.no_grad()
def generate_texts_with_confidence(model, processor, images, prompts,
                                   max_new_tokens: int) -> tuple[list[str], list[float]]:
    """As `generate_texts`, plus each answer's confidence: the mean probability of its generated
    tokens (used to rank detections for AP)."""
    batch = encode_for_generation(processor, images, prompts).to(model.device)
    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         output_scores=True, return_dict_in_generate=True)
    model.train(was_training)
    new_tokens = out.sequences[:, batch["input_ids"].shape[1]:]  # (batch, new)
    texts = [t.split(tokenizer.eos_token)[0].replace(tokenizer.pad_token, "")
             for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=False)]
    log_probs = torch.stack([s.float().log_softmax(-1) for s in out.scores], dim=1)  # (batch, new, vocab)
    token_log_probs = log_probs.gather(-1, new_tokens[..., None]).squeeze(-1)  # (batch, new)
    keep = new_tokens != tokenizer.pad_token_id  # rows that stopped early are padded
    confidences = ((token_log_probs * keep).sum(1) / keep.sum(1).clamp(min=1)).exp().tolist()
    return texts, confidences


def predict_boxes(model, processor, family, samples, prompt: str, batch_size: int, max_new_tokens: int,
                  desc: str = "evaluating") -> tuple[list, list[str], list[float]]:
    """(first parsed box or None, raw answer, confidence) per sample."""
    boxes, texts, scores = [], [], []
    for start in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch"):
        chunk = samples[start:start + batch_size]
        answers, confidences = generate_texts_with_confidence(
            model, processor, [s.image for s in chunk], [prompt] * len(chunk), max_new_tokens)
        scores += confidences
        for sample, text in zip(chunk, answers):
            resized = resized_image_size(processor, family, sample.width, sample.height)
            found = parse_answer(text, sample.width, sample.height, family, resized)
            boxes.append(found[0][1] if found else None)
            texts.append(text)
    return boxes, texts, scores
