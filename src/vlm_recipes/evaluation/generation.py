"""Batched greedy generation of grounding answers, parsed into boxes."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..boxes import parse_answer
from ..data.chat import encode_for_generation, resized_image_size


def generate_texts(model, processor, images, prompts, max_new_tokens: int) -> list[str]:
    """Answer text per image: special tokens kept (Qwen2-VL boxes are written with them),
    cut at the first <|im_end|>."""
    return _generate(model, processor, images, prompts, max_new_tokens, output_scores=False)[0]


def generate_texts_with_confidence(model, processor, images, prompts,
                                   max_new_tokens: int) -> tuple[list[str], list[float]]:
    """As `generate_texts`, plus each answer's confidence: the mean probability of its generated
    tokens (used to rank detections for AP)."""
    texts, new_tokens, scores = _generate(model, processor, images, prompts, max_new_tokens, output_scores=True)
    # one step at a time: a (batch, new, vocab) stack is hundreds of MB for a 150k vocabulary
    token_log_probs = torch.stack([step.float().log_softmax(-1).gather(-1, new_tokens[:, i, None]).squeeze(-1)
                                   for i, step in enumerate(scores)], dim=1)  # (batch, new)
    keep = new_tokens != processor.tokenizer.pad_token_id  # rows that stopped early are padded
    confidences = ((token_log_probs * keep).sum(1) / keep.sum(1).clamp(min=1)).exp().tolist()
    return texts, confidences


@torch.no_grad()
def _generate(model, processor, images, prompts, max_new_tokens: int, output_scores: bool):
    """Greedy answers: (texts, new token ids (batch, new), per-step logits or None). Scores are
    only kept when asked for: they cost a vocabulary-sized tensor per generated token."""
    batch = encode_for_generation(processor, images, prompts).to(model.device)
    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    # synced_gpus=False: every process holds the whole model (gathered under FSDP) and generates its own
    # share, so none waits for the others each token (transformers' default under FSDP is to wait)
    stop = stop_token_ids(model.generation_config, tokenizer)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True, synced_gpus=False,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=stop,
                         output_scores=output_scores, return_dict_in_generate=True)
    model.train(was_training)
    new_tokens = out.sequences[:, batch["input_ids"].shape[1]:]  # (batch, new)
    return answer_texts(tokenizer, new_tokens, stop), new_tokens, out.scores


def stop_token_ids(generation_config, tokenizer) -> list[int]:
    """The tokens an answer ends at: the tokenizer's end token and every end token of the model's
    generation config (real Qwen checkpoints list <|endoftext|> there too). TRL's GRPOTrainer stops
    its sampling at exactly these (the same rule, the same order), so evaluation and GRPO's rewards
    read the same answer from the same model (issue 31)."""
    ids = getattr(generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return list(dict.fromkeys([tokenizer.eos_token_id, *ids]))


def answer_texts(tokenizer, token_ids, stop_ids: list[int] | None = None) -> list[str]:
    """Generated token ids (rows of a tensor, or lists) -> answer texts, special tokens kept (Qwen2-VL
    writes boxes with them), each cut at its first stop token (`stop_token_ids`; default: the
    tokenizer's end token) and without padding. Evaluation and GRPO's rewards read answers through
    this one function, so a reward scores exactly what evaluation would."""
    stop = set(stop_ids or [tokenizer.eos_token_id])
    rows = token_ids.tolist() if hasattr(token_ids, "tolist") else [list(row) for row in token_ids]
    cut = [row[:next((i for i, t in enumerate(row) if t in stop), len(row))] for row in rows]
    return [text.replace(tokenizer.pad_token, "")
            for text in tokenizer.batch_decode(cut, skip_special_tokens=False)]


def generate_answers(model, processor, images: list, prompts: str | list[str], batch_size: int, max_new_tokens: int,
                     desc: str = "evaluating") -> tuple[list[str], list[float]]:
    """(raw answer, confidence) per image, `batch_size` images per generate call; `prompts`: one
    question for every image, or one per image."""
    prompts = [prompts] * len(images) if isinstance(prompts, str) else prompts
    texts, scores = [], []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch"):
        chunk = images[start:start + batch_size]
        answers, confidences = generate_texts_with_confidence(model, processor, chunk,
                                                              prompts[start:start + batch_size], max_new_tokens)
        texts += answers
        scores += confidences
    return texts, scores


def answer_boxes(text: str, width: int, height: int, family, processor) -> list:
    """(label, canonical box) for every box an answer holds, in pixels of a width x height image,
    read in the family's convention at the processor's resize. Evaluation (`first_box`) and GRPO's
    rewards both read answers through it."""
    resized = resized_image_size(processor, family, width, height)
    return parse_answer(text, width, height, family, resized)


def first_box(text: str, width: int, height: int, family, processor):
    """The first box an answer holds, in pixels of a width x height image, or None."""
    found = answer_boxes(text, width, height, family, processor)
    return found[0][1] if found else None


def predict_boxes(model, processor, family, samples, prompt: str | list[str], batch_size: int, max_new_tokens: int,
                  desc: str = "evaluating") -> tuple[list, list[str], list[float]]:
    """(first parsed box or None, raw answer, confidence) per sample (anything with .image)."""
    texts, scores = generate_answers(model, processor, [s.image for s in samples], prompt, batch_size,
                                     max_new_tokens, desc)
    boxes = [first_box(text, *s.image.size, family, processor) for s, text in zip(samples, texts)]
    return boxes, texts, scores
