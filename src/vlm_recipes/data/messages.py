"""Conversation data: rows with a `messages` column and `image`/`images` columns.

A row is an OpenAI-style conversation whose LAST turn is the assistant's answer, plus its
images: `images` (a list) or `image` (one). Image parts in the user turns are
`{"type": "image"}`; a conversation with images but no image part gets them at the start of
its first user turn. `source[train:N,test:M]` (`sources.parse_split_spec`) keeps the first N
train and first M test rows. On detection data the same spec sets `data.max_train` /
`data.max_test` (a seeded random subset, as for the other recipes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import InputError
from .sources import Rows, decode_image, open_source, parse_split_spec, resolve_split

__all__ = ["ChatSample", "chat_sample", "encode_prompts", "messages_splits", "open_messages_source",
           "parse_split_spec", "prompt_texts"]  # parse_split_spec: kept importable from here


@dataclass
class ChatSample:
    images: list[Image.Image]  # RGB, in the order of the image parts
    messages: list[dict]  # the conversation up to the answer; content is a list of parts
    answer: str  # the last (assistant) turn
    image_id: str


def open_messages_source(source: str) -> dict[str, Rows] | None:
    """The splits of `source` if every one has a `messages` column, else None (left to the detection
    loader, which also reports sources that cannot be read). Parquet is judged by its schema,
    without reading the (maybe large) data."""
    if source == "synthetic":
        return None
    try:
        splits = open_source(source).splits
        is_messages = all("messages" in rows.column_names for rows in splits.values())
    except InputError:  # not a source we can read: the detection loader explains why
        return None
    return splits if is_messages else None


def messages_splits(dd, source: str, limits: dict[str, int]) -> dict[str, list[ChatSample]]:
    """The first `limits[split]` rows (all without a limit) of train and test, as ChatSamples."""
    splits = {}
    for split in ("train", "test"):
        name = resolve_split(dd, split)
        if name is None:
            raise InputError(f"dataset {source} has no split {split!r} (it has: {', '.join(dd)}): add it or "
                             "export one")
        rows = dd[name]
        count = min(len(rows), limits.get(split, len(rows)))
        splits[split] = [chat_sample(rows[i], f"row {i} of split {name!r} of {source}", f"{name}-{i}")
                         for i in range(count)]
    return splits


def chat_sample(row: dict[str, Any], where: str, default_id: str) -> ChatSample:
    messages = [dict(m) for m in row["messages"] or []]
    if not messages or messages[-1].get("role") != "assistant":
        raise InputError(f"{where}: the last message must be the assistant's answer")
    raw = row.get("images", row.get("image"))
    images = [decode_image(img, where) for img in (raw if isinstance(raw, list) else [raw] if raw is not None else [])]
    answer = _text(messages[-1]["content"])
    prompt = [{"role": m["role"], "content": _parts(m["content"])} for m in messages[:-1]]
    placeholders = sum(p["type"] == "image" for m in prompt for p in m["content"])
    if placeholders == 0 and images:
        first_user = next(m for m in prompt if m["role"] == "user")
        first_user["content"] = [{"type": "image"} for _ in images] + first_user["content"]
    elif placeholders != len(images):
        raise InputError(f"{where}: {placeholders} image part(s) in the messages but {len(images)} image(s)")
    return ChatSample(images, prompt, answer, str(row.get("image_id") or row.get("id") or default_id))


def _parts(content: Any) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    # image parts may carry the image itself ({"type": "image", "image": ...}): the images column holds it
    return [{"type": "image"} if part.get("type") == "image" else {"type": "text", "text": part.get("text", "")}
            for part in content]


def _text(content: Any) -> str:
    return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content)


def prompt_texts(processor, samples: list[ChatSample]) -> list[str]:
    """Each conversation chat-formatted, ending where the assistant's answer starts."""
    return [processor.apply_chat_template(s.messages, tokenize=False, add_generation_prompt=True) for s in samples]


def encode_prompts(processor, samples: list[ChatSample]):
    """Left-padded prompts with their images (expanded to image tokens): a BatchFeature of (batch, P).

    Left padding puts every answer at the same columns, right after its prompt.
    """
    images = [image for s in samples for image in s.images] or None
    return processor(text=prompt_texts(processor, samples), images=images, padding=True, padding_side="left",
                     return_tensors="pt")
