"""A Qwen-VL checkpoint used as an embedding model (as in VLM2Vec / GME).

Each input is one chat turn: the user's instruction (+ image) followed by the assistant prefix;
its embedding is the final hidden state (after the last norm) of the LAST real token, or the
mean over real tokens, L2-normalised. Queries and targets get their own instruction.

Matryoshka: the first `d` coordinates of an embedding are themselves an embedding once
re-normalised (`truncate`). Default dims for hidden size H: (H/8, H/4, H/2, H) for small models
(16, 32, 64, 128 for the tiny base); for real models powers of two from 256 up, plus H
(Qwen2-VL-2B, H=1536: 256, 512, 1024, 1536; Qwen2.5-VL-3B, H=2048: 256, 512, 1024, 2048;
7B, H=3584: 256, 512, 1024, 2048, 3584).

    from vlm_recipes.models.embedding import Embedder
    embedder = Embedder.load("runs/mrl/model")
    q = embedder.encode_texts(["two red circles on the left and a blue star on the right"])  # (1, H)
    g = embedder.encode_images(images)                                                       # (N, H)
    v = embedder.encode_videos([read_video("clip.mp4", VideoConfig(), "example")])           # (1, H)
    scores = truncate(q, 64) @ truncate(g, 64).T
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image

from ..config import QUERY_INSTRUCTION, TARGET_INSTRUCTION, MRLOptions, VideoConfig
from ..data.sources import to_rgb
from ..data.video import Clip
from ..errors import InputError

Pooling = Literal["last", "mean"]


def default_dims(hidden_size: int) -> tuple[int, ...]:
    if hidden_size <= 512:
        return tuple(d for d in (hidden_size // 8, hidden_size // 4, hidden_size // 2) if d > 0) + (hidden_size,)
    powers = []
    d = 256
    while d < hidden_size:
        powers.append(d)
        d *= 2
    return tuple(powers) + (hidden_size,)


def resolve_dims(dims: tuple[int, ...], hidden_size: int) -> tuple[int, ...]:
    """The configured Matryoshka dims (sorted) or the defaults; each must be in 1..hidden_size."""
    if not dims:
        return default_dims(hidden_size)
    bad = [d for d in dims if not 0 < d <= hidden_size]
    if bad:
        raise InputError(f"objective.options.dims: {bad[0]} is not in 1..{hidden_size} (the model's hidden size)")
    return tuple(sorted(set(dims)))


def hidden_size(model) -> int:
    config = model.config
    return getattr(config, "text_config", config).hidden_size


def truncate(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """The first `dim` coordinates, re-normalised to unit length: (N, H) -> (N, dim)."""
    return F.normalize(embeddings[..., :dim].float(), dim=-1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden), correct under left and right padding.

    "last": the last position whose mask is 1 (right padding: sum-1; left padding: seq-1; the
    mask is searched, not assumed, so both work and so does a pad token equal to EOS).
    "mean": the mean over positions whose mask is 1.
    """
    mask = attention_mask.bool()
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    seq = mask.shape[1]
    last = seq - 1 - mask.flip(1).int().argmax(1)  # (batch,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def embed(model, inputs: dict[str, torch.Tensor], pooling: Pooling) -> torch.Tensor:
    """L2-normalised float32 embeddings (batch, hidden) of a processor batch.

    Goes through the model's own forward (so DDP and peft wrappers see the call) and keeps only
    the last position's logits, so the LM head costs nothing; hidden_states[-1] is the output of
    the final norm.
    """
    outputs = model(**inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False)
    pooled = pool(outputs.hidden_states[-1], inputs["attention_mask"], pooling)
    return F.normalize(pooled.float(), dim=-1)


def chat_text(processor, text: str | None, instruction: str, visual: Literal["image", "video"] | None) -> str:
    """One user turn (image or video first, then instruction and text) ending with the assistant prefix."""
    content = [{"type": visual}] if visual else []
    body = instruction if not text else f"{instruction}\n{text}" if instruction else text
    content.append({"type": "text", "text": body})
    chat = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    if visual == "video" and "<|video_pad|>" not in chat:
        raise InputError("this model's chat template writes no video placeholder (<|video_pad|>): a processor saved "
                         "before video support; copy a current chat_template.jinja next to the model")
    return chat


def kind_of(visual) -> Literal["image", "video"] | None:
    """What a visual input is: a PIL image, a sampled video (data.video.Clip), or nothing."""
    if visual is None:
        return None
    return "video" if isinstance(visual, Clip) else "image"


def tokenize(processor, texts: list[str | None], images: list, instruction: str, max_length: int,
             padding_side: Literal["left", "right"] = "right", video: VideoConfig = VideoConfig()
             ) -> dict[str, torch.Tensor]:
    """A processor batch of (image or video?, text?) inputs; never truncated (an error when too long).

    `images`: per row a PIL image, a `Clip` (video frames) or None. Videos go through the processor's
    own video path (pixel_values_videos, video_grid_thw; Qwen2.5-VL adds second_per_grid_ts), their
    frames resized to `video`'s per-frame pixel budget here and not re-sampled there.
    """
    kinds = [kind_of(v) for v in images]
    chats = [chat_text(processor, t, instruction, kind) for t, kind in zip(texts, kinds)]
    pictures = [v for v, kind in zip(images, kinds) if kind == "image"]
    clips = [v for v, kind in zip(images, kinds) if kind == "video"]
    extra = video_inputs(processor, clips, video) if clips else {}
    batch = processor(text=chats, images=pictures or None, padding=True, padding_side=padding_side,
                      return_tensors="pt", **extra)
    longest = int(batch["attention_mask"].sum(1).max())
    if longest > max_length:
        raise InputError(f"an embedding input has {longest} tokens > objective.options.max_length={max_length}: "
                         "raise it or lower model.max_pixels / data.video.max_pixels / data.video.max_frames "
                         "(inputs are never truncated)")
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


def video_inputs(processor, clips: list[Clip], video: VideoConfig) -> dict:
    """The processor's video arguments: frames at the per-frame budget, and metadata that gives
    each frame its time (Qwen3-VL's timestamps, Qwen2.5-VL's seconds per temporal patch)."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
    from transformers.video_utils import VideoMetadata

    vp = processor.video_processor
    factor = vp.patch_size * vp.merge_size
    frames, metadata = [], []
    for clip in clips:
        width, height = clip.frames[0].size
        h, w = smart_resize(height, width, factor=factor, min_pixels=video.min_pixels, max_pixels=video.max_pixels)
        frames.append([f if f.size == (w, h) else f.resize((w, h), Image.BICUBIC) for f in clip.frames])
        metadata.append(VideoMetadata(total_num_frames=clip.total, fps=clip.fps, frames_indices=list(clip.indices)))
    options = {"video_metadata": metadata, "do_sample_frames": False, "do_resize": False}
    if hasattr(vp, "cap_pixels_per_frame"):  # Qwen3-VL: frames are already at their budget
        options["cap_pixels_per_frame"] = False
    return {"videos": frames, "videos_kwargs": options}


@dataclass
class EncodeSettings:
    pooling: Pooling = "last"
    query_instruction: str = QUERY_INSTRUCTION
    target_instruction: str = TARGET_INSTRUCTION
    max_length: int = 1024
    batch_size: int = 32
    video: VideoConfig = VideoConfig()
    """Per-frame pixel budget of videos (their frames were sampled by the same config when read)."""

    @classmethod
    def from_options(cls, options: MRLOptions, batch_size: int, video: VideoConfig = VideoConfig()) -> "EncodeSettings":
        """Encode as the `mrl` objective trains: its pooling, instructions, length limit and video budget."""
        return cls(options.pooling, options.query_instruction, options.target_instruction, options.max_length,
                   batch_size, video)


@torch.no_grad()
def encode(model, processor, texts: list[str | None], images: list, instruction: str,
           settings: EncodeSettings) -> torch.Tensor:
    """(N, hidden) normalised embeddings in batches, model in eval mode, on the model's device.
    `images`: per row a PIL image, a video `Clip` or None."""
    was_training = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    for start in range(0, len(texts), settings.batch_size):
        batch = tokenize(processor, texts[start:start + settings.batch_size], images[start:start + settings.batch_size],
                         instruction, settings.max_length, video=settings.video)
        out.append(embed(model, {k: v.to(device) for k, v in batch.items()}, settings.pooling).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, hidden_size(model))


def encode_texts(model, processor, texts: list[str], settings: EncodeSettings = EncodeSettings()) -> torch.Tensor:
    """Text-only queries -> (N, hidden) normalised embeddings (query instruction)."""
    return encode(model, processor, list(texts), [None] * len(texts), settings.query_instruction, settings)


def encode_images(model, processor, images: list[Image.Image], texts: list[str | None] | None = None,
                  settings: EncodeSettings = EncodeSettings()) -> torch.Tensor:
    """Images (each with optional text) -> (N, hidden) normalised embeddings (target instruction)."""
    return encode(model, processor, texts or [None] * len(images), [to_rgb(img) for img in images],
                  settings.target_instruction, settings)


def encode_videos(model, processor, clips: list[Clip], texts: list[str | None] | None = None,
                  settings: EncodeSettings = EncodeSettings()) -> torch.Tensor:
    """Videos (sampled clips, each with optional text) -> (N, hidden) normalised embeddings (target instruction)."""
    return encode(model, processor, texts or [None] * len(clips), list(clips), settings.target_instruction, settings)


class Embedder:
    """A loaded checkpoint (base, merged, or a run's LoRA adapter directory) with its processor."""

    def __init__(self, model, processor, settings: EncodeSettings = EncodeSettings()):
        self.model, self.processor, self.settings = model, processor, settings

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", settings: EncodeSettings = EncodeSettings()) -> "Embedder":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if (path / "adapter_config.json").is_file():  # a run's LoRA output: base + adapter, merged
            import json

            from peft import PeftModel

            from .loading import peft_quietly

            base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
            model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
            with peft_quietly():
                model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        elif (path / "config.json").is_file() or not path.exists():
            model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32)
        else:
            raise InputError(f"{path} holds no model (config.json) or LoRA adapter (adapter_config.json)")
        processor = AutoProcessor.from_pretrained(str(path))
        return cls(model.to(device).eval(), processor, settings)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return encode_texts(self.model, self.processor, texts, self.settings)

    def encode_images(self, images: list[Image.Image], texts: list[str | None] | None = None) -> torch.Tensor:
        return encode_images(self.model, self.processor, images, texts, self.settings)

    def encode_videos(self, clips: list[Clip], texts: list[str | None] | None = None) -> torch.Tensor:
        return encode_videos(self.model, self.processor, clips, texts, self.settings)
