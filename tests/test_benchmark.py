"""scripts/benchmark.py: the measuring helpers exactly, and a minute-long smoke run of the whole
script (its JSON keys and its consistency; no timing is asserted: that is the benchmark's job)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlm_recipes.benchmark import CountingCollator, StepClock, mask_after_first, summarise, throughput

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
    assert batch["labels"].tolist() == [[1, 12, 12, 3, -100], [1, 12, 3, -100, -100]]


def test_throughput_leaves_out_the_warmup_steps():
    clock, counter = StepClock(), CountingCollator(lambda s: s, 0)
    clock.ends = [0.0, 10.0, 11.0, 12.0]  # the first step (warm-up) took 10 s, the others 1 s
    counter.tokens, counter.image_tokens = [100, 50, 50, 50], [10, 5, 5, 5]
    rates = throughput(clock, counter, batch_size=4, warmup=1)
    assert rates["samples_per_s"] == pytest.approx(4.0) and rates["s_per_step"] == pytest.approx(1.0)
    assert rates["text_tokens_per_s"] == pytest.approx(50.0) and rates["image_tokens_per_s"] == pytest.approx(5.0)


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
    assert {"batched_answers_per_s", "single_answers_per_s", "ratio", "identical_answers"} <= set(result["eval"])
    assert result["eval"]["identical_answers"] is True
    assert result["encode"]["max_abs_diff"] < 1e-5  # the encoder and the plain forward embed alike
    assert {"torch", "transformers", "trl", "device"} <= set(result["env"])
    assert "project / TRL" in done.stdout
    assert "these figures mean nothing" in done.stdout and result["smoke"]  # a smoke run says so (issue 32)


def test_bad_flags_get_one_line_and_exit_2(tmp_path, capsys):
    from vlm_recipes.cli.benchmark import main

    for args in (["--steps", "0"], ["--recipes", "mrl", "--steps", "8"], ["--warmup", "9", "--steps", "8"]):
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
