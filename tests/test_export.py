"""Export: a LoRA adapter merged into its unquantized base equals base + adapter, and is checked."""

from __future__ import annotations

import pytest
import torch
import yaml

from vlm_recipes.config import ModelConfig, QuantizationConfig, load_recipe
from vlm_recipes.errors import InputError
from vlm_recipes.models.export import load_merged, merge_adapter, probe_inputs, probe_logits
from vlm_recipes.models.loading import apply_stage, load_model, load_processor, trainable_report


def _save_adapter(base_dir, out_dir, recipe: str, train: bool = True):
    """A run-like directory: model/ holds a LoRA adapter (B weights set as if trained) + processor."""
    cfg = load_recipe(recipe)
    stage = cfg.stages[0]
    processor = load_processor(str(base_dir), cfg.model)
    model = apply_stage(load_model(str(base_dir), cfg.model, stage.quantization, "cpu"), stage)
    gen = torch.Generator().manual_seed(0)
    if train:
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data = torch.randn(param.shape, generator=gen) * 0.05
    (out_dir / "model").mkdir(parents=True)
    model.save_pretrained(out_dir / "model")
    processor.save_pretrained(out_dir / "model")
    (out_dir / "config.yaml").write_text(yaml.safe_dump({"model": {"family": "qwen2_vl"}}))
    return model, processor


@pytest.mark.parametrize("recipe", ["r1-llm-only", "r4-joint"])  # 4-bit bases: merged into full precision
def test_merged_model_equals_base_plus_adapter(random_tiny_dirs, tmp_path, recipe):
    base_dir = random_tiny_dirs["qwen2_vl"]
    _save_adapter(base_dir, tmp_path / "run", recipe)
    result = merge_adapter(tmp_path / "run", tmp_path / "merged")

    # the reference: the unquantized base with the adapter applied, NOT merged
    from peft import PeftModel

    from vlm_recipes.models.loading import peft_quietly

    processor = load_processor(str(base_dir), ModelConfig())
    base = load_model(str(base_dir), ModelConfig(), QuantizationConfig(), "cpu")
    probe = probe_inputs(processor)
    base_logits = probe_logits(base, probe)
    with peft_quietly():
        reference = probe_logits(PeftModel.from_pretrained(base, str(tmp_path / "run" / "model")), probe)

    merged = load_model(str(tmp_path / "merged"), ModelConfig(), QuantizationConfig(), "cpu")
    merged_logits = probe_logits(merged, probe)
    assert torch.allclose(merged_logits, reference, atol=1e-4)
    assert result.max_logit_change == pytest.approx((reference - base_logits).abs().max().item(), rel=1e-3)
    assert result.max_logit_change > 1e-3
    assert result.reload_max_diff == 0.0
    assert result.base == str(base_dir)
    # a plain checkpoint: no adapter files, no 4-bit weights, the run's processor saved with it
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert sum(trainable_report(merged).quantized.values()) == 0
    assert (tmp_path / "merged" / "processor_config.json").is_file()
    in_memory, _, _ = load_merged(tmp_path / "run" / "model")
    assert torch.allclose(probe_logits(in_memory, probe), merged_logits, atol=1e-5)


def test_an_untrained_adapter_is_refused(random_tiny_dirs, tmp_path):
    _save_adapter(random_tiny_dirs["qwen2_vl"], tmp_path / "run", "r1-llm-only", train=False)
    with pytest.raises(InputError, match="changed no output"):
        merge_adapter(tmp_path / "run", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_full_weights_and_empty_dirs_are_clear_errors(random_tiny_dirs, tmp_path):
    with pytest.raises(InputError, match="full weights, not a LoRA adapter"):
        merge_adapter(random_tiny_dirs["qwen2_vl"], tmp_path / "out")
    with pytest.raises(InputError, match="no LoRA adapter"):
        merge_adapter(tmp_path, tmp_path / "out")
