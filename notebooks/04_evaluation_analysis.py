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
# # 04 · Evaluation analysis
# What the detection metrics mean on hand-made cases, then a short `r1-llm-only` run (QLoRA
# on the language model) analysed image by image: IoU per image, base vs fine-tuned, against
# box size, and the worst answers.

# %%
import json
import os
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, Markdown, display

from vlm_recipes.config import load_recipe
from vlm_recipes.data.detection import load_detection_splits
from vlm_recipes.evaluation.detection import box_iou, detection_metrics
from vlm_recipes.evaluation.plots import plot_box_grid
from vlm_recipes.training.run import run_recipe

# %matplotlib inline

BASE = [f"model.name_or_path={os.environ.get('VLM_RECIPES_MODEL', 'tiny')}",
        f"model.family={os.environ.get('VLM_RECIPES_FAMILY', 'qwen3_vl')}"]
OUT = ROOT / "runs" / "notebooks" / "04_evaluation_analysis"

# %% [markdown]
# ## The metrics on hand-made cases
# One true box per image; a prediction is a box or None (no parseable answer, IoU 0).

# %%
truth = (10.0, 10.0, 50.0, 50.0)
cases = {"exact": truth, "shifted by half": (30.0, 10.0, 70.0, 50.0), "inside, quarter area": (10.0, 10.0, 30.0, 30.0),
         "no overlap": (60.0, 60.0, 90.0, 90.0), "no answer": None}
pd.DataFrame([{"prediction": name, "IoU": 0.0 if box is None else box_iou(box, truth)} for name, box in cases.items()])

# %%
metrics = detection_metrics(list(cases.values()), [truth] * len(cases))
pd.Series(metrics).round(3)

# %% [markdown]
# AP ranks detections by confidence: the same boxes score a higher AP when the good ones are
# the confident ones.

# %%
good_first = detection_metrics(list(cases.values()), [truth] * 5, scores=[0.9, 0.8, 0.3, 0.2, 0.1])["ap50"]
bad_first = detection_metrics(list(cases.values()), [truth] * 5, scores=[0.1, 0.2, 0.8, 0.9, 0.5])["ap50"]
print(f"AP50 with the right box most confident: {good_first:.3f}; least confident: {bad_first:.3f}")

# %% [markdown]
# ## A short run, image by image

# %%
# data.num_val=0: no validation during this short run (it would add ~30 generated answers)
recipe = load_recipe("r1-llm-only", BASE + ["train.max_steps=60", "data.num_train=320", "data.num_test=24",
                                           "data.num_val=0"])
run_dir = OUT / recipe.name
display(Markdown(run_recipe(recipe, run_dir, device="cpu").summary))

# %%
test = load_detection_splits("synthetic", num_train=1, num_test=recipe.data.num_test, seed=recipe.seed)["test"]
predictions = json.loads((run_dir / "predictions.json").read_text())
table = pd.DataFrame([{
    "image": s.image_id, "box area": (s.box[2] - s.box[0]) * (s.box[3] - s.box[1]) / (s.width * s.height),
    **{f"{k} IoU": box_iou(p[k]["predicted"], s.box) if p[k]["predicted"] else 0.0 for k in ("base", "finetuned")},
    "fine-tuned answer": p["finetuned"]["text"], "confidence": p["finetuned"]["score"],
} for s, p in zip(test, [dict(base=b, finetuned=f) for b, f in zip(predictions["base"], predictions["finetuned"])])])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
axes[0].scatter(table["base IoU"], table["finetuned IoU"])
axes[0].plot([0, 1], [0, 1], "k--", lw=1)
axes[0].set(xlabel="base IoU", ylabel="fine-tuned IoU", title="per image (above the line: improved)")
axes[1].scatter(table["box area"], table["finetuned IoU"], c=table["confidence"], cmap="viridis")
axes[1].set(xlabel="box area / image area", ylabel="fine-tuned IoU", title="IoU vs box size (colour: confidence)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The worst fine-tuned answers, with their raw text (green: truth, red: fine-tuned):

# %%
worst = table.sort_values("finetuned IoU").index[:4].tolist()
plot_box_grid([test[i] for i in worst], {"fine-tuned": [predictions["finetuned"][i]["predicted"] for i in worst]},
              OUT / "worst.png", num=4)
display(Image(OUT / "worst.png"))
table.loc[worst, ["image", "finetuned IoU", "confidence", "fine-tuned answer"]]
