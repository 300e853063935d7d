"""scripts/benchmark.py: the measuring helpers exactly, and a minute-long smoke run of the whole
script (its JSON keys and its consistency; no timing is asserted: that is the benchmark's job)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlm_recipes.benchmark import CountingCollator, StepClock, mask_after_first, summarise, throughput, variable_sizes

ROOT = Path(__file__).resolve().parents[1]


def test_mask_after_first_keeps_labels_up_to_the_first_end_token():
    labels = torch.tensor([[-100, 5, 6, 2, 9, 0], [-100, -100, 7, 2, 9, 2]])
    assert mask_after_first(labels, 2).tolist() == [[-100, 5, 6, 2, -100, -100], [-100, -100, 7, 2, -100, -100]]
    assert mask_after_first(torch.tensor([[4, 5]]), 2).tolist() == [[4, 5]]  # no end token: unchanged


def test_counting_collator_counts_text_and_image_tokens_apart():
    def collate(samples):
        ids = torch.tensor([[1, 12, 12, 3, 0], [1, 12, 3, 4, 5]])
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": ids.clone()}

    counter = CountingCollator(collate, image_token_id=12, end_token_id=3)
    batch = counter([None, None])
    assert counter.tokens == [6] and counter.image_tokens == [3]  # 9 real tokens, 3 of them image
    assert counter.fed == [10]  # 2 rows padded to 5: 1 pad in 10 tokens
    packed = CountingCollator(collate, image_token_id=12, fed=lambda lengths, width: sum(lengths))
    packed([None, None])
    assert packed.fed == [9]
    assert batch["labels"].tolist() == [[1, 12, 12, 3, -100], [1, 12, 3, -100, -100]]


def test_throughput_leaves_out_the_warmup_steps():
    clock, counter = StepClock(), CountingCollator(lambda s: s, 0)
    clock.ends = [0.0, 10.0, 11.0, 12.0]  # the first step (warm-up) took 10 s, the others 1 s
    counter.tokens, counter.image_tokens = [100, 50, 50, 50], [10, 5, 5, 5]
    counter.fed, counter.seconds = [200, 110, 110, 110], [0.5, 0.1, 0.1, 0.1]
    rates = throughput(clock, counter, batch_size=4, warmup=1)
    assert rates["samples_per_s"] == pytest.approx(4.0) and rates["s_per_step"] == pytest.approx(1.0)
    assert rates["text_tokens_per_s"] == pytest.approx(50.0) and rates["image_tokens_per_s"] == pytest.approx(5.0)
    assert rates["real_tokens_per_s"] == pytest.approx(55.0) and rates["pad_fraction"] == pytest.approx(0.5)
    assert rates["collate_s_per_step"] == pytest.approx(0.1)


def test_summarise_reports_the_median_and_spread():
    runs = [{"samples_per_s": r, "final_loss": 1.0, "losses": [2.0, 1.0]} for r in (10.0, 30.0, 20.0)]
    out = summarise(runs)
    assert out["samples_per_s"] == 20.0 and (out["samples_per_s_min"], out["samples_per_s_max"]) == (10.0, 30.0)
    assert out["repeats"] == 3 and out["losses"] == [2.0, 1.0]


@pytest.mark.slow
def test_smoke_run_writes_every_key(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "scripts/benchmark.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    train = result["train"]
    for who in ("project", "trl_sft"):
        assert {"samples_per_s", "peak_mem_mb", "final_loss"} <= set(train[who])
        assert train[who]["samples_per_s"] > 0 and train[who]["peak_mem_mb"] > 0
    assert train["ratio"] == pytest.approx(train["project"]["samples_per_s"] / train["trl_sft"]["samples_per_s"])
    # same model, LoRA init, data order and masks: the two trainers' losses agree (4-bit r1 on CPU)
    assert train["loss_rel_diff"] < 1e-3
    # packed rows (D31): the same samples per step, so the same losses (the first two exactly: equal to
    # 1e-7 at equal weights; later Adam's early, sign-like steps amplify float-order noise to ~1e-3)
    modes = train["r1-llm-only"]["project_modes"]
    assert set(modes) == {"padded", "packed"}
    assert modes["packed"]["losses"][:2] == pytest.approx(modes["padded"]["losses"][:2], rel=1e-5)
    assert modes["packed"]["losses"] == pytest.approx(modes["padded"]["losses"], rel=1e-2)
    assert 0 <= modes["packed"]["pad_fraction"] <= modes["padded"]["pad_fraction"] < 1
    assert {"batched_answers_per_s", "single_answers_per_s", "ratio", "identical_answers"} <= set(result["eval"])
    assert result["eval"]["identical_answers"] is True
    assert result["encode"]["max_abs_diff"] < 1e-5  # the encoder and the plain forward embed alike
    assert {"torch", "transformers", "trl", "device"} <= set(result["env"])
    assert "project / TRL" in done.stdout
    assert "these figures mean nothing" in done.stdout and result["smoke"]  # a smoke run says so (issue 32)


def test_bad_flags_get_one_line_and_exit_2(tmp_path, capsys):
    from vlm_recipes.cli.benchmark import main

    for args in (["--steps", "0"], ["--recipes", "mrl", "--steps", "8"], ["--warmup", "9", "--steps", "8"],
                 ["--modes", "padded,dense"]):
        assert main([*args, "--out", str(tmp_path / "b.json")]) == 2, args
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and err.startswith("error: "), err
        assert not (tmp_path / "b.json").exists()


def test_real_size_architectures_have_the_published_parameter_counts():
    from transformers import AutoModelForImageTextToText

    from vlm_recipes.models.real_size import REAL_SIZE, real_size_config

    for name, (*_, published) in REAL_SIZE.items():
        with torch.device("meta"):  # shapes only: no memory, no download
            model = AutoModelForImageTextToText.from_config(real_size_config(name))
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(published, rel=0.005), name


def test_real_size_mode_trains_every_recipe_on_a_scaled_down_architecture():
    """The GPU mode's code path on CPU: a Qwen2-VL architecture with the real vocabulary and token ids
    but tiny widths, random weights saved and loaded through the project's loading (4-bit for r4),
    LoRA from the recipes, a few optimizer steps each."""
    from transformers import AutoConfig

    from vlm_recipes.benchmark import benchmark_real_size
    from vlm_recipes.models.real_size import MROPE, TOKEN_IDS

    config = AutoConfig.for_model(
        "qwen2_vl", text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, vocab_size=151936, rope_parameters=dict(MROPE, mrope_section=[2, 3, 3])),
        vision_config=dict(depth=2, embed_dim=64, hidden_size=64, mlp_ratio=2, num_heads=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2), tie_word_embeddings=True, **TOKEN_IDS)
    out = benchmark_real_size(config, ["r4-joint", "mrl"], steps=2, warmup=1, device="cpu", batch_size=2, image_side=56)
    assert out["batch_size"] == 2 and out["params"] > 151936 * 64
    for recipe in ("r4-joint", "mrl"):
        row = out[recipe]
        assert row["samples_per_s"] > 0 and row["llm_tokens_per_s"] > 0 and row["mfu"] is None  # no GPU, no MFU
        assert 0 < row["trainable_params"] < out["params"]  # LoRA only


def test_variable_sizes_spread_the_images_within_the_budget_and_scale_the_boxes():
    from PIL import Image

    from vlm_recipes.data.detection import DetectionSample

    samples = [DetectionSample(Image.new("RGB", (200, 100)), (("nutrition table", (20.0, 10.0, 100.0, 50.0)),), 200, 100,
                               f"s{i}")
               for i in range(40)]
    resized = variable_sizes(samples, 3136, 25600, seed=0)
    areas = [s.width * s.height for s in resized]
    assert all(s.image.size == (s.width, s.height) for s in resized)
    assert min(areas) >= 3136 * 0.9 and max(areas) <= 25600 * 1.05 and len(set(areas)) > 10
    for s in resized:  # the box keeps its place relative to the image
        assert s.box[2] / s.width == pytest.approx(0.5) and s.box[3] / s.height == pytest.approx(0.5)



def test_variable_data_trains_under_a_photo_sized_budget_that_a_set_overrides():
    from vlm_recipes.benchmark import data_overrides
    from vlm_recipes.config import load_recipe

    assert data_overrides("default") == []
    model = load_recipe("r4-joint", data_overrides("variable")).model
    assert (model.min_pixels, model.max_pixels) == (32768, 655360)  # 32-640 tokens of 32x32 px
    assert load_recipe("r4-joint", data_overrides("variable") + ["model.max_pixels=100000"]).model.max_pixels == 100000


def test_batches_built_before_training_are_not_counted():
    """Length grouping encodes every sample once before training; the step clock restarts the counts."""
    counter = CountingCollator(lambda s: {"input_ids": torch.ones(1, 3), "attention_mask": torch.ones(1, 3)}, 0)
    counter([None])
    StepClock(counter).on_train_begin(None, None, None)
    assert counter.tokens == [] and counter.fed == []
