"""How an SFT stage's batches are built: padded, padding-free or packed rows, and length grouping
(`train.packing`, `train.max_tokens_per_row`, `train.group_by_length`; D31).

The objective's collator still makes the right-padded batch with its label mask; `PackingCollator`
turns it into rows (`data.packing.pack_batch`) with the model's own rope index. Length grouping is
Trainer's own `LengthGroupedSampler`: Trainer reads the lengths from a `length` column of a
`datasets.Dataset`, so the training samples are handed over as a dataset of (index, length) rows
and the collator looks the samples up.
"""

from __future__ import annotations

from contextlib import nullcontext

from ..config import TrainConfig
from ..data.packing import pack_batch
from ..models.varlen_attention import packed_sdpa_attention


def rope_index_of(model):
    """The model's own `get_rope_index` (the Qwen-VL base model's, under any LoRA/DDP wrapper); it
    reads only the config, so the collator may call it on CPU."""
    found = next((m.get_rope_index for m in model.modules() if hasattr(type(m), "get_rope_index")), None)
    if found is None:
        raise TypeError(f"{type(model).__name__} has no get_rope_index: packing needs a Qwen-VL model")
    return found


class PackingCollator:
    """The objective's padded batch, packed as `train.packing` says."""

    def __init__(self, collate, rope_index, train: TrainConfig, pad_token_id: int = 0):
        self.collate, self.rope_index, self.pad_token_id = collate, rope_index, pad_token_id
        self.max_tokens = train.max_tokens_per_row if train.packing == "packed" else None

    def __call__(self, samples):
        names = [str(getattr(s, "image_id", "") or f"#{i} of the batch") for i, s in enumerate(samples)]
        return pack_batch(self.collate(samples), self.rope_index, self.max_tokens, names, self.pad_token_id)


class IndexedCollator:
    """Collates the samples a (index, length) dataset's rows point at (length grouping)."""

    def __init__(self, collate, samples: list):
        self.collate, self.samples = collate, samples

    def __call__(self, rows):
        return self.collate([self.samples[row["index"]] for row in rows])


def sample_lengths(collate, samples: list) -> list[int]:
    """Tokens of each sample alone, as its collator encodes it."""
    return [int(collate([s])["attention_mask"].sum()) for s in samples]


def batching_inputs(inputs: dict, model, train: TrainConfig) -> dict:
    """The trainer inputs (`Objective.trainer_inputs`) with the stage's batching applied."""
    if train.packing == "none" and not train.group_by_length:
        return inputs  # objectives with their own inputs (GRPO's trainer has no collator) pass as they are
    inputs = dict(inputs)
    collate = inputs["data_collator"]
    if train.group_by_length:
        from datasets import Dataset

        samples = inputs["train_dataset"]
        lengths = sample_lengths(collate, samples)
        inputs["train_dataset"] = Dataset.from_dict({"index": list(range(len(samples))), "length": lengths})
        collate = IndexedCollator(collate, samples)
    if train.packing != "none":
        pad_id = getattr(model.config.get_text_config(), "pad_token_id", None) or 0
        collate = PackingCollator(collate, rope_index_of(model), train, pad_id)
    inputs["data_collator"] = collate
    return inputs


def packing_attention(model, train: TrainConfig):
    """The context a stage trains in: packed rows under SDPA attend per sample (`packed_sdpa`,
    sum(L_i^2) instead of a dense block-diagonal mask); FlashAttention-2 has its own varlen path."""
    return packed_sdpa_attention(model) if train.packing != "none" else nullcontext()


def sampling_arguments(train: TrainConfig) -> dict:
    """TrainingArguments for length grouping (Trainer's own sampler)."""
    return {"train_sampling_strategy": "group_by_length"} if train.group_by_length else {}
