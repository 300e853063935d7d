"""Tiny Qwen-VL-architecture models built from configs kept in this file.

They are real `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration` /
`Qwen3VLForConditionalGeneration` instances, only small, saved as ordinary checkpoint
directories with a processor, so they load through the same `from_pretrained` path as a
hub id. `scripts/build_base_model.py` builds one and pretrains it; the result ships in
`src/vlm_recipes/assets/`.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    PreTrainedModel,
    ProcessorMixin,
    Qwen2Tokenizer,
)

from ..families import Family

# Qwen's special tokens, in Qwen's order, so ids line up with the real vocabularies' layout.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
MASK_TOKEN = "<|mask|>"  # used by the masked-diffusion objective; harmless elsewhere

# Same pre-tokenisation as Qwen2: digits split one by one, so coordinates are digit sequences.
_PRETOKENIZE = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

_SYSTEM = {"qwen2_vl": "You are a helpful assistant.", "qwen2_5_vl": "You are a helpful assistant.",
           "qwen3_vl": None}

# One ChatML template for the three families; they differ only in the default system turn. A video
# part is written as Qwen's templates write it; the processor expands it per frame.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and default_system %}"
    "<|im_start|>system\n{{ default_system }}<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template(family: Family) -> str:
    system = _SYSTEM[family.name]
    prefix = "{% set default_system = " + (repr(system) if system else "none") + " %}"
    return prefix + _CHAT_TEMPLATE


# Text the tokenizer's merges are learned from: the vocabulary of the synthetic tasks plus
# general words, so prompts tokenise into a few tokens each instead of single bytes.
_CORPUS_WORDS = """
the a an of in on at to and or with is are this that image picture photo find locate detect
describe show where which what how many object objects box boxes table nutrition facts
information label labels bounding coordinates answer question user assistant system you
helpful red green blue yellow orange purple black white gray grey pink brown cyan small large
big tiny circle square triangle star ring cross bar rectangle framed text block striped shape
shapes left right top bottom middle center centre above below next one two three four five
energy fat saturates carbohydrate sugars fibre fiber protein salt sodium calories kcal kj per
serving total valeurs nutritionnelles organic natural brand ingredients water sugar flour milk
bbox_2d label json there nothing
"""


def _tokenizer_corpus() -> list[str]:
    words = _CORPUS_WORDS.split()
    lines = [" ".join(words[i:i + 8]) for i in range(0, len(words), 8)]
    lines += [w.capitalize() for w in words] + [" " + w for w in words]
    lines += ['[{"bbox_2d": [12, 345, 678, 901], "label": "red circle"}]', "(123,456),(789,999)"]
    return lines * 4


def build_tokenizer(family: Family, vocab_size: int = 640) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen's pre-tokenisation, special tokens and chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(_tokenizer_corpus(), trainer)
    vocab = bpe.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", unk_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:] + [MASK_TOKEN]})
    tokenizer.chat_template = chat_template(family)
    return tokenizer


# Sizes chosen so a recipe trains in minutes on two CPU cores: ~3M parameters in all.
TEXT_SIZE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
VISION_WIDTH, VISION_DEPTH, VISION_HEADS = 96, 4, 4
# mrope splits each head's 16 rotary frequency pairs over (time, height, width). A tiny image is
# at most 9x9 tokens: with Qwen's theta=1e6 (or 1e4) the height/width sections get only the
# slowest frequencies and positions inside the image are nearly indistinguishable, so grounding
# is not learnable at this scale. theta=100 and most pairs on height/width keep them apart.
MROPE_SECTION = [2, 7, 7]
ROPE_THETA = 100.0


def tiny_config(family: Family, tokenizer: Qwen2Tokenizer):
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(TEXT_SIZE, vocab_size=len(tokenizer), rope_parameters={
        "rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": MROPE_SECTION},
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    common_vision = dict(depth=VISION_DEPTH, num_heads=VISION_HEADS, patch_size=family.patch_size,
                         spatial_merge_size=family.merge_size, temporal_patch_size=2,
                         rope_parameters={"rope_type": "axial", "rope_theta": ROPE_THETA})
    if family.name == "qwen2_vl":
        vision = dict(common_vision, embed_dim=VISION_WIDTH, hidden_size=TEXT_SIZE["hidden_size"],
                      mlp_ratio=2)
    elif family.name == "qwen2_5_vl":
        # window attention on all blocks but the last, as in the real model's layout
        vision = dict(common_vision, hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH,
                      out_hidden_size=TEXT_SIZE["hidden_size"], window_size=112,
                      fullatt_block_indexes=[VISION_DEPTH - 1])
    else:
        text.update(head_dim=TEXT_SIZE["hidden_size"] // TEXT_SIZE["num_attention_heads"])
        text["rope_parameters"]["mrope_interleaved"] = True
        vision = dict(common_vision, hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH,
                      out_hidden_size=TEXT_SIZE["hidden_size"], num_position_embeddings=256,
                      deepstack_visual_indexes=[1, 2])
    return AutoConfig.for_model(family.name, text_config=text, vision_config=vision,
                                tie_word_embeddings=True, **ids)


_PROCESSOR_CLASSES = {  # family -> (processor, video processor) class names in transformers
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
}


def build_processor(family: Family, tokenizer: Qwen2Tokenizer, min_pixels: int, max_pixels: int):
    """The family's real processor class around our tokenizer, with the run's pixel budget."""
    import transformers

    processor_name, video_name = _PROCESSOR_CLASSES[family.name]
    image_processor = transformers.Qwen2VLImageProcessor(
        patch_size=family.patch_size, merge_size=family.merge_size,
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels})
    video_processor = getattr(transformers, video_name)(patch_size=family.patch_size,
                                                        merge_size=family.merge_size)
    return getattr(transformers, processor_name)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
        chat_template=tokenizer.chat_template)


def build_tiny(family: Family, min_pixels: int, max_pixels: int, seed: int = 0
               ) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised tiny model of `family` and its processor."""
    import torch

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(family)
    processor = build_processor(family, tokenizer, min_pixels, max_pixels)
    model = AutoModelForImageTextToText.from_config(tiny_config(family, tokenizer))
    visual = model.model.visual
    if hasattr(visual, "pos_embed"):  # Qwen3-VL's learned absolute position table
        with torch.no_grad():
            visual.pos_embed.weight.copy_(sincos_position_table(visual.num_grid_per_side, visual.pos_embed.embedding_dim))
    return model, processor


def sincos_position_table(grid_side: int, dim: int):
    """(grid_side**2, dim) 2-D sine-cosine position embeddings (half the channels for the row,
    half for the column), as ViT/MAE initialise theirs. Why not random: Qwen3-VL interpolates this
    table bilinearly to each image's grid, so a smooth table gives every token its position
    relative to the image from step 0, which box answers on a 0-1000 grid need."""
    import torch

    quarter = dim // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid_side, dtype=torch.float32),
                                torch.arange(grid_side, dtype=torch.float32), indexing="ij")

    def encode(positions):
        angles = positions.flatten()[:, None] * frequencies[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1)


def save_checkpoint(model: PreTrainedModel, processor: ProcessorMixin, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
