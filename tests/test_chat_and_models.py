"""Label masking (only the answer carries loss) and what each recipe trains."""

import pytest
import torch
from PIL import Image

from vlm_recipes.config import load_recipe
from vlm_recipes.data.chat import IGNORE_INDEX, encode_for_training
from vlm_recipes.families import get_family
from vlm_recipes.models.loading import (
    apply_stage,
    load_model,
    load_processor,
    model_family,
    part_of,
    stage_reports,
    trainable_report,
)

ANSWERS = ["<|object_ref_start|>nutrition table<|object_ref_end|><|box_start|>(1,2),(300,400)<|box_end|>",
           "[{\"bbox_2d\": [5, 6, 70, 80], \"label\": \"nutrition table\"}]"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_only_answer_tokens_carry_loss(random_tiny_dirs, family):
    recipe = load_recipe("r4-joint")
    processor = load_processor(str(random_tiny_dirs[family]), recipe.model)
    images = [Image.new("RGB", (200, 170), "white"), Image.new("RGB", (256, 160), "gray")]
    batch = encode_for_training(processor, images, ["Locate the nutrition table.", "Find it."], ANSWERS)
    tokenizer = processor.tokenizer
    for row, answer in enumerate(ANSWERS):
        labels = batch["labels"][row]
        supervised = tokenizer.decode(labels[labels != IGNORE_INDEX])
        print(f"supervised tokens of row {row}: {supervised!r}")
        assert supervised == answer + "<|im_end|>"
        # supervised positions are one contiguous span and equal the inputs there
        positions = (labels != IGNORE_INDEX).nonzero().flatten()
        assert positions.tolist() == list(range(positions[0], positions[-1] + 1))
        assert torch.equal(labels[positions], batch["input_ids"][row][positions])
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert ((batch["input_ids"] == image_token) & (batch["labels"] != IGNORE_INDEX)).sum() == 0


def test_all_tokens_mode_masks_only_padding_and_image(random_tiny_dirs):
    recipe = load_recipe("r4-joint")
    processor = load_processor(str(random_tiny_dirs["qwen2_vl"]), recipe.model)
    images = [Image.new("RGB", (200, 170)), Image.new("RGB", (140, 140))]
    batch = encode_for_training(processor, images, ["a", "b"], ANSWERS, loss_on="all")
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    expected = (batch["attention_mask"] == 1) & (batch["input_ids"] != image_token)
    assert torch.equal(batch["labels"] != IGNORE_INDEX, expected)


def test_over_long_sample_is_an_error_not_a_truncation(random_tiny_dirs):
    from vlm_recipes.errors import InputError

    processor = load_processor(str(random_tiny_dirs["qwen2_vl"]), load_recipe("r4-joint").model)
    with pytest.raises(InputError, match="max_length=20"):
        encode_for_training(processor, [Image.new("RGB", (200, 200))], ["x"], ANSWERS[:1], max_length=20)


def _trainable_parts(recipe_name, stage_index, path):
    recipe = load_recipe(recipe_name)
    stage = recipe.stages[stage_index]
    model = apply_stage(load_model(str(path), recipe.model, stage.quantization, "cpu"), stage)
    return model, trainable_report(model)


def test_r1_trains_only_llm_lora_on_a_4bit_base(random_tiny_dirs):
    model, report = _trainable_parts("r1-llm-only", 0, random_tiny_dirs["qwen2_vl"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    assert {part_of(n) for n in trainable} == {"llm"}
    assert report.quantized["llm"] > 0 and report.quantized["vision"] > 0
    assert report.trainable["vision"] == report.trainable["merger"] == 0
    assert all(".language_model." in m for m in report.lora_modules)


def test_r2_trains_the_whole_vision_tower_and_nothing_else(random_tiny_dirs):
    model, report = _trainable_parts("r2-vision-only", 0, random_tiny_dirs["qwen2_vl"])
    assert report.trainable["vision"] == report.total["vision"] > 0
    assert report.trainable["merger"] == report.total["merger"] > 0
    assert report.trainable["llm"] == 0 and not report.lora_modules
    assert sum(report.quantized.values()) == 0


def test_r3_stage2_is_llm_lora_with_vision_frozen(random_tiny_dirs):
    model, report = _trainable_parts("r3-two-stage", 1, random_tiny_dirs["qwen2_vl"])
    assert report.trainable["vision"] == report.trainable["merger"] == 0 and report.trainable["llm"] > 0
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_r4_has_lora_on_vision_merger_and_llm_over_4bit(random_tiny_dirs, family):
    model, report = _trainable_parts("r4-joint", 0, random_tiny_dirs[family])
    assert all(report.trainable[p] > 0 for p in ("vision", "merger", "llm"))
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert report.quantized["vision"] > 0 and report.quantized["llm"] > 0
    assert not any(m.endswith("lm_head") for m in report.lora_modules)


def test_family_is_read_from_the_checkpoint(random_tiny_dirs):
    recipe = load_recipe("r4-joint")
    for name, path in random_tiny_dirs.items():
        assert model_family(str(path), recipe.model) == get_family(name)


def test_stage_reports_give_each_stage_its_own_trainable_set(random_tiny_dirs):
    recipe = load_recipe("r3-two-stage")
    reports = stage_reports(recipe, str(random_tiny_dirs["qwen3_vl"]))
    assert [stage.name for stage, _ in reports] == ["vision-full", "llm-lora"]
    (_, vision), (_, llm) = reports
    assert vision.trainable["vision"] == vision.total["vision"] and vision.trainable["llm"] == 0
    assert llm.trainable["vision"] == 0 and 0 < llm.trainable["llm"] < llm.total["llm"] and llm.lora_modules
