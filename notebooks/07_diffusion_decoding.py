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
# # 07 · Diffusion decoding (`diffusion`)
# The `diffusion` recipe fine-tunes the language model as a masked-diffusion model (MDLM /
# LLaDA): training masks each answer token with probability t and learns to restore them;
# decoding starts from a canvas of `<|mask|>` tokens and commits a few predictions per step.

# %%
import os
import time
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())

import pandas as pd
import torch
from IPython.display import Markdown, display

from vlm_recipes.config import load_recipe
from vlm_recipes.data.detection import load_detection_splits
from vlm_recipes.models.loading import open_base
from vlm_recipes.objectives.grounding import answer_for
from vlm_recipes.training.run import run_recipe

BASE = [f"model.name_or_path={os.environ.get('VLM_RECIPES_MODEL', 'tiny')}",
        f"model.family={os.environ.get('VLM_RECIPES_FAMILY', 'qwen3_vl')}"]
OUT = ROOT / "runs" / "notebooks" / "07_diffusion_decoding"
recipe = load_recipe("r4-joint", BASE)  # any detection recipe: only its model and prompt are used here
base = open_base(recipe.model)
processor, family = base.processor, base.family
tokenizer = processor.tokenizer
sample = load_detection_splits("synthetic", num_train=1, num_test=1)["test"][0]
answer = answer_for(sample, family, recipe.data.label, processor)


def show(ids) -> str:
    """Token ids as text, a mask shown as _."""
    return "".join("_" if t == tokenizer.convert_tokens_to_ids("<|mask|>") else tokenizer.decode([t]) for t in ids)


# %% [markdown]
# ## The forward process: masking with probability t

# %%
from vlm_recipes.objectives.mdlm import mask_tokens

ids = torch.tensor([tokenizer(answer, add_special_tokens=False)["input_ids"]])  # (1, L)
mask_id = tokenizer.convert_tokens_to_ids("<|mask|>")
generator = torch.Generator().manual_seed(0)
for t in (0.1, 0.5, 0.9):
    noisy, masked = mask_tokens(ids, torch.ones_like(ids, dtype=torch.bool), torch.tensor([t]), mask_id, generator)
    print(f"t={t}: {masked.float().mean():.2f} masked  {show(noisy[0].tolist())}")

# %% [markdown]
# ## The reverse process, step by step
# `unmask` with a stand-in predictor that always proposes the true answer but is more sure of
# some positions than others: `low_confidence` commits the surest first and re-masks the rest,
# `random` commits random positions, and block-wise decoding finishes each block before the next.

# %%
from vlm_recipes.evaluation.diffusion_decoding import unmask

# the answer filled with <|im_end|> to a multiple of 8 tokens, as the recipe's canvas is filled
target = torch.cat([ids[0], torch.full((-len(ids[0]) % 8,), tokenizer.eos_token_id)])
confidence = torch.rand(len(target), generator=torch.Generator().manual_seed(1)) * 5  # (L,)

def predict(canvas):  # (1, L) -> logits (1, L, vocab): the true token, with its confidence
    logits = torch.zeros(1, len(target), len(tokenizer))
    logits[0, torch.arange(len(target)), target] = confidence
    return logits

steps = 8
for remasking, block in (("low_confidence", len(target)), ("random", len(target)), ("low_confidence", len(target) // 2)):
    print(f"--- remasking={remasking}, block_length={block}")
    unmask(predict, torch.full((1, len(target)), mask_id), mask_id, steps, block, remasking,
           generator=torch.Generator().manual_seed(0), on_step=lambda c: print(show(c[0].tolist())))

# %% [markdown]
# ## A short diffusion run, then decoding budgets
# Fine-tune briefly, merge the LoRA (`load_merged`), and decode the test images with fewer
# steps than canvas tokens: fewer model calls, more tokens committed per call.

# %%
from vlm_recipes.evaluation.answers import score_answers
from vlm_recipes.evaluation.diffusion_decoding import diffusion_generate
from vlm_recipes.models.export import load_merged
from vlm_recipes.objectives.mdlm import as_chat

# data.num_val=0: no validation during this short run (24 more answers decoded by unmasking, 3x its 8 test ones)
diffusion = load_recipe("diffusion", BASE + ["train.max_steps=30", "data.num_train=240", "data.num_test=8",
                                             "data.num_val=0"])
run_dir = OUT / "diffusion"
display(Markdown(run_recipe(diffusion, run_dir, device="cpu").summary))

# %%
model, merged_processor, _ = load_merged(run_dir)
test = load_detection_splits("synthetic", num_train=1, num_test=8, seed=diffusion.seed)["test"]
chats = [as_chat(s, family, diffusion.data, merged_processor) for s in test]
options = diffusion.objective.options  # the recipe's canvas, remasking and logit alignment
canvas = options.canvas_length
rows = []
for steps in (canvas, canvas // 4, canvas // 16):
    start = time.time()
    texts, scores = diffusion_generate(model, merged_processor, chats, canvas, steps, canvas, options.remasking,
                                       options.temperature, shift_logits=options.shift_logits)
    metrics = score_answers(test, texts, scores, family, merged_processor).metrics
    rows.append({"steps": steps, "tokens per step": canvas // steps, "seconds": round(time.time() - start, 2),
                 "mean IoU": metrics["mean_iou"], "detection rate": metrics["detection_rate"],
                 "first answer": texts[0]})
display(pd.DataFrame(rows))
