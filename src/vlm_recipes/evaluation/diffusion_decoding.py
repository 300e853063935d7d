"""Answers by iterative unmasking (masked-diffusion decoding, as in LLaDA).

The answer is a canvas of `canvas_length` mask tokens after the prompt. Each step the model
(bidirectional) predicts every canvas position at once; a few masked positions are COMMITTED
(replaced by their prediction, never changed again) and every other masked position is
RE-MASKED (stays a mask for the next step). Which ones are committed:
  low_confidence  the predictions the model is most sure of (probability of the predicted
                  token); the least confident stay masked. LLaDA calls this "low-confidence
                  remasking": it re-masks the LOW-confidence ones, it does not commit them.
  random          uniformly random masked positions.
Block-wise (semi-autoregressive) decoding splits the canvas into blocks of `block_length` and
finishes each block, left to right, before the next: long canvases otherwise tend to commit
confident end-of-answer tokens at the far end first and fill with EOS or repetitions.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

from ..data.messages import ChatSample, encode_prompts
from ..models.attention import bidirectional_attention

Remasking = Literal["low_confidence", "random"]


def commit_schedule(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """How many tokens to commit at each step: (batch,) masked counts -> (batch, steps).

    As even as possible, the remainder going to the first steps (so steps = length commits
    exactly one token per step).
    """
    base = num_masked[:, None] // steps  # (batch, 1)
    extra = (torch.arange(steps, device=num_masked.device)[None, :] < (num_masked % steps)[:, None]).long()
    return base + extra  # (batch, steps)


def propose(logits: torch.Tensor, temperature: float, remasking: Remasking,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per position: the predicted token, its probability, and the confidence that orders commits.

    (batch, length, vocab) -> 3 x (batch, length).
    """
    logits = logits.float()
    if temperature > 0:
        # Gumbel-max: argmax(logits / T + Gumbel noise) is a sample from softmax(logits / T)
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0)
        tokens = (logits / temperature - torch.log(-torch.log(uniform))).argmax(-1)
    else:
        tokens = logits.argmax(-1)
    probability = logits.softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)
    if remasking == "low_confidence":
        confidence = probability
    elif remasking == "random":
        confidence = torch.rand(tokens.shape, generator=generator, device=logits.device)
    else:
        raise ValueError(f"unknown remasking {remasking!r}")
    return tokens, probability, confidence


def unmask(predict: Callable[[torch.Tensor], torch.Tensor], canvas: torch.Tensor, mask_id: int, steps: int,
           block_length: int, remasking: Remasking = "low_confidence", temperature: float = 0.0,
           generator: torch.Generator | None = None,
           on_step: Callable[[torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the masked positions of `canvas` (batch, length) in `steps` model calls.

    `predict(canvas)` returns logits (batch, length, vocab) for the canvas positions.
    `on_step(canvas)` sees the canvas after every step (tests, visualisation).
    Returns the filled canvas and each token's probability when it was committed (1 where the
    canvas was given), both (batch, length).
    """
    batch, length = canvas.shape
    if length % block_length or steps % (length // block_length):
        raise ValueError(f"canvas {length} must be a multiple of block_length {block_length}, and steps {steps} "
                         f"a multiple of the number of blocks {length // block_length}")
    canvas = canvas.clone()
    committed = torch.ones(canvas.shape, device=canvas.device)  # (batch, length)
    steps_per_block = steps // (length // block_length)
    columns = torch.arange(length, device=canvas.device)
    for start in range(0, length, block_length):
        in_block = (columns >= start) & (columns < start + block_length)  # (length,)
        schedule = commit_schedule(((canvas == mask_id) & in_block).sum(1), steps_per_block)
        for step in range(steps_per_block):
            logits = predict(canvas)  # (batch, length, vocab)
            logits[..., mask_id] = float("-inf")  # a mask is never a prediction
            tokens, probability, confidence = propose(logits, temperature, remasking, generator)
            open_ = (canvas == mask_id) & in_block  # (batch, length): may be committed now
            confidence = confidence.masked_fill(~open_, float("-inf"))
            rank = confidence.argsort(1, descending=True).argsort(1)  # 0 = most confident
            commit = open_ & (rank < schedule[:, step:step + 1])
            canvas = torch.where(commit, tokens, canvas)
            committed = torch.where(commit, probability, committed)
            if on_step is not None:
                on_step(canvas)
    return canvas, committed


def with_canvas(prompts, canvas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Left-padded prompts (batch, P) followed by the canvas (batch, L): model inputs of (batch, P + L)."""
    inputs = {"input_ids": torch.cat([prompts["input_ids"], canvas], 1),
              "attention_mask": torch.cat([prompts["attention_mask"], torch.ones_like(canvas)], 1)}
    if "mm_token_type_ids" in prompts:  # mrope needs it; canvas tokens are text (type 0)
        inputs["mm_token_type_ids"] = torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(canvas)], 1)
    for key in ("pixel_values", "image_grid_thw"):
        if key in prompts:
            inputs[key] = prompts[key]
    return inputs


@torch.no_grad()
def diffusion_generate(model, processor, samples: list[ChatSample], canvas_length: int, steps: int,
                       block_length: int, remasking: Remasking = "low_confidence", temperature: float = 0.0,
                       shift_logits: bool = False, mask_token: str = "<|mask|>",
                       generator: torch.Generator | None = None) -> tuple[list[str], list[float]]:
    """Answer text per sample, cut at the first <|im_end|> (as `generation.generate_texts`), and its
    confidence: the geometric mean of its tokens' probabilities when committed, up to and including
    that <|im_end|> (ranks detections for AP, like the autoregressive path's score).

    `shift_logits`: canvas token i is predicted by the logits at the position before it (as trained).
    """
    tokenizer = processor.tokenizer
    mask_id = tokenizer.convert_tokens_to_ids(mask_token)
    prompts = encode_prompts(processor, samples).to(model.device)
    canvas = torch.full((len(samples), canvas_length), mask_id, dtype=torch.long, device=model.device)
    inputs = with_canvas(prompts, canvas)
    was_training = model.training
    model.eval()
    with bidirectional_attention(model):
        # the image does not change between steps: encode it once
        if "pixel_values" in inputs:
            features = model.get_image_features(inputs.pop("pixel_values"), inputs["image_grid_thw"], return_dict=True)
            inputs["mm_encoder_outputs"] = {"image": features}
        prompt_ids = prompts["input_ids"]

        def predict(current: torch.Tensor) -> torch.Tensor:
            inputs["input_ids"] = torch.cat([prompt_ids, current], 1)
            logits = model(**inputs, logits_to_keep=canvas_length + shift_logits, use_cache=False).logits
            return logits[:, :canvas_length]  # (batch, L, vocab), aligned with the canvas

        try:
            canvas, probability = unmask(predict, canvas, mask_id, steps, block_length, remasking, temperature,
                                         generator)
        finally:
            model.train(was_training)
    return answers_and_confidence(tokenizer, canvas, probability)


def answers_and_confidence(tokenizer, canvas: torch.Tensor, probability: torch.Tensor) -> tuple[list[str], list[float]]:
    """The decoded canvas cut at its first <|im_end|>, and the geometric mean of the committed
    probabilities of its tokens up to and including it (the canvas end if there is none)."""
    texts = tokenizer.batch_decode(canvas, skip_special_tokens=False)
    texts = [t.split(tokenizer.eos_token)[0].replace(tokenizer.pad_token, "") for t in texts]
    is_eos = (canvas == tokenizer.eos_token_id).long()
    answer = (is_eos.cumsum(1) - is_eos) == 0  # (batch, L): before or at the first <|im_end|>
    scores = ((probability.clamp_min(1e-12).log() * answer).sum(1) / answer.sum(1)).exp().tolist()
    return texts, scores
