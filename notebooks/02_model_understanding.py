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
# # 02 · Model understanding
# The shipped tiny base is a real Qwen-VL model (the Hugging Face class), only small: what its
# parts are, how an image becomes tokens, and what the pretrained base answers before any recipe.

# %%
import os
import random
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Rectangle

from vlm_recipes.boxes import parse_answer
from vlm_recipes.config import ModelConfig, QuantizationConfig
from vlm_recipes.data.chat import resized_image_size
from vlm_recipes.data.synthetic import render_nutrition_example, render_object_example
from vlm_recipes.evaluation.generation import generate_texts
from vlm_recipes.families import FAMILIES
from vlm_recipes.models.loading import load_model, open_base, trainable_report

# %matplotlib inline

CFG = ModelConfig(name_or_path=os.environ.get("VLM_RECIPES_MODEL", "tiny"),
                  family=os.environ.get("VLM_RECIPES_FAMILY", "qwen3_vl"))
base = open_base(CFG)
path, processor, family = base.path, base.processor, base.family
model = load_model(path, CFG, QuantizationConfig(), "cpu")
print(type(model).__name__, "from", path)

# %% [markdown]
# ## Parts and sizes
# `vision` = the ViT (`model.visual`), `merger` = the bridge that merges 2×2 patch features
# into one LLM token (Qwen3-VL also has "deepstack" mergers feeding early LLM layers), `llm` =
# the language model and its head.

# %%
report = trainable_report(model)
parts = pd.DataFrame({"parameters": report.total})
parts["share"] = (parts.parameters / parts.parameters.sum()).round(3)
text, vision = model.config.text_config, model.config.vision_config
print(f"LLM: {text.num_hidden_layers} layers, hidden {text.hidden_size}, {text.num_attention_heads} heads, "
      f"vocab {text.vocab_size}; vision: {vision.depth} blocks, patch {vision.patch_size}, "
      f"merge {vision.spatial_merge_size}")
parts

# %%
top = pd.DataFrame([(name, sum(p.numel() for p in module.parameters()))
                    for name, module in model.model.named_children()], columns=["module", "parameters"])
top

# %% [markdown]
# ## From image to tokens
# The image is resized to multiples of patch × merge pixels, cut into patches (`pixel_values`:
# one row per patch, 2 frames × 3 channels × patch²), and every 2×2 patches become one
# `<|image_pad|>` token in the text.

# %%
image, box = render_nutrition_example(random.Random(1))
encoded = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
t, h, w = encoded["image_grid_thw"][0].tolist()
merge = processor.image_processor.merge_size
print(f"image {image.size} -> resized {resized_image_size(processor, family, *image.size)}; "
      f"patch grid t={t} h={h} w={w}; pixel_values {tuple(encoded['pixel_values'].shape)}; "
      f"{t * h * w // merge ** 2} image tokens")

# %%
pd.DataFrame([{"family": f.name, "patch": f.patch_size, "merge": f.merge_size,
               "px per token side": f.pixels_per_token_side, "box format": f.box_format} for f in FAMILIES.values()])

# %% [markdown]
# ## What the pretrained base answers
# It was pretrained to ground and name one generic object ("Locate the star." -> a box labelled
# "red star"; shapes, framed boxes, text blocks, barcodes), never nutrition tables. A quarter of
# its prompts named the object by an alias that the answer repeats, so, like a real Qwen-VL, it
# labels the answer with the name it is asked for. It should find and name the object, and for
# the nutrition table say "nutrition table" and point at whatever stands out most.
# Green: the truth, red: its answer.

# %%
scene, kind, colour, object_box = render_object_example(random.Random(3))
cases = [(scene, f"Locate the {kind} in the image.", object_box), (image, "Locate the nutrition table in the image.", box)]
answers = generate_texts(model, processor, [c[0] for c in cases], [c[1] for c in cases], max_new_tokens=64)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, (img, prompt, truth), answer in zip(axes, cases, answers):
    print(f"{prompt!r} -> {answer!r}")
    ax.imshow(img)
    ax.set_title(prompt, fontsize=8)
    ax.axis("off")
    for colour, found in [("tab:green", truth)] + [("tab:red", b) for _, b in parse_answer(
            answer, *img.size, family, resized_image_size(processor, family, *img.size))[:1]]:
        ax.add_patch(Rectangle(found[:2], found[2] - found[0], found[3] - found[1], fill=False, edgecolor=colour, lw=2))
plt.show()
