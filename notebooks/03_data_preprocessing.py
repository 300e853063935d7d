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
# # 03 · Data preprocessing
# From (image, prompt, box) to a training batch: the chat template, the image tokens, the label
# mask (only the answer carries loss), padding, and why nothing is ever truncated.

# %%
import os
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

import pandas as pd

from vlm_recipes.boxes import resized_size
from vlm_recipes.config import load_recipe
from vlm_recipes.data.chat import IGNORE_INDEX, encode_for_training, prompt_text
from vlm_recipes.data.detection import load_detection_splits
from vlm_recipes.errors import InputError
from vlm_recipes.models.loading import open_base
from vlm_recipes.objectives.grounding import answer_for

recipe = load_recipe("r4-joint", [f"model.name_or_path={os.environ.get('VLM_RECIPES_MODEL', 'tiny')}",
                                  f"model.family={os.environ.get('VLM_RECIPES_FAMILY', 'qwen3_vl')}"])
base = open_base(recipe.model)
processor, family = base.processor, base.family
tokenizer = processor.tokenizer
samples = load_detection_splits("synthetic", num_train=4, num_test=1)["train"]
answers = [answer_for(s, family, recipe.data.label, processor) for s in samples]

# %% [markdown]
# ## The chat template
# The prompt text ends where the assistant's answer starts; the one `<|image_pad|>` in it is
# expanded by the processor to the image's token count.

# %%
print(prompt_text(processor, recipe.data.prompt) + answers[0] + tokenizer.eos_token)

# %% [markdown]
# ## The label mask, token by token
# `labels` is the token id where the model is trained to predict it, and -100 (ignored by the
# loss) everywhere else: system, user, image tokens and padding.

# %%
batch = encode_for_training(processor, [samples[0].image], [recipe.data.prompt], [answers[0]])
ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
rows, collapsed = [], 0
for position, (token_id, label) in enumerate(zip(ids, labels)):
    if token_id == image_pad:
        collapsed += 1
        continue
    if collapsed:
        rows.append({"position": f"{position - collapsed}..{position - 1}", "token": f"<|image_pad|> x {collapsed}",
                     "label": IGNORE_INDEX})
        collapsed = 0
    rows.append({"position": position, "token": tokenizer.decode([token_id]), "label": label})
pd.set_option("display.max_rows", 200)
pd.DataFrame(rows).set_index("position")

# %%
supervised = [t for t, label in zip(ids, labels) if label != IGNORE_INDEX]
print(f"{len(supervised)} of {len(ids)} tokens carry loss: {tokenizer.decode(supervised)!r}")
assert tokenizer.decode(supervised) == answers[0] + tokenizer.eos_token

# %% [markdown]
# `objective.options.loss_on=all` trains on every text token instead (never on image tokens):

# %%
every = encode_for_training(processor, [samples[0].image], [recipe.data.prompt], [answers[0]], loss_on="all")
print(f"loss_on=all: {(every['labels'][0] != IGNORE_INDEX).sum().item()} tokens carry loss, "
      f"of which image tokens: {((every['labels'][0] == image_pad)).sum().item()}")

# %% [markdown]
# ## A padded batch
# Training batches are right-padded; padding is ignored by attention and loss.

# %%
batch = encode_for_training(processor, [s.image for s in samples], [recipe.data.prompt] * 4, answers)
pd.DataFrame({"image": [s.image.size for s in samples],
              "image tokens": (batch["image_grid_thw"].prod(-1) // processor.image_processor.merge_size ** 2).tolist(),
              "real tokens": batch["attention_mask"].sum(1).tolist(),
              "padded length": [batch["input_ids"].shape[1]] * 4,
              "tokens with loss": (batch["labels"] != IGNORE_INDEX).sum(1).tolist()})

# %% [markdown]
# ## Never truncated
# Cutting a sequence could cut the image span and break the model's image-token count; a sample
# longer than `max_length` is an error that says what to change.

# %%
try:
    encode_for_training(processor, [samples[0].image], [recipe.data.prompt], [answers[0]], max_length=32)
except InputError as err:
    print("InputError:", err)

# %% [markdown]
# ## The pixel budget decides the token count
# `model.min_pixels` / `model.max_pixels` (saved with each run, reused at evaluation) bound the
# resized image, hence the number of image tokens and the sequence length. Small images are
# only rounded to the token grid; a real photo is shrunk to the budget.

# %%
side = family.pixels_per_token_side
rows = []
for name, (w, h) in [("this sample", samples[0].image.size), ("a 1024x768 photo", (1024, 768))]:
    for budget in (16384, 65536, 262144):
        rw, rh = resized_size(w, h, family, recipe.model.min_pixels, budget)
        rows.append({"image": name, "max_pixels": budget, "resized (w, h)": (rw, rh), "image tokens": rw * rh // side ** 2})
pd.DataFrame(rows)
