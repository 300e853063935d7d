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
# # vlm-recipes: the whole pipeline, step by step
#
# The interactive twin of `scripts/train_recipe.py`: every step calls the same public functions
# the CLI calls, on the embedded default (the shipped tiny Qwen3-VL base and generated
# nutrition-table images), so it runs on a laptop CPU in a few minutes.
#
# 1. the base model · 2. the data · 3. the model under each recipe · 4. preprocessing ·
# 5. training a recipe · 6. IoU evaluation · 7. retrieval (`mrl`) · 8. comparing runs · 9. export
#
# Training here is cut to a few dozen steps so the notebook stays short: the numbers show the
# mechanics, not what a recipe reaches. The full runs are `scripts/run_recipes.sh all`.
# `VLM_RECIPES_MODEL` / `VLM_RECIPES_FAMILY` point the notebook at another base (a checkpoint
# directory or a hub id).

# %%
import json
import os
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, Markdown, display

from vlm_recipes import api
from vlm_recipes.config import QuantizationConfig, available_recipes, load_recipe
from vlm_recipes.data.chat import IGNORE_INDEX, encode_for_training, prompt_text
from vlm_recipes.data.detection import load_detection_splits
from vlm_recipes.evaluation.answers import detection_table, set_table
from vlm_recipes.evaluation.detection import box_iou, detection_metrics
from vlm_recipes.evaluation.generation import predict_boxes
from vlm_recipes.evaluation.leaderboard import leaderboard_for, plot_leaderboard, to_markdown
from vlm_recipes.evaluation.plots import plot_box_grid
from vlm_recipes.models.export import merge_adapter
from vlm_recipes.models.loading import load_model, load_processor, open_base, stage_reports
from vlm_recipes.models.tiny import build_tiny
from vlm_recipes.objectives.grounding import answer_for
from vlm_recipes.training.run import run_recipe

# %matplotlib inline

MODEL = os.environ.get("VLM_RECIPES_MODEL", "tiny")  # "tiny" = the shipped pretrained base
FAMILY = os.environ.get("VLM_RECIPES_FAMILY", "qwen3_vl")
BASE = [f"model.name_or_path={MODEL}", f"model.family={FAMILY}"]
RUNS = ROOT / "runs" / "notebooks" / "main_pipeline"
# a short run: 40 steps of 8 images, validated every 10 steps on 8 images, 16 test images
QUICK = BASE + ["train.max_steps=40", "data.num_train=320", "data.num_test=16", "eval.num_plot=8",
                "train.eval_steps=10", "data.num_val=8"]

# %% [markdown]
# ## 1. The base model
# A recipe names its base in `model`: `tiny` resolves to the checkpoint shipped in
# `src/vlm_recipes/assets/`, built with `vlm_recipes.models.tiny` and pretrained on generic
# grounding and naming of one object per scene (never on nutrition tables). It loads through
# `from_pretrained` like a hub model.

# %%
recipe = load_recipe("r4-joint", QUICK)
base = open_base(recipe.model)
base_path, processor, family = base.path, base.processor, base.family
base_model = load_model(base_path, recipe.model, QuantizationConfig(), "cpu")
print(f"base: {base_path}\nfamily: {family}\nclass: {type(base_model).__name__}, "
      f"{sum(p.numel() for p in base_model.parameters()):,} parameters")

# the same architecture, randomly initialised: what scripts/build_base_model.py starts from
random_model, _ = build_tiny(family, recipe.model.min_pixels, recipe.model.max_pixels, seed=0)
print(f"build_tiny: {type(random_model).__name__}, {sum(p.numel() for p in random_model.parameters()):,} parameters")
del random_model

# %% [markdown]
# ## 2. The data
# `data.dataset: synthetic` generates packaging images with one nutrition table each, in the
# OpenFoodFacts schema; the loader turns every row into an image and one canonical
# `(x1, y1, x2, y2)` pixel box.

# %%
data = load_detection_splits("synthetic", num_train=recipe.data.num_train, num_test=recipe.data.num_test,
                             seed=recipe.seed)
print({split: len(samples) for split, samples in data.items()})
RUNS.mkdir(parents=True, exist_ok=True)
plot_box_grid(data["train"], {}, RUNS / "samples.png", num=8)
display(Image(RUNS / "samples.png"))

# %%
train = data["train"]
rel_w = [(s.box[2] - s.box[0]) / s.width for s in train]
rel_h = [(s.box[3] - s.box[1]) / s.height for s in train]
cx = [(s.box[0] + s.box[2]) / 2 / s.width for s in train]
cy = [(s.box[1] + s.box[3]) / 2 / s.height for s in train]
fig, axes = plt.subplots(1, 3, figsize=(12, 3))
axes[0].hist(rel_w, bins=20, alpha=0.6, label="width")
axes[0].hist(rel_h, bins=20, alpha=0.6, label="height")
axes[0].set(title="box size / image size")
axes[0].legend()
axes[1].hist([s.width * s.height / 1000 for s in train], bins=20)
axes[1].set(title="image area (kpx)")
axes[2].scatter(cx, cy, s=6)
axes[2].set(xlim=(0, 1), ylim=(1, 0), title="box centres (relative)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The model under each recipe
# Parameters fall in three parts: the vision tower, the merger (vision → LLM bridge) and the LLM.
# `stage_reports` applies each stage to the base (`apply_stage`: freeze parts, add LoRA) and counts
# (`trainable_report`) what then trains and what is stored in 4-bit.

# %%
rows = []
for name in available_recipes():
    cfg = load_recipe(name, BASE)
    for stage, report in stage_reports(cfg, base_path):
        rows.append({"recipe": name, "stage": stage.name, "objective": cfg.objective.name,
                     **{f"trainable {p}": report.trainable[p] for p in report.total},
                     **{f"4-bit {p}": report.quantized[p] for p in report.total},
                     "LoRA modules": len(report.lora_modules)})
print("total per part:", report.total)
pd.DataFrame(rows)

# %% [markdown]
# ## 4. Preprocessing
# The prompt goes through the family's chat template; the image becomes `<|image_pad|>` tokens
# (one per 2×2 merged patches); only the answer and the `<|im_end|>` closing it carry loss.

# %%
sample = data["train"][0]
answer = answer_for(sample, family, recipe.data.label, processor)
print(prompt_text(processor, recipe.data.prompt) + answer)
batch = encode_for_training(processor, [sample.image], [recipe.data.prompt], [answer])
ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
print(f"{len(ids)} tokens, {ids.count(image_pad)} image tokens (grid {batch['image_grid_thw'][0].tolist()}), "
      f"{sum(label != IGNORE_INDEX for label in labels)} carry loss")

# %%
# the conversation after the image, token by token: the label is the token itself where it
# carries loss, -100 (ignored) elsewhere
start = len(ids) - ids[::-1].index(image_pad)  # first token after the image
pd.set_option("display.max_rows", 200)
pd.DataFrame({"token": [processor.tokenizer.decode([i]) for i in ids[start:]], "id": ids[start:],
              "label": labels[start:]}, index=range(start, len(ids))).rename_axis("position")

# %% [markdown]
# ## 5. Train a recipe
# `run_recipe` is what the CLI runs: evaluate the base, train each stage with the shared
# Trainer, evaluate the result, write the run directory. Here `r4-joint` (4-bit base + LoRA on
# vision and LLM), cut to 40 steps.

# %%
r4_dir = RUNS / "r4-joint"
r4 = run_recipe(recipe, r4_dir, device="cpu")  # RunResult: run_dir, metrics (metrics.json), summary
r4_metrics = r4.metrics
display(Markdown(r4.summary))
display(Image(r4_dir / "loss.png"))

# %% [markdown]
# While it trained, the run scored the task metric on a validation split carved from the
# training rows (`data.num_val`, never the test split) every `train.eval_steps` steps and at the
# stage's end: `eval_history.json` holds the points, `metrics.json` the best step
# (`train.load_best_at_end=true` would end the stage on that checkpoint).

# %%
print(r4_metrics["best"])
display(Image(r4_dir / "val_curve.png"))

# %% [markdown]
# ## 6. IoU evaluation
# Each answer is parsed into a box and scored by IoU with the true box (an unparseable answer
# scores 0). Green: the true box; red: the base; blue: the fine-tuned model.

# %%
predictions = json.loads((r4_dir / "predictions.json").read_text())
test = data["test"]
boxes = {name: [p["predicted"] for p in predictions[key]] for name, key in [("base", "base"), ("fine-tuned", "finetuned")]}
plot_box_grid(test, boxes, RUNS / "iou_grid.png", num=8)
display(Image(RUNS / "iou_grid.png"))
ious = {name: [box_iou(b, s.box) if b else 0.0 for b, s in zip(bs, test)] for name, bs in boxes.items()}
plt.figure(figsize=(6, 3))
plt.hist(list(ious.values()), bins=10, range=(0, 1), label=list(ious))
plt.xlabel("IoU per test image")
plt.legend()
plt.show()
print(detection_table([(name, detection_metrics(bs, [s.box for s in test])) for name, bs in boxes.items()]))

# %% [markdown]
# ### Several objects, and none
# A grounding sample holds an image, a question and zero or more objects. `synthetic-multi` asks
# for every object of one category (0-4 nutrition tables, barcodes, stars; about a quarter of the
# questions ask for one the image lacks, whose answer is `[]`). A set is scored after a one-to-one
# Hungarian matching of predicted to true boxes per image: precision, recall and F1 at IoU 0.5,
# mAP per category, and on images without the object the fraction answered empty. The r4 model
# above learned one table per image, so it answers one box here; `r4-joint --dataset
# synthetic-multi` trains the sets (README, "Grounding beyond one box").

# %%
multi_report = api.evaluate(r4_dir / "model", "synthetic-multi[test:8]", out_dir=RUNS / "multi-eval")
multi_rows = json.loads((RUNS / "multi-eval" / "predictions.json").read_text())
multi_test = load_detection_splits("synthetic-multi", num_train=1, num_test=8)["test"]
for sample, row in list(zip(multi_test, multi_rows))[:4]:
    print(f"{sample.prompt!r}: {len(sample.objects)} true, answered {row['text']!r}")
plot_box_grid(multi_test, {"r4-joint": [row["predicted"] for row in multi_rows]}, RUNS / "multi_grid.png", num=8)
display(Image(RUNS / "multi_grid.png"))
print(set_table([("r4-joint (one table per image)", multi_report["metrics"])]))

# %% [markdown]
# ## 7. Retrieval: the `mrl` recipe
# The same VLM trained as a text↔image embedding model with a Matryoshka InfoNCE loss: the first
# 16, 32, 64 dims of an embedding are usable on their own. Recall@1 against the dimension shows
# how much a prefix keeps.

# %%
from vlm_recipes.evaluation.retrieval import plot_recall_vs_dim

mrl_recipe = load_recipe("mrl", BASE + ["train.max_steps=15", "data.num_train=240", "data.num_test=64",
                                        "train.per_device_train_batch_size=16"])
mrl_dir = RUNS / "mrl"
mrl_metrics = run_recipe(mrl_recipe, mrl_dir, device="cpu").metrics
recall = {f"{model} {direction}": {int(d): v["recall@1"] for d, v in mrl_metrics[model][direction].items()}
          for model in ("base", "finetuned") for direction in ("t2i", "i2t")}
display(pd.DataFrame(recall).rename_axis("dim"))
plot_recall_vs_dim(mrl_metrics, RUNS / "recall_vs_dim.png")
display(Image(RUNS / "recall_vs_dim.png"))

# %% [markdown]
# ## 8. Comparing runs
# `scripts/compare_runs.py RUN_DIR...` (and `scripts/run_recipes.sh` after a sweep) builds this
# leaderboard from the runs' `metrics.json`; retrieval runs get their own table.

# %%
board = leaderboard_for([r4_dir, mrl_dir])
display(Markdown(to_markdown(board)))
plot_leaderboard(board, RUNS / "leaderboard.png")
display(Image(RUNS / "leaderboard.png"))

# %% [markdown]
# ## 9. Export
# `merge_adapter` reloads the base UNQUANTIZED (merging into 4-bit weights would lose the
# adapter), merges the LoRA, saves a plain checkpoint with the run's processor, and checks that
# the merge changed the outputs and that the saved copy reloads to the same ones. The merged
# model then predicts like any checkpoint. It can differ a little from the run's fine-tuned
# row: the run evaluated the adapter on the 4-bit base, the merged model has full-precision
# base weights.

# %%
export = merge_adapter(r4_dir, r4_dir / "merged")
print(export)
merged = load_model(str(export.path), recipe.model, QuantizationConfig(), "cpu")
merged_processor = load_processor(str(export.path), recipe.model)
merged_boxes, texts, _ = predict_boxes(merged, merged_processor, family, test, recipe.data.prompt,
                                       batch_size=16, max_new_tokens=recipe.eval.max_new_tokens, desc="merged")
print("first answer:", texts[0])
print(detection_table([("fine-tuned (4-bit base + adapter)", r4_metrics["finetuned"]),
                       ("merged (full-precision)", detection_metrics(merged_boxes, [s.box for s in test]))]))
