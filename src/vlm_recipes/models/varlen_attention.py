"""Varlen SDPA for packed rows on CPU (and any device without FlashAttention-2): each sample
attends causally to itself alone, at the cost of sum(L_i^2) over real tokens (D31).

transformers' own SDPA path keeps packed samples apart with a dense block-diagonal 4-D mask
(`masking_utils.find_packed_sequence_indices`): it costs (sum of L_i)^2 per row and forces SDPA's
masked kernel. FlashAttention-2's varlen kernel instead cuts the row where the text position
restarts. `packed_sdpa` does that with SDPA: it is registered with transformers'
`AttentionInterface` (the attention) and `AttentionMaskInterface` (the mask: none where the
attention can read the samples from the positions), and splits each row into the samples found
from the text position row (`find_packed_sequence_indices`, the rule transformers' mask uses),
running `scaled_dot_product_attention(is_causal=True)` per sample, GQA as the sdpa integration
does it (it runs each piece).

Anything that is not a packed, causal, cache-free forward (a padding mask, a KV cache, a
bidirectional or mask-overlay call, monotonic positions) goes to transformers' SDPA unchanged, and
`packed_sdpa_attention(model)` switches the text model to it only for a block (the training loop),
so the model evaluates and generates as before.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, find_packed_sequence_indices, sdpa_mask

from .attention import language_model

NAME = "packed_sdpa"


def packed_sdpa_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature (`position_ids`, `is_causal` come in `kwargs`);
    query (rows, heads, tokens, dim) -> (rows, tokens, heads, dim)."""
    segments = _sample_lengths(query, key, attention_mask, kwargs.get("position_ids"), kwargs.get("is_causal"), module)
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    per_sample = {**kwargs, "is_causal": True}
    rows = []
    for row, lengths in enumerate(segments):
        pieces = zip(*(t[row:row + 1].split(lengths, dim=2) for t in (query, key, value)))
        rows.append(torch.cat([sdpa_attention_forward(module, q, k, v, None, **per_sample)[0] for q, k, v in pieces],
                              dim=1))
    return torch.cat(rows), None


def _sample_lengths(query, key, attention_mask, position_ids, is_causal, module) -> list[list[int]] | None:
    """Per row, the lengths of the samples packed in it; None where this is not a packed causal
    self-attention without a mask (then plain SDPA is exact)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if not causal or attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return None
    samples = find_packed_sequence_indices(position_ids.expand(query.shape[0], -1))
    if samples is None:
        return None
    return [torch.unique_consecutive(row, return_counts=True)[1].tolist() for row in samples]


def packed_sdpa_mask(*, attention_mask: torch.Tensor | None = None, q_length: int, kv_length: int,
                     q_offset=0, kv_offset=0, use_vmap: bool = False, **kwargs):
    """No mask for a causal cache-free forward without padding (packed or not): `packed_sdpa_forward`
    reads the samples from the positions. Anything else: transformers' sdpa mask."""
    if attention_mask is None and not use_vmap and q_length == kv_length and not q_offset and not kv_offset:
        return None
    return sdpa_mask(attention_mask=attention_mask, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, use_vmap=use_vmap, **kwargs)


AttentionInterface.register(NAME, packed_sdpa_forward)
AttentionMaskInterface.register(NAME, packed_sdpa_mask)


@contextmanager
def packed_sdpa_attention(model: nn.Module) -> Iterator[bool]:
    """Inside the block a text model that runs SDPA runs `packed_sdpa` (yields whether it does);
    FlashAttention-2 (its own varlen path) and eager are left as they are. Restored on exit."""
    config = language_model(model).config
    saved = config._attn_implementation
    switched = saved == "sdpa"
    if switched:
        config._attn_implementation = NAME
    try:
        yield switched
    finally:
        config._attn_implementation = saved
