# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: -all
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Quantization and trainable parameters
# What each recipe trains, what it stores in 4-bit, what 4-bit costs in accuracy and saves in
# memory, and which dtypes end up where.

# %%
import os
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

from collections import Counter

import bitsandbytes.functional as bnbf
import pandas as pd

from vlm_recipes.config import QuantizationConfig, available_recipes, load_recipe
from vlm_recipes.data.detection import load_detection_splits
from vlm_recipes.evaluation.detection import detection_metrics
from vlm_recipes.evaluation.generation import predict_boxes
from vlm_recipes.models.export import probe_inputs, probe_logits
from vlm_recipes.models.loading import load_model, open_base, pick_dtype, stage_reports

BASE = [f"model.name_or_path={os.environ.get('VLM_RECIPES_MODEL', 'tiny')}",
        f"model.family={os.environ.get('VLM_RECIPES_FAMILY', 'qwen3_vl')}"]
cfg = load_recipe("r4-joint", BASE).model
base = open_base(cfg)
path, processor, family = base.path, base.processor, base.family

# %% [markdown]
# ## Every recipe's stages
# Counts per part (vision / merger / llm). "4-bit" counts the logical parameters stored as NF4.
# With LoRA, "trainable" is the adapters (plus any part the stage unfreezes).

# %%
rows = []
for name in available_recipes():
    for stage, report in stage_reports(load_recipe(name, BASE), path):
        for part in report.total:
            rows.append({"recipe": name, "stage": stage.name, "part": part, "total": report.total[part],
                         "trainable": report.trainable[part], "4-bit": report.quantized[part],
                         "LoRA modules (stage)": len(report.lora_modules)})
table = pd.DataFrame(rows).set_index(["recipe", "stage", "part"])
table

# %% [markdown]
# ## Memory and dtypes, full precision vs 4-bit
# On CPU, `dtype: auto` means float32 (`pick_dtype`); on a bf16 GPU, bfloat16. 4-bit weights are
# packed two per byte (uint8) with a per-block scale; `lm_head` (tied to the embeddings) and
# norms stay in the compute dtype.

# %%
print("auto dtype on cpu:", pick_dtype(cfg, "cpu"))
full = load_model(path, cfg, QuantizationConfig(load_in_4bit=False), "cpu")
nf4 = load_model(path, cfg, QuantizationConfig(load_in_4bit=True), "cpu")
for name, model in (("full", full), ("nf4", nf4)):
    dtypes = Counter(str(p.dtype) for p in model.parameters())
    print(f"{name}: {model.get_memory_footprint() / 2 ** 20:.2f} MiB, parameter tensors by dtype {dict(dtypes)}")

# %%
# every 4-bit layer dequantized and compared with the full-precision weight
modules = dict(full.named_modules())
errors = []
for name, layer in nf4.named_modules():
    if type(layer).__name__ == "Linear4bit":
        reference = modules[name].weight.detach()
        state = layer.weight.quant_state  # block scales and the logical shape of the packed weight
        restored = bnbf.dequantize_4bit(layer.weight.data, state).float()
        errors.append({"layer": name, "stored": f"{tuple(layer.weight.shape)} {layer.weight.dtype}",
                       "logical": tuple(state.shape),
                       "relative error": ((restored - reference).norm() / reference.norm()).item()})
errors = pd.DataFrame(errors)
print(f"{len(errors)} layers in {state.quant_type}, blocks of {state.blocksize} weights; relative weight error "
      f"min {errors['relative error'].min():.3f}, mean {errors['relative error'].mean():.3f}, "
      f"max {errors['relative error'].max():.3f}")
errors.head(4)

# %% [markdown]
# ## What 4-bit does to the answers
# The same base, full precision vs NF4: logits on one probe image, and boxes on test images.
# (The recipes' base row is evaluated in the precision the recipe trains in: DECISIONS D4.)

# %%
probe = probe_inputs(processor)
diff = (probe_logits(full, probe) - probe_logits(nf4, probe)).abs()
print(f"logit change from NF4: max {diff.max().item():.3f}, mean {diff.mean().item():.4f}")
test = load_detection_splits("synthetic", num_train=1, num_test=16)["test"]
results = {}
for name, model in (("full precision", full), ("nf4", nf4)):
    boxes, _, _ = predict_boxes(model, processor, family, test, "Locate the nutrition table in the image.",
                                batch_size=16, max_new_tokens=64, desc=name)
    results[name] = detection_metrics(boxes, [s.box for s in test])
pd.DataFrame(results).T[["mean_iou", "detection_rate", "iou_gt_0.5"]].round(3)
