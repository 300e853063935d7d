"""Export a run's model for deployment: merge its LoRA adapter into the base, save, check.

A LoRA trained on a 4-bit base must be merged into the UNQUANTIZED base: merging into 4-bit
weights silently does nothing or fails (PEFT #2586, LLaMA-Factory #2795). So the base named in
the adapter's config is reloaded in full precision, the adapter loaded onto it and merged with
peft's `merge_and_unload`, and the merged model saved with the run's processor (its pixel
budget included). The export is checked: the merged model's logits on a probe image must
differ from the base's (else the adapter changed nothing), and the saved copy must reload to
the same logits.

    from vlm_recipes.models.export import merge_adapter
    result = merge_adapter("runs/r4-joint", "runs/r4-joint/merged")
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, QuantizationConfig, from_dict
from ..config.loading import read_yaml_mapping
from ..errors import InputError
from .loading import load_model, load_processor, peft_quietly

PROBE_PROMPT = "Locate the nutrition table in the image."


@dataclass(frozen=True)
class ExportResult:
    path: Path
    """The merged checkpoint directory (weights + processor)."""
    base: str
    """The base the adapter was merged into."""
    max_logit_change: float
    """max |merged - base| logit on the probe image: > 0, or the export is refused."""
    reload_max_diff: float | None
    """max |reloaded - merged| logit on the probe (None when not verified): ~0."""


def adapter_dir_of(path: str | Path) -> tuple[Path, ModelConfig]:
    """A run directory or its model/ directory -> (adapter directory, the run's ModelConfig).

    The run's config.yaml (next to model/) supplies the dtype, attention and pixel budget; without
    one the defaults apply.
    """
    path = Path(path)
    if (path / "model").is_dir() and not (path / "adapter_config.json").is_file():
        path = path / "model"
    if not (path / "adapter_config.json").is_file():
        if (path / "config.json").is_file():
            raise InputError(f"{path} holds full weights, not a LoRA adapter (a full fine-tune such as "
                             "r2-vision-only): it is deployable as is, load it with from_pretrained")
        raise InputError(f"{path} holds no LoRA adapter (adapter_config.json): pass a run directory or its model/")
    model_cfg = ModelConfig()
    config = path.parent / "config.yaml"
    if config.is_file():  # only its model section matters here (read strictly, errors naming the file)
        try:
            model_cfg = from_dict(ModelConfig, read_yaml_mapping(config).get("model"), "model")
        except InputError as err:
            raise InputError(str(err) if str(config) in str(err) else f"{config}: {err}") from None
    return path, model_cfg


def load_merged(path: str | Path, device: str = "cpu", base: str | None = None):
    """(merged model, processor, base path) from a run's LoRA adapter, base reloaded unquantized."""
    from peft import PeftModel

    adapter_dir, model_cfg, base, processor, model = _open(path, device, base)
    with peft_quietly():
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.merge_and_unload(), processor, base


def _open(path, device: str, base: str | None):
    """The adapter directory, the run's ModelConfig, the base path, the run's processor and the
    base model loaded in full precision."""
    adapter_dir, model_cfg = adapter_dir_of(path)
    base = base or json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    processor = load_processor(str(adapter_dir), model_cfg)
    model = load_model(base, model_cfg, QuantizationConfig(load_in_4bit=False), device)
    return adapter_dir, model_cfg, base, processor, model


def merge_adapter(path: str | Path, output_dir: str | Path, device: str = "cpu", base: str | None = None,
                  verify_reload: bool = True) -> ExportResult:
    """Merge the LoRA adapter of run `path` (or its model/) into its unquantized base; save to `output_dir`.

    `base` overrides the base recorded in the adapter (e.g. the checkpoint moved). Raises
    InputError when the merge leaves the probe's logits unchanged (an untrained adapter).
    """
    from peft import PeftModel

    adapter_dir, model_cfg, base, processor, model = _open(path, device, base)
    probe = probe_inputs(processor)
    base_logits = probe_logits(model, probe)  # before peft injects the adapter into these modules
    with peft_quietly():
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged_logits = probe_logits(model, probe)
    change = (merged_logits - base_logits).abs().max().item()
    if change == 0.0:
        raise InputError(f"merging the adapter in {adapter_dir} into {base} changed no output: the adapter is "
                         "untrained (all LoRA B weights zero) or targets modules the probe does not use")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    reload_diff = None
    if verify_reload:
        reloaded = load_model(str(output_dir), model_cfg, QuantizationConfig(load_in_4bit=False), device)
        reload_diff = (probe_logits(reloaded, probe) - merged_logits).abs().max().item()
    return ExportResult(output_dir, base, change, reload_diff)


def probe_inputs(processor) -> dict[str, torch.Tensor]:
    """One fixed synthetic packaging image and the default prompt, as model inputs."""
    from ..data.chat import encode_for_generation
    from ..data.synthetic import render_nutrition_example

    image, _ = render_nutrition_example(random.Random(0))
    return encode_for_generation(processor, [image], [PROBE_PROMPT])


@torch.no_grad()
def probe_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """(1, seq, vocab) float32 logits in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    logits = model(**{k: v.to(model.device) for k, v in inputs.items()}).logits.float().cpu()
    model.train(was_training)
    return logits
