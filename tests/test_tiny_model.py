"""The tiny models are real HF Qwen-VL checkpoints that load through the Auto classes."""

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from vlm_recipes.data.chat import encode_for_generation
from vlm_recipes.models.tiny import SPECIAL_TOKENS

CLASSES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
           "qwen3_vl": "Qwen3VLForConditionalGeneration"}


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_checkpoint_loads_through_auto_classes_and_generates(random_tiny_dirs, family):
    path = random_tiny_dirs[family]
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert type(model).__name__ == CLASSES[family]
    tokenizer = processor.tokenizer
    for token in SPECIAL_TOKENS + ["<|mask|>"]:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    # digits are single tokens, as in Qwen's tokenizer, so coordinates are digit sequences
    assert tokenizer.tokenize("(123,45)") == ["(", "1", "2", "3", ",", "4", "5", ")"]
    batch = encode_for_generation(processor, [Image.new("RGB", (200, 160))], ["Locate the nutrition table."])
    image_tokens = (batch["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum().item()
    merge = processor.image_processor.merge_size
    assert image_tokens == batch["image_grid_thw"].prod().item() // merge**2
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    assert sum(p.numel() for p in model.parameters()) < 3_000_000


def test_chat_template_matches_each_family(random_tiny_dirs):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    q2 = AutoProcessor.from_pretrained(random_tiny_dirs["qwen2_vl"]).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    q3 = AutoProcessor.from_pretrained(random_tiny_dirs["qwen3_vl"]).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    body = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    assert q2 == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + body
    assert q3 == body
    assert torch.__version__.startswith("2.14.1")
