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
# # 06 · Matryoshka retrieval (`mrl`)
# The VLM as a text↔image embedding model: the last token's hidden state is the embedding;
# a symmetric InfoNCE loss summed over nested prefixes (16, 32, 64, 128 dims for the tiny base)
# makes short prefixes usable alone. The data needs composition: "two red circles on the left
# and a blue star on the right", with hard negatives that change exactly one attribute.

# %%
import os
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Image, Markdown, display

from vlm_recipes.config import load_recipe
from vlm_recipes.training.run import run_recipe

# %matplotlib inline

BASE = [f"model.name_or_path={os.environ.get('VLM_RECIPES_MODEL', 'tiny')}",
        f"model.family={os.environ.get('VLM_RECIPES_FAMILY', 'qwen3_vl')}"]
OUT = ROOT / "runs" / "notebooks" / "06_matryoshka_retrieval"

# %% [markdown]
# ## The data: captions, targets, hard negatives

# %%
from vlm_recipes.data.retrieval import load_retrieval_splits

data = load_retrieval_splits("synthetic", num_train=8, num_test=32, seed=0, num_hard_negatives=2)
samples = [data["train"][i] for i in range(3)]
fig, axes = plt.subplots(3, 3, figsize=(8, 5))
for index, (row, sample) in enumerate(zip(axes, samples), 1):
    print(f"{index}: {sample.query}")
    for ax, (title, target) in zip(row, [("target", sample.target)] + [("hard negative", n) for n in sample.hard_negatives]):
        ax.imshow(target.image)
        ax.set_title(f"{index}: {title}", fontsize=8)
        ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Embedding with the base model
# Queries get one instruction, image targets another; embeddings are L2-normalised, and a
# Matryoshka prefix is the first `dim` coordinates re-normalised (`truncate`).

# %%
from vlm_recipes.config import QuantizationConfig
from vlm_recipes.evaluation.retrieval import metrics_by_dim
from vlm_recipes.models.embedding import default_dims, encode_images, encode_texts, hidden_size, truncate
from vlm_recipes.models.loading import load_model, open_base

recipe = load_recipe("mrl", BASE)
opened = open_base(recipe.model)  # path, processor (pixel budget), family
processor = opened.processor
base = load_model(opened.path, recipe.model, QuantizationConfig(), "cpu")
test = data["test"]
queries = encode_texts(base, processor, [s.query for s in test])  # (32, hidden)
gallery = encode_images(base, processor, [s.target.image for s in test])  # (32, hidden)
dims = default_dims(hidden_size(base))
print(f"embeddings {tuple(queries.shape)}, dims {dims}; norms of a 16-dim prefix before/after "
      f"re-normalising: {queries[0, :16].norm():.3f} / {truncate(queries, 16)[0].norm():.3f}")
by_dim = metrics_by_dim(queries, gallery, torch.eye(len(test), dtype=torch.bool), dims)
display(pd.DataFrame({d: m["recall@1"] for d, m in by_dim["t2i"].items()}, index=["base t2i Recall@1"]))
plt.imshow(queries @ gallery.T, cmap="viridis")
plt.title("base: query x image cosine (diagonal = the right pairs)", fontsize=9)
plt.colorbar()
plt.show()

# %% [markdown]
# ## A short `mrl` run
# 20 contrastive steps with 16 queries per batch (each with a hard negative), then Recall@1
# per dim on the test gallery, base vs fine-tuned. The full recipe trains 750 steps of 32
# (vision tower frozen, merger and LLM trained; README has its figures).

# %%
recipe = load_recipe("mrl", BASE + ["train.max_steps=20", "data.num_train=320", "data.num_test=64",
                                    "train.per_device_train_batch_size=16"])
run_dir = OUT / "mrl"
result = run_recipe(recipe, run_dir, device="cpu")
metrics = result.metrics
display(Markdown(result.summary))
display(Image(run_dir / "recall_vs_dim.png"))
display(Image(run_dir / "retrievals.png"))
