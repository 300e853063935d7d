"""Padding-free and packed batches equal the padded batch (issue 33, D31), for every family: the
logits of every real token, the loss (rel 1e-5) and the LoRA gradients (1e-4 of each tensor's
scale), on a batch with images of different sizes, a two-image sample and a video sample. And a
packer whose positions continue across samples (the bug NeMo, axolotl and LLaMA-Factory shipped)
is caught by the same check. 2 processes packed == 1 process packed: tests/test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from grad_checks import assert_same_gradients, grads
from vlm_recipes.config import TrainConfig, VideoConfig, load_recipe
from vlm_recipes.data.packing import pack_batch, plan_rows
from vlm_recipes.data.video import Clip
from vlm_recipes.errors import InputError
from vlm_recipes.models.embedding import video_inputs
from vlm_recipes.models.loading import apply_stage, load_model, load_processor
from vlm_recipes.models.varlen_attention import packed_sdpa_attention
from vlm_recipes.objectives.sft import token_mean_loss
from vlm_recipes.training.packing import packing_attention, rope_index_of

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
MODES = {"padding_free": None, "packed": 140}  # 140 tokens a row: the 4 samples go into 2 or 3 rows
LOGIT_TOLERANCE = 1e-4  # float32 attention over a different mask layout; a real difference is ~1


def user_turn(processor, content: list[dict], answer: str) -> str:
    chat = [{"role": "user", "content": content}]
    return processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + answer + "<|im_end|>"


def mixed_batch(processor) -> dict:
    """Right-padded batch of 4 samples: images of 200x170 and 100x160 px, one sample with two images
    (64x64, 150x90) and one 4-frame video; labels on the text after the prompt's vision tokens."""
    image, text = {"type": "image"}, lambda t: {"type": "text", "text": t}
    texts = [user_turn(processor, [image, text("Find it.")], "box one"),
             user_turn(processor, [image, image, text("Compare these two images, please.")], "the left one"),
             user_turn(processor, [{"type": "video"}, text("What moves?")], "a red square"),
             user_turn(processor, [image, text("Where?")], "top")]
    images = [Image.new("RGB", (200, 170), "white"), Image.new("RGB", (64, 64), "red"),
              Image.new("RGB", (150, 90), "blue"), Image.new("RGB", (100, 160), "gray")]
    clip = Clip(tuple(Image.new("RGB", (96, 64), c) for c in ("red", "green", "blue", "white")), 4.0, (0, 1, 2, 3), 4)
    processor.tokenizer.padding_side = "right"
    batch = processor(text=texts, images=images, padding=True, return_tensors="pt",
                      **video_inputs(processor, [clip], VideoConfig()))
    batch = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    batch["labels"] = labels.masked_fill(batch["mm_token_type_ids"] != 0, -100)
    return batch


@pytest.fixture(scope="module")
def lora_models(random_tiny_dirs):
    """{family: (LoRA on vision and LLM, no dropout, float32), processor}."""
    recipe = load_recipe("r4-joint", ["stages.0.quantization.load_in_4bit=false", "lora.dropout=0.0"])
    stage, out = recipe.stages[0], {}
    for family in FAMILIES:
        path = str(random_tiny_dirs[family])
        torch.manual_seed(0)
        model = apply_stage(load_model(path, recipe.model, stage.quantization, "cpu"), stage)
        model.config.use_cache = False
        out[family] = model, load_processor(path, recipe.model)
    return out


def forward_backward(model, batch: dict):
    """Logits, the step's token-mean loss (as Trainer counts its tokens) and the LoRA gradients."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    model.zero_grad(set_to_none=True)
    outputs = model(**inputs)
    items = (batch["labels"][..., 1:] != -100).sum()
    loss = token_mean_loss(outputs, batch["labels"], num_items_in_batch=items)
    loss.backward()
    return outputs.logits.detach(), loss.detach(), grads(model)


def real_token_logits(logits: torch.Tensor, batch: dict, rows: list[list[int]] | None = None) -> list[torch.Tensor]:
    """Per sample, the logits of its real tokens: from the padded batch (rows None), or from packed
    rows laid out as `plan_rows` lays them."""
    lengths = batch["attention_mask"].sum(1).tolist()
    if rows is None:
        return [logits[i, :n] for i, n in enumerate(lengths)]
    out = [None] * len(lengths)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            out[i], start = logits[r, start:start + lengths[i]], start + lengths[i]
    return out


def largest_logit_gap(padded: list[torch.Tensor], packed: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(padded, packed))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batch_equals_the_padded_one(lora_models, family, mode):
    model, processor = lora_models[family]
    batch = mixed_batch(processor)
    packed = pack_batch(batch, rope_index_of(model), MODES[mode])
    rows = plan_rows(batch["attention_mask"].sum(1).tolist(), MODES[mode])
    assert len(rows) == (1 if mode == "padding_free" else packed["input_ids"].shape[0]) and "attention_mask" not in packed
    if mode == "packed":
        assert len(rows) > 1 and packed["input_ids"].shape[1] <= MODES[mode]
    padded_logits, padded_loss, padded_grads = forward_backward(model, batch)
    with packed_sdpa_attention(model) as switched:  # as training runs it: per-sample SDPA (D31)
        assert switched
        packed_logits, packed_loss, packed_grads = forward_backward(model, packed)
    gap = largest_logit_gap(real_token_logits(padded_logits, batch), real_token_logits(packed_logits, batch, rows))
    assert gap < LOGIT_TOLERANCE, gap
    assert padded_grads and any("visual" in name for name in padded_grads)  # vision LoRA is trained too
    assert_same_gradients(padded_loss, packed_loss, padded_grads, packed_grads)
    # the same supervised tokens, none of them a sample's first (no target crosses a boundary)
    assert int((packed["labels"] != -100).sum()) == int((batch["labels"][..., 1:] != -100).sum())


def recorded_sdpa_calls(monkeypatch) -> list[dict]:
    """Every scaled_dot_product_attention call from here on: query length, mask shape, is_causal."""
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention

    def record(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        calls.append({"tokens": query.shape[2], "mask": None if attn_mask is None else tuple(attn_mask.shape),
                      "causal": is_causal})
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_take_the_per_sample_causal_kernel_and_other_batches_plain_sdpa(lora_models, family, monkeypatch):
    """In a packing stage's training loop (`packing_attention`, as train_stage runs it) each sample
    of a padding-free row is its own causal SDPA call with no mask (the O(sum L^2) path); without it
    transformers' SDPA gets a dense row-wide mask; a padded batch inside the loop still gets its
    padding mask; train.packing=none switches nothing, and the switch is undone on exit."""
    model, processor = lora_models[family]
    batch = mixed_batch(processor)
    packed = pack_batch(batch, rope_index_of(model), None)
    lengths, width = batch["attention_mask"].sum(1).tolist(), packed["input_ids"].shape[1]
    layers = model.config.get_text_config().num_hidden_layers
    calls = recorded_sdpa_calls(monkeypatch)
    text_config = model.config.get_text_config()
    with packing_attention(model, TrainConfig()):  # train.packing=none: nothing switched
        assert text_config._attn_implementation == "sdpa"
    with torch.no_grad():
        with packing_attention(model, TrainConfig(packing="padding_free")):  # as train_stage trains
            assert text_config._attn_implementation == "packed_sdpa"
            model(**{k: v for k, v in packed.items() if k != "labels"})
            text = [c for c in calls if c["causal"]]
            assert [c["tokens"] for c in text] == lengths * layers and all(c["mask"] is None for c in text)
            calls.clear()
            model(**{k: v for k, v in batch.items() if k != "labels"})  # padded: transformers' SDPA, its mask
            assert sum(c["mask"] == (4, 1, batch["input_ids"].shape[1], batch["input_ids"].shape[1])
                       for c in calls) == layers
        assert text_config._attn_implementation == "sdpa"
        calls.clear()
        model(**{k: v for k, v in packed.items() if k != "labels"})  # stock SDPA: one dense block-diagonal mask
        assert sum(c["mask"] == (1, 1, width, width) for c in calls) == layers


def continuing_positions(model, packed: dict) -> torch.Tensor:
    """What a packer without per-sample positions feeds: the model's rope index over the whole row
    as one sequence, and a text position that runs on across the samples."""
    positions, _ = rope_index_of(model)(packed["input_ids"], mm_token_type_ids=packed["mm_token_type_ids"],
                                        image_grid_thw=packed["image_grid_thw"], video_grid_thw=packed["video_grid_thw"],
                                        second_per_grid_ts=packed.get("second_per_grid_ts"))
    text = torch.arange(positions.shape[-1]).expand(1, 1, -1)
    return torch.cat([text, positions])


def text_only_positions(packed: dict) -> torch.Tensor:
    """Per-sample restarts kept, but 1-D text positions on the vision tokens too (no 3-D mRoPE)."""
    return packed["position_ids"][:1].expand(4, -1, -1)


@pytest.mark.parametrize("corrupt", ["continuing", "text_only"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_check_catches_positions_that_are_not_per_sample(lora_models, family, corrupt):
    model, processor = lora_models[family]
    batch = mixed_batch(processor)
    packed = pack_batch(batch, rope_index_of(model), None)
    packed["position_ids"] = (continuing_positions(model, packed) if corrupt == "continuing"
                              else text_only_positions(packed))
    with torch.no_grad():
        padded_logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        with packed_sdpa_attention(model):
            packed_logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits
    gap = largest_logit_gap(real_token_logits(padded_logits, batch), real_token_logits(packed_logits, batch, [[0, 1, 2, 3]]))
    assert gap > 100 * LOGIT_TOLERANCE, gap


def test_rows_are_first_fit_decreasing_and_an_over_long_sample_is_named():
    assert plan_rows([5, 3, 4, 2], None) == [[0, 1, 2, 3]]
    assert plan_rows([5, 3, 4, 2], 7) == [[0, 3], [1, 2]]
    with pytest.raises(InputError, match=r"sample img-7 has 9 tokens > train.max_tokens_per_row=8"):
        plan_rows([3, 9], 8, ["img-3", "img-7"])


def test_packing_is_refused_at_load_for_objectives_other_than_sft():
    assert load_recipe("r4-joint", ["train.packing=packed", "train.group_by_length=true"]).stages[0].train.packing == "packed"
    with pytest.raises(InputError, match=r"stages.0.train.packing / group_by_length: only for sft"):
        load_recipe("mrl", ["train.packing=padding_free"])
    with pytest.raises(InputError, match=r"train.packing"):
        load_recipe("r4-joint", ["train.packing=dense"])
    with pytest.raises(InputError, match=r"train.max_tokens_per_row=0"):
        load_recipe("r4-joint", ["train.max_tokens_per_row=0"])


def test_gpu_check_script_runs_its_code_path_on_cpu():
    """scripts/check_packing_gpu.py (FA2 on a real-size Qwen2-VL-2B when a GPU is lent) on a scaled-down
    architecture with SDPA: padding-free equals padded on the real vocabulary and token ids."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_packing_gpu.py"
    spec = importlib.util.spec_from_file_location("check_packing_gpu", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--scaled-down", "--device", "cpu", "--attn", "sdpa", "--rel", "1e-5", "--logit-tol", "1e-5"]) == 0


def test_group_by_length_gives_trainer_a_length_column_and_the_collator_finds_the_samples():
    from transformers import TrainingArguments

    from vlm_recipes.config import TrainConfig
    from vlm_recipes.training.packing import batching_inputs, sampling_arguments

    def collate(samples):  # a sample's length is its string's
        return {"attention_mask": torch.ones(len(samples), max(map(len, samples))), "samples": samples}

    train = TrainConfig(group_by_length=True)
    inputs = batching_inputs({"train_dataset": ["aaa", "b", "cc"], "data_collator": collate}, None, train)
    dataset = inputs["train_dataset"]
    assert dataset[TrainingArguments(output_dir="unused").length_column_name] == [3, 1, 2]
    assert inputs["data_collator"]([dataset[2], dataset[0]])["samples"] == ["cc", "aaa"]
    assert sampling_arguments(train) == {"train_sampling_strategy": "group_by_length"}
    assert sampling_arguments(TrainConfig()) == {}
