"""Gradient caching (GradCache, Gao et al. 2021): a contrastive batch larger than memory allows.

The loss couples every query with every target, so the batch cannot simply be split. Instead:
  1. embed every chunk WITHOUT a graph, remembering the RNG state before each chunk;
  2. compute the loss on the detached embeddings (leaves) and backpropagate to them: the
     gradient of the loss with respect to each embedding;
  3. re-embed each chunk WITH a graph under the remembered RNG state (same dropout masks, so the
     same embeddings) and backpropagate `sum(embedding * cached_gradient)`.
Parameter gradients equal those of the un-chunked batch; peak memory is one chunk's activations.
Works on one device; under DDP all but the last replay run without gradient synchronisation.

A Qwen-VL batch is chunked by rows; its images and videos are flat: `pixel_values` holds every
image's patches back to back, so a chunk takes the patches of its rows' images (counted from
`image_grid_thw`, t*h*w patches per image); `pixel_values_videos` likewise by `video_grid_thw`
(and Qwen2.5-VL's `second_per_grid_ts`, one value per video).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

MEDIA = {  # kind -> (flat patches, one (t, h, w) row per item, other per-item values)
    "image": ("pixel_values", "image_grid_thw", ()),
    "video": ("pixel_values_videos", "video_grid_thw", ("second_per_grid_ts",)),
}
MEDIA_KEYS = {key for patches, grid, other in MEDIA.values() for key in (patches, grid, *other)}


class RngState:
    """The CPU and CUDA generator states at one moment, to replay a forward pass exactly."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from this state; afterwards the generators are back where they were."""
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def split_rows(batch: dict[str, torch.Tensor], per_row: torch.Tensor | dict[str, torch.Tensor], chunk_size: int
               ) -> list[dict[str, torch.Tensor]]:
    """Chunks of at most `chunk_size` rows; each keeps its own images' and videos' patches.

    batch: a processor batch (input_ids (rows, seq), attention_mask, ..., pixel_values
    (patches, dim), image_grid_thw (images, 3), pixel_values_videos, video_grid_thw (videos, 3));
    per_row: {"image": (rows,), "video": (rows,)} items per row (a tensor alone: images per row).
    Columns that are padding in every row of a chunk are dropped (either padding side).
    """
    counts = per_row if isinstance(per_row, dict) else {"image": per_row}
    rows = batch["input_ids"].shape[0]
    chunks = []
    for start in range(0, rows, chunk_size):
        stop = min(start + chunk_size, rows)
        keep = batch["attention_mask"][start:stop].bool().any(0)  # (seq,)
        chunk = {k: v[start:stop][:, keep] for k, v in batch.items() if k not in MEDIA_KEYS}
        for kind, items in counts.items():
            chunk.update(_media_of_rows(batch, kind, items, start, stop))
        chunks.append(chunk)
    return chunks


def _media_of_rows(batch: dict[str, torch.Tensor], kind: str, per_row: torch.Tensor, start: int, stop: int
                   ) -> dict[str, torch.Tensor]:
    """The `kind` inputs (patches, grids, per-item values) of rows [start, stop); {} when they have none."""
    patches_key, grid_key, other = MEDIA[kind]
    item_end = [0] + torch.cumsum(per_row, 0).tolist()  # items in rows [0, r)
    first, last = item_end[start], item_end[stop]
    if last == first:
        return {}
    patch_end = [0] + torch.cumsum(batch[grid_key].prod(-1), 0).tolist()
    part = {grid_key: batch[grid_key][first:last], patches_key: batch[patches_key][patch_end[first]:patch_end[last]]}
    part.update({key: batch[key][first:last] for key in other if key in batch})
    return part


def cached_step(encode: Callable[[dict], torch.Tensor], parts: list[list[dict]],
                loss_fn: Callable[..., torch.Tensor], backward: Callable[[torch.Tensor], None],
                no_sync: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """One GradCache step; returns the (detached) loss.

    encode: chunk -> (chunk_rows, hidden) embeddings; parts: the chunks of each input group
    (e.g. [query chunks, target chunks]); loss_fn(*group_embeddings) -> scalar loss, already
    scaled as the caller wants gradients; backward(loss): the trainer's backward (mixed-precision
    scaling); no_sync(): a context without DDP gradient synchronisation.
    """
    states: list[list[RngState]] = [[] for _ in parts]
    cached = []
    with torch.no_grad():
        for group, group_states in zip(parts, states):
            reps = []
            for chunk in group:
                group_states.append(RngState())
                reps.append(encode(chunk))
            cached.append(torch.cat(reps).detach().requires_grad_())
    loss = loss_fn(*cached)
    backward(loss)  # gradients reach the cached embeddings (and any loss parameter, e.g. temperature)
    grads = [reps.grad for reps in cached]
    jobs = [(chunk, state, grad) for group, group_states, grad in zip(parts, states, grads)
            for chunk, state, grad in zip(group, group_states, _split_like(grad, group))]
    for index, (chunk, state, grad) in enumerate(jobs):
        sync = index == len(jobs) - 1  # DDP reduces gradients once, after the last replay
        with (contextlib.nullcontext() if sync else no_sync()), state.replay():
            reps = encode(chunk)
            # grad already carries any loss scaling, so plain autograd here, not the scaler again
            torch.autograd.backward(reps, grad_tensors=grad.to(reps.dtype))
    return loss.detach()


def _split_like(grad: torch.Tensor, chunks: list[dict]) -> list[torch.Tensor]:
    sizes = [chunk["input_ids"].shape[0] for chunk in chunks]
    return list(torch.split(grad, sizes))
