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
# # 01 · Dataset exploration
# What the detection recipes train on: the OpenFoodFacts nutrition-table schema, the generated
# default data, where the boxes are, how big they are, and what the model sees after resizing.

# %%
import os
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, display

from vlm_recipes.boxes import format_answer, openfoodfacts_to_xyxy, resized_size
from vlm_recipes.data.detection import load_detection_splits
from vlm_recipes.data.synthetic import make_nutrition_dataset
from vlm_recipes.evaluation.plots import plot_box_grid
from vlm_recipes.families import FAMILIES, get_family

# %matplotlib inline

FAMILY = get_family(os.environ.get("VLM_RECIPES_FAMILY", "qwen3_vl"))
OUT = ROOT / "runs" / "notebooks" / "01_dataset_exploration"
OUT.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## The raw schema
# A row as the hub dataset `openfoodfacts/nutrition-table-detection` stores it: boxes are
# `(y_min, x_min, y_max, x_max)` normalised to 0–1. The loader converts them once, in
# `boxes.py`, to the canonical `(x1, y1, x2, y2)` in pixels.

# %%
raw = make_nutrition_dataset(n_train=2, n_test=1, seed=0)
row = raw["train"][0]
print({k: v for k, v in row.items() if k != "image"})
print("canonical box:", openfoodfacts_to_xyxy(row["objects"]["bbox"][0], row["width"], row["height"]))

# %% [markdown]
# ## The generated default
# Packaging-like images with distractors (text blocks, barcodes, plain white boxes) and one
# nutrition table. Green: the true box.

# %%
data = load_detection_splits("synthetic", num_train=300, num_test=50, seed=0)
print({split: len(samples) for split, samples in data.items()})
plot_box_grid(data["train"], {}, OUT / "samples.png", num=12)
display(Image(OUT / "samples.png"))

# %%
rows = pd.DataFrame([{
    "split": split, "width": s.width, "height": s.height,
    "box_w": (s.box[2] - s.box[0]) / s.width, "box_h": (s.box[3] - s.box[1]) / s.height,
    "cx": (s.box[0] + s.box[2]) / 2 / s.width, "cy": (s.box[1] + s.box[3]) / 2 / s.height,
    "area": (s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) / (s.width * s.height),
} for split, samples in data.items() for s in samples])
rows.groupby("split")[["width", "height", "box_w", "box_h", "area"]].describe().T.round(3)

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3))
axes[0].hist([rows.width, rows.height], bins=15, label=["width", "height"])
axes[0].set(title="image side (px)")
axes[0].legend()
axes[1].hist(rows.area, bins=20)
axes[1].set(title="box area / image area")
axes[2].hist(rows.box_w / rows.box_h * rows.width / rows.height, bins=20)
axes[2].set(title="box aspect ratio (w/h)")
axes[3].hist2d(rows.cx, rows.cy, bins=8, range=[[0, 1], [0, 1]])
axes[3].set(title="box centre (relative)", ylim=(1, 0))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What the model sees
# The Qwen processor resizes every image to sides that are multiples of patch × merge
# (`smart_resize`) inside the run's pixel budget; each 2×2 group of patches becomes one LLM
# token. The answer is written in the family's own box convention.

# %%
sizes = [resized_size(s.width, s.height, FAMILY, 3136, 65536) for s in data["train"]]
tokens = [w * h // FAMILY.pixels_per_token_side ** 2 for w, h in sizes]
print(f"{FAMILY.name}: image tokens per image min {min(tokens)}, mean {sum(tokens) / len(tokens):.0f}, "
      f"max {max(tokens)}")
sample = data["train"][0]
for family in FAMILIES.values():
    resized = resized_size(sample.width, sample.height, family, 3136, 65536)
    print(f"{family.name:11s} resized {resized}: {format_answer([('nutrition table', sample.box)], sample.width, sample.height, family, resized)}")

# %% [markdown]
# ## Real data, same loader
# Parquet files in the hub schema load through the same `load_detection_splits` (here the small
# fixture the tests use; `--dataset openfoodfacts/nutrition-table-detection` reads the real one).

# %%
fixture = ROOT / "tests" / "fixtures" / "off_mini"
if fixture.is_dir():
    real = load_detection_splits(str(fixture))
    print({split: len(samples) for split, samples in real.items()})
    plot_box_grid(real["train"], {}, OUT / "fixture.png", num=4)
    display(Image(OUT / "fixture.png"))
