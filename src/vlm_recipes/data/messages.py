"""Conversation data (`messages` + `image`/`images` columns) and the `name[train:N,test:M]` spec.

A row is an OpenAI-style conversation whose LAST turn is the assistant's answer, plus its
images: `images` (a list) or `image` (one). Image parts in the user turns are
`{"type": "image"}`; a conversation with images but no image part gets them at the start of
its first user turn. `source[train:N,test:M]` keeps the first N train and first M test rows (as
in dllm's dataset arguments); either part may be left out. On detection data the same spec sets
`data.max_train` / `data.max_test` (a seeded random subset, as for the other recipes).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import InputError

_SPEC = re.compile(r"^(?P<source>.+?)\[(?P<body>[^\[\]]*)\]$")


@dataclass
class ChatSample:
    images: list[Image.Image]  # RGB, in the order of the image parts
    messages: list[dict]  # the conversation up to the answer; content is a list of parts
    answer: str  # the last (assistant) turn
    image_id: str


def parse_split_spec(dataset: str) -> tuple[str, dict[str, int]]:
    """"name[train:800,test:100]" -> ("name", {"train": 800, "test": 100}); no brackets -> no limits."""
    match = _SPEC.match(dataset.strip())
    if not match:
        return dataset, {}
    limits = {}
    for part in filter(None, (p.strip() for p in match["body"].split(","))):
        split, _, count = part.partition(":")
        if split.strip() not in ("train", "test") or not count.strip().isdigit() or int(count) < 1:
            raise InputError(f"data.dataset={dataset!r}: bad slice {part!r}; write e.g. name[train:800,test:100]")
        limits[split.strip()] = int(count)
    return match["source"], limits


def open_messages_source(source: str):
    """The source as a DatasetDict if it has a `messages` column, else None (left to the detection loader,
    which also reports sources that cannot be read)."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(source).expanduser()
    local = path.exists()
    if source == "synthetic" or (not local and source.startswith(("/", ".", "~"))):
        return None
    try:
        if (path / "dataset_dict.json").is_file():
            dd = load_from_disk(str(path))  # memory-mapped: opening is cheap
        elif local:
            files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
            if files and files[0].suffix == ".parquet" and "messages" not in _parquet_columns(files[0]):
                return None  # decided from the schema, without reading the (maybe large) data
            dd = load_dataset(str(path)) if path.is_dir() else load_dataset(
                "json" if path.suffix in (".json", ".jsonl") else "parquet", data_files={"train": str(path)})
        else:
            dd = load_dataset(source)
    except Exception:  # not a datasets source we can read here: the detection loader explains why
        return None
    if not isinstance(dd, DatasetDict) or not all("messages" in ds.column_names for ds in dd.values()):
        return None
    return dd


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(path).names


def messages_splits(dd, source: str, limits: dict[str, int]) -> dict[str, list[ChatSample]]:
    splits = {}
    for split in ("train", "test"):
        candidates = [split] + (["validation", "val"] if split == "test" else [])
        name = next((s for s in candidates if s in dd), None)
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
    images = [_decode(img, where) for img in (raw if isinstance(raw, list) else [raw] if raw is not None else [])]
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


def _decode(value: Any, where: str) -> Image.Image:
    try:
        if isinstance(value, dict):
            value = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        image = value if isinstance(value, Image.Image) else Image.open(value)
        return image.convert("RGB")
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"unreadable image in {where}: {err}; fix or drop the row") from err


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
