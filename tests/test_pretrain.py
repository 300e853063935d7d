"""Pretraining the tiny base: its generic task, the dense auxiliary loss, the position-table init."""

import json
import random

import numpy as np
import torch
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

from vlm_recipes.data.objects import (
    ALIAS_WORDS,
    COLOUR_NAMES,
    HELD_OUT_LABELS,
    KINDS,
    MAX_PIXELS,
    MIN_PIXELS,
    ObjectsDataset,
)
from vlm_recipes.data.synthetic import COLOURS, GENERIC, SHAPES, render_object_example
from vlm_recipes.families import get_family
from vlm_recipes.models.tiny import build_tiny, sincos_position_table
from vlm_recipes.objectives.dense_grounding import HEAD_NAME, HEAD_OUTPUTS, DenseGrounding, dense_targets
from vlm_recipes.training.pretrain import pretrain_base

QWEN3 = get_family("qwen3_vl")


def test_object_example_is_one_generic_object_fixed_by_the_seed():
    a_img, *a_rest = render_object_example(random.Random(5))
    b_img, *b_rest = render_object_example(random.Random(5))
    assert a_rest == b_rest and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    kinds, colours = set(), set()
    for seed in range(80):
        img, kind, colour, (x1, y1, x2, y2) = render_object_example(random.Random(seed))
        kinds.add(kind)
        colours.add(colour)
        assert kind in SHAPES + GENERIC
        assert (colour == "") == (kind in GENERIC) and (colour == "" or colour in COLOURS)
        assert 0 <= x1 < x2 <= img.width and 0 <= y1 < y2 <= img.height
        assert x2 - x1 >= 5 and y2 - y1 >= 5
    assert len(kinds) >= 9 and len(colours) >= 8  # the draw covers kinds and colours, not favourites


def _label(answer: str) -> str:
    return json.loads(answer)[0]["label"]


def test_aliases_are_asked_for_by_name_and_answered_verbatim():
    samples = [ObjectsDataset(400, QWEN3, seed=3)[i] for i in range(400)]  # the shipped base's task
    kind_words = {w for name in KINDS + COLOUR_NAMES for w in name.split()}
    assert not kind_words & set(ALIAS_WORDS)  # kind and colour labels always come from the image
    aliased = 0
    for s in samples:
        label = _label(s.answer)
        assert label not in HELD_OUT_LABELS
        if label.split()[-1] not in kind_words:  # an alias: asked for by name, answered verbatim
            aliased += 1
            assert f" {label}" in s.prompt and set(label.split()) <= set(ALIAS_WORDS)
        else:
            assert label == f"{COLOUR_NAMES[s.colour]} {KINDS[s.kind]}".strip() if s.colour >= 0 else label == KINDS[s.kind]
    assert 70 <= aliased <= 130  # about a quarter
    plain = [ObjectsDataset(400, QWEN3, seed=3, aliases=False)[i] for i in range(400)]  # --no-aliases
    assert all(_label(s.answer).split()[-1] in kind_words for s in plain)


def test_dense_targets_by_hand():
    # 160x160 image, 5x5 tokens of 32 px: the box spans columns 1.25..3.125 and rows 0..2
    coverage, boxes = dense_targets((40.0, 0.0, 100.0, 64.0), 160, 160, grid_h=5, grid_w=5)
    expected = torch.zeros(5, 5)
    expected[0:2, 1], expected[0:2, 2], expected[0:2, 3] = 0.75, 1.0, 0.125
    torch.testing.assert_close(coverage, expected.flatten())
    assert boxes.shape == (25, 4)
    torch.testing.assert_close(boxes[7], torch.tensor([0.25, 0.0, 0.625, 0.4]))


def test_dense_targets_on_a_non_square_grid_are_row_major():
    coverage, _ = dense_targets((0.0, 0.0, 32.0, 32.0), 96, 64, grid_h=2, grid_w=3)
    assert coverage.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    coverage, _ = dense_targets((64.0, 32.0, 96.0, 64.0), 96, 64, grid_h=2, grid_w=3)
    assert coverage.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_sincos_table_is_smooth_and_separates_rows_from_columns():
    table = sincos_position_table(16, 96).view(16, 16, 96)
    row_half, col_half = table[..., :48], table[..., 48:]
    assert torch.equal(row_half[3, 0], row_half[3, 15])  # the row half ignores the column
    assert torch.equal(col_half[0, 3], col_half[15, 3])
    near = (table[4, 4] - table[4, 5]).norm()
    far = (table[4, 4] - table[4, 12]).norm()
    assert near < far
    model, _ = build_tiny(QWEN3, MIN_PIXELS, MAX_PIXELS, seed=0)
    torch.testing.assert_close(model.model.visual.pos_embed.weight, sincos_position_table(16, 96))


def test_dense_objective_adds_the_head_loss_computed_independently():
    model, processor = build_tiny(QWEN3, MIN_PIXELS, MAX_PIXELS, seed=0)
    model.add_module(HEAD_NAME, torch.nn.Linear(128, HEAD_OUTPUTS))
    samples = [ObjectsDataset(4, QWEN3, seed=1)[i] for i in range(4)]
    assert HEAD_OUTPUTS == 5 + len(KINDS) + len(COLOUR_NAMES)
    objective = DenseGrounding(processor, weight=0.5)
    batch = objective.collate(samples)
    coverage, boxes = batch["dense_coverage"], batch["dense_boxes"]
    loss = objective.compute_loss(model, dict(batch))

    lm_inputs = {k: v for k, v in batch.items() if not k.startswith("dense_")}
    lm_loss = model(**lm_inputs).loss
    tokens = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    prediction = getattr(model, HEAD_NAME)(torch.cat(list(tokens)))
    assert prediction.shape[0] == coverage.shape[0] == boxes.shape[0]
    bce = torch.nn.functional.binary_cross_entropy_with_logits(prediction[:, 0], coverage)
    inside = coverage > 0.3
    l1 = (prediction[inside, 1:5].sigmoid() - boxes[inside]).abs().sum(-1).mean()
    # kind and colour cross-entropy over covered tokens, from each token's own sample
    owner = torch.repeat_interleave(torch.arange(4), batch["image_grid_thw"].prod(-1) // 4)
    kind = torch.tensor([samples[i].kind for i in owner])
    colour = torch.tensor([samples[i].colour for i in owner])
    assert torch.equal(batch["dense_kind"], kind) and torch.equal(batch["dense_colour"], colour)
    kind_ce = torch.nn.functional.cross_entropy(prediction[inside, 5:5 + len(KINDS)], kind[inside])
    named = inside & (colour >= 0)
    colour_ce = (torch.nn.functional.cross_entropy(prediction[named, 5 + len(KINDS):], colour[named])
                 if named.any() else torch.tensor(0.0))
    torch.testing.assert_close(loss, lm_loss + 0.5 * (bce + l1 + kind_ce + colour_ce))


def test_pretraining_saves_a_plain_checkpoint_without_the_head(tmp_path):
    pretrain_base(QWEN3, tmp_path, num_samples=16, epochs=1, learning_rate=1e-3, batch_size=8)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and not any(HEAD_NAME in k for k in keys)
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path)).__name__ == "Qwen3VLForConditionalGeneration"
