"""Padding-free and packed rows from a right-padded Qwen-VL training batch (D31).

Every sample keeps exactly what it had alone in the padded batch:
  - its 3-D mRoPE positions, computed per sample by the model's own rope index (`rope_index`:
    the model's `get_rope_index`, which restarts at 0 for every padded row) and concatenated;
  - attention that never crosses a sample boundary: a fourth, text-only position row that
    restarts at 0 for every sample goes first in `position_ids` (shape (4, rows, tokens)) and
    `attention_mask` is left out. transformers' Qwen-VL text models then build the causal mask per
    sample from it (block-diagonal for SDPA/eager, `masking_utils.find_packed_sequence_indices`)
    or, under FlashAttention-2 with one row, its varlen kernel (`cu_seqlens` from the positions);
    a packing stage trains SDPA models with `models.varlen_attention` instead, which cuts the rows
    at the same restarts and runs causal SDPA per sample (no dense mask);
  - its label mask.
`use_cache=False` goes with the batch: with a KV cache the mask ignores the packing. A sample's first label becomes -100: with several samples in a row, the
    previous sample's last token would otherwise be trained to predict it. In the padded batch
    that label was at a row's position 0, which is never predicted and which Trainer leaves out of
    its token count too, so the loss and its denominator stay the padded batch's.
Samples are never split (nor the image or video tokens inside them). Rows of a packed batch are
right-padded to the longest; the pads form a segment of their own, with no loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import InputError

IGNORE_INDEX = -100
VISION_KEYS = {1: ("pixel_values", "image_grid_thw", None),  # mm_token_type_ids: 1 image, 2 video
               2: ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
ROPE_INPUTS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
KNOWN_KEYS = {"input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values", "pixel_values_videos",
              *ROPE_INPUTS}


def plan_rows(lengths: Sequence[int], max_tokens: int | None, names: Sequence[str] | None = None) -> list[list[int]]:
    """Sample indices per row. `max_tokens` None: one row, in order (padding-free). Otherwise
    first-fit decreasing into rows of at most `max_tokens` tokens, each row in sample order."""
    if max_tokens is None:
        return [list(range(len(lengths)))]
    rows, room = [], []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[index] > max_tokens:
            name = names[index] if names else f"#{index}"
            raise InputError(f"training sample {name} has {lengths[index]} tokens > train.max_tokens_per_row="
                             f"{max_tokens}: raise train.max_tokens_per_row or lower model.max_pixels "
                             "(a sample is never split)")
        row = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if row is None:
            rows.append([]), room.append(max_tokens)
            row = len(rows) - 1
        rows[row].append(index)
        room[row] -= lengths[index]
    return [sorted(row) for row in rows]


def fed_tokens(lengths: Sequence[int], max_tokens: int | None) -> int:
    """Tokens the model computes for a batch of these sample lengths (pads included), packed as
    `plan_rows` packs them."""
    rows = plan_rows(lengths, max_tokens)
    return len(rows) * max(sum(lengths[i] for i in row) for row in rows)


def pack_batch(batch: dict, rope_index: Callable, max_tokens: int | None = None,
               names: Sequence[str] | None = None, pad_token_id: int = 0) -> dict:
    """The right-padded `batch` (the processor's keys + `labels`) as packed rows: see the module
    docstring. `max_tokens` None: padding-free (one row)."""
    unknown = set(batch) - KNOWN_KEYS
    if unknown:  # a per-token key packing does not know would be dropped silently
        raise ValueError(f"pack_batch: unknown batch keys {sorted(unknown)}")
    real = batch["attention_mask"].bool()  # (samples, padded length)
    rope_kwargs = {key: batch[key] for key in ROPE_INPUTS if batch.get(key) is not None}
    positions, _ = rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                              attention_mask=batch["attention_mask"], **rope_kwargs)  # (3, samples, length)
    per_sample = [_sample_tokens(batch, positions, real, i) for i in range(real.shape[0])]
    rows = plan_rows([len(s["input_ids"]) for s in per_sample], max_tokens, names)
    width = max(sum(len(per_sample[i]["input_ids"]) for i in row) for row in rows)
    built = [_row([per_sample[i] for i in row], width, pad_token_id) for row in rows]
    packed = {key: torch.stack([row[key] for row in built]) for key in built[0] if key != "position_ids"}
    packed["position_ids"] = torch.stack([row["position_ids"] for row in built], dim=1)  # (4, rows, width)
    order = [i for row in rows for i in row]
    packed.update(_vision_in_order(batch, real, order))
    # with a KV cache transformers builds a plain causal mask and never looks for packed samples
    packed["use_cache"] = False
    return packed


def _sample_tokens(batch: dict, positions: torch.Tensor, real: torch.Tensor, i: int) -> dict:
    keep = real[i]
    labels = batch["labels"][i][keep].clone()
    labels[0] = IGNORE_INDEX  # see the module docstring: never a target in the padded batch either
    count = int(keep.sum())
    text = torch.arange(count, dtype=positions.dtype)
    return {"input_ids": batch["input_ids"][i][keep], "labels": labels,
            "mm_token_type_ids": batch["mm_token_type_ids"][i][keep],
            "position_ids": torch.cat([text[None], positions[:, i][:, keep]])}  # (4, tokens)


def _row(samples: list[dict], width: int, pad_token_id: int) -> dict:
    """One row: the samples back to back, then pads (their own segment: positions from 0)."""
    pad = width - sum(len(s["input_ids"]) for s in samples)
    filler = {"input_ids": torch.full((pad,), pad_token_id), "labels": torch.full((pad,), IGNORE_INDEX),
              "mm_token_type_ids": torch.zeros(pad, dtype=samples[0]["mm_token_type_ids"].dtype),
              "position_ids": torch.arange(pad).expand(4, -1)}
    parts = samples + [filler] * (pad > 0)
    return {key: torch.cat([p[key].to(samples[0][key].dtype) for p in parts], dim=-1) for key in filler}


def _vision_in_order(batch: dict, real: torch.Tensor, order: list[int]) -> dict:
    """Pixel patches, grids (and video timings) reordered to follow the samples' new order: the
    model fills image tokens from `pixel_values` in the order the tokens appear."""
    out = {}
    types = batch["mm_token_type_ids"].masked_fill(~real, 0)
    for modality, (pixels_key, grid_key, time_key) in VISION_KEYS.items():
        if batch.get(grid_key) is None:
            continue
        grid = batch[grid_key]
        items = _items_per_sample((types == modality).sum(1).tolist(), grid, batch[pixels_key].shape[0])
        patches = [int(g.prod()) for g in grid]
        item_chunks = _split(list(range(len(grid))), items)
        pixel_chunks = torch.split(batch[pixels_key], [sum(patches[j] for j in c) for c in item_chunks])
        out[pixels_key] = torch.cat([pixel_chunks[i] for i in order])
        out[grid_key] = grid[[j for i in order for j in item_chunks[i]]]
        if time_key and batch.get(time_key) is not None:
            out[time_key] = batch[time_key][[j for i in order for j in item_chunks[i]]]
    return out


def _items_per_sample(tokens_per_sample: list[int], grid: torch.Tensor, total_patches: int) -> list[int]:
    """How many images (or videos) each sample holds, from its token count: an item of grid
    (t, h, w) has t*h*w patches and t*h*w / merge**2 tokens, merge**2 = patches / tokens overall."""
    merge2 = total_patches // max(1, sum(tokens_per_sample))
    sizes, counts, start = [int(g.prod()) // merge2 for g in grid], [], 0
    for tokens in tokens_per_sample:
        end, covered = start, 0
        while covered < tokens:
            covered, end = covered + sizes[end], end + 1
        if covered != tokens:
            raise ValueError(f"vision tokens of a sample ({tokens}) do not match its grids")
        counts.append(end - start)
        start = end
    return counts


def _split(values: list, counts: list[int]) -> list[list]:
    out, start = [], 0
    for count in counts:
        out.append(values[start:start + count])
        start += count
    return out
