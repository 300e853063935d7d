"""Using a trained model: open it, predict boxes, score it on any split, export it.

    from vlm_recipes import api
    rows = api.predict("runs/r4-joint/model", ["photo.jpg", "photos/"])   # one dict per image
    report = api.evaluate("runs/r4-joint/model", "openfoodfacts/nutrition-table-detection")
    result = api.export("runs/r4-joint/model", "runs/r4-joint/merged")     # LoRA -> plain checkpoint
    model, processor, family, recipe = api.open_trained("runs/r4-joint/merged")

A model is a run's `model/` (or the run directory): a LoRA adapter, or full weights (r2); a
checkpoint written by `export` (it carries the run's recipe as `recipe.yaml`); or any base
model: a checkpoint directory, a hub id or "tiny". A run's model is opened as the run evaluated
it: the run's config.yaml supplies the model settings (pixel budget, dtype), the objective and its
prompt, and an adapter is put on its base quantized as the run's LAST stage was, so predictions
and metrics reproduce the run's own exactly. `quantized=False` instead merges the adapter into
the full-precision base: the very weights `export` saves.

Every bad input (a missing model, an unreadable image, an unwritable output directory, ...) is an
InputError with a one-line message, raised before any weights load.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

import yaml

from .boxes import reported_box, xyxy_to_openfoodfacts
from .config import ModelConfig, QuantizationConfig, RecipeConfig, from_dict, load_recipe, to_dict
from .data.chat import user_messages
from .data.messages import ChatSample
from .data.sources import image_files, open_image
from .errors import InputError
from .evaluation.generation import answer_boxes
from .models.export import ExportResult, adapter_dir_of, merge_adapter
from .models.loading import (
    MODEL_FIX,
    check_device,
    check_model_files,
    load_model,
    load_processor,
    model_family,
    open_base,
    peft_quietly,
)
from .objectives import build_objective
from .readers import read_json, read_text

DEFAULT_RECIPE = "r4-joint"
"""The recipe whose objective and prompt apply to a model that has none (a base model)."""
RECIPE_FILE = "recipe.yaml"
"""Written by `export` into the checkpoint: the run's recipe travels with its merged weights."""
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class Trained(NamedTuple):
    model: object
    processor: object
    family: object
    recipe: RecipeConfig | None
    """The recipe the model was trained with; None for a base model."""


@dataclass(frozen=True)
class _Located:
    """A model found and checked, its processor and family read; no weights loaded yet."""
    weights: str
    """The checkpoint to load: the model itself, or the base of an adapter."""
    adapter: Path | None
    recipe: RecipeConfig | None
    processor: object
    family: object


# --- opening ------------------------------------------------------------------------------------

def open_trained(model_dir: str | Path, device: str = "cpu", quantized: bool | None = None) -> Trained:
    """(model in eval mode, processor, family, recipe or None). `quantized`: None = as the run's
    last stage for an adapter (reproduces the run's evaluation), full precision otherwise."""
    check_device(device, "device")
    located = _locate(model_dir)
    objective = build_objective(located.recipe, located.processor, located.family) if located.recipe else None
    return Trained(_load(located, device, quantized, objective), located.processor, located.family, located.recipe)


def _locate(model_dir: str | Path) -> _Located:
    where = _model_path(model_dir)
    if isinstance(where, str):  # "tiny" or a hub id
        base = open_base(ModelConfig(name_or_path=where))
        return _Located(base.path, None, None, base.processor, base.family)
    recipe = _recipe_of(where)
    cfg = recipe.model if recipe else ModelConfig()
    if (where / "adapter_config.json").is_file():
        check_model_files(where)
        base = base_of_adapter(where)
        # the run's own processor, saved with the adapter (mdlm adds <|mask|> to its tokenizer)
        return _Located(base, where, recipe, load_processor(str(where), cfg), model_family(base, cfg))
    base = open_base(replace(cfg, name_or_path=str(where)))
    return _Located(base.path, None, recipe, base.processor, base.family)


def _model_path(model_dir: str | Path) -> Path | str:
    """A local model directory (a run directory means its model/), or "tiny" / a hub id as given."""
    path = Path(model_dir)
    if path.is_dir():
        if not _holds_model(path) and _holds_model(path / "model"):
            path = path / "model"
        if not _holds_model(path):
            raise InputError(f"{model_dir} holds no model (config.json) or LoRA adapter (adapter_config.json): pass "
                             "a run's model/ directory, a checkpoint directory, a hub id or 'tiny'")
        return path
    name = str(model_dir)
    # "runs/x" is a hub id by its shape, but a local path when its first part exists here
    if name == "tiny" or (_HUB_ID.match(name) and not Path(name.split("/")[0]).exists()):
        return name
    kind = "is a file, not a model directory" if path.exists() else "does not exist"
    raise InputError(f"model {model_dir} {kind}: pass a run's model/ directory, a checkpoint directory, "
                     "a hub id or 'tiny'")


def _holds_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "adapter_config.json").is_file()


def _recipe_of(path: Path) -> RecipeConfig | None:
    """The recipe `path` was trained with: an export's recipe.yaml, else its run's config.yaml
    (the resolved recipe, next to model/); None for a plain checkpoint."""
    for config in (path / RECIPE_FILE, path.parent / "config.yaml"):
        if config.is_file():
            text = read_text(config, "repair it, or pass the model directory without its run")
            try:
                return from_dict(RecipeConfig, yaml.safe_load(text), "")
            except (InputError, yaml.YAMLError) as err:
                raise InputError(f"{config} is not a vlm-recipes recipe ({err})".replace("\n", " ")) from None
    return None


def _load(located: _Located, device: str, quantized: bool | None, objective):
    cfg = located.recipe.model if located.recipe else ModelConfig()  # dtype, attention
    quantization = _quantization(located, quantized)
    model = load_model(located.weights, cfg, quantization, device)
    if objective is not None:
        model = objective.prepare_model(model)  # e.g. mdlm's mask token, before the adapter loads
    if located.adapter is not None:
        from peft import PeftModel

        with peft_quietly():
            model = PeftModel.from_pretrained(model, str(located.adapter))
        if not quantization.load_in_4bit:
            model = model.merge_and_unload()  # what export saves; a LoRA cannot merge into 4-bit weights
    return model.eval()


def _quantization(located: _Located, quantized: bool | None) -> QuantizationConfig:
    last = located.recipe.stages[-1].quantization if located.recipe else QuantizationConfig()
    if quantized is None:
        # only an adapter still sits on the base it trained against; full weights are the trained weights
        quantized = located.adapter is not None and last.load_in_4bit
    if not quantized:
        return QuantizationConfig()
    return last if last.load_in_4bit else QuantizationConfig(load_in_4bit=True)


# --- predicting ---------------------------------------------------------------------------------

def predict(model_dir: str | Path, images, *, prompt: str | None = None, label: str | None = None,
            batch_size: int = 16, max_new_tokens: int | None = None, device: str = "cpu",
            quantized: bool | None = None) -> list[dict]:
    """One dict per image: image (its path), boxes (every box of the answer, in its order: a list of
    {"label", "box", "box_normalized_off"}, empty when the answer names none), box (the first box:
    x1, y1, x2, y2 pixels of the upright image, or None), box_normalized_off (OpenFoodFacts (y_min,
    x_min, y_max, x_max) in 0-1, or None), label (`label` when a box was found), confidence (mean
    token probability), answer (the raw text).
    `images`: image files and/or directories (searched recursively). `prompt`/`label` default to
    the run's recipe, else the DataConfig defaults; decoding is the objective's own (greedy, or
    mdlm's unmasking). `quantized` as in `open_trained`."""
    if batch_size < 1:
        raise InputError(f"batch size {batch_size}: must be >= 1")
    check_device(device)
    paths = image_files(images)
    pictures = [open_image(p) for p in paths]
    located = _locate(model_dir)
    recipe = _predict_recipe(located.recipe, prompt, label, batch_size, max_new_tokens)
    objective = build_objective(recipe, located.processor, located.family)
    evaluator = objective.evaluator()
    if not hasattr(evaluator, "generate"):
        raise InputError(f"{model_dir} is a {recipe.objective.name} model: it embeds, it does not answer; "
                         "use `vlm-recipes encode`")
    model = _load(located, device, quantized, objective)
    texts, scores = evaluator.generate(model, _unlabelled(objective, pictures, paths, recipe.data.prompt), "predicting")
    return [_prediction(path, image, text, score, recipe.data.label, located)
            for path, image, text, score in zip(paths, pictures, texts, scores)]


def _predict_recipe(recipe: RecipeConfig | None, prompt, label, batch_size: int, max_new_tokens) -> RecipeConfig:
    recipe = recipe or load_recipe(DEFAULT_RECIPE)
    data = replace(recipe.data, prompt=prompt or recipe.data.prompt, label=label or recipe.data.label)
    settings = replace(recipe.eval, batch_size=batch_size, max_new_tokens=max_new_tokens or recipe.eval.max_new_tokens)
    return replace(recipe, data=data, eval=settings)


def _unlabelled(objective, pictures, paths, prompt: str) -> list:
    """Samples without a reference answer, as the objective's decoder reads them: a conversation
    for chat objectives (mdlm), else anything with `.image`."""
    if objective.data_kind == "chat":
        return [ChatSample([image], user_messages(prompt), "", str(p)) for image, p in zip(pictures, paths)]
    return [SimpleNamespace(image=image, image_id=str(p), prompt=prompt) for image, p in zip(pictures, paths)]


def _prediction(path: Path, image, text: str, score: float, label: str, located: _Located) -> dict:
    found = answer_boxes(text, *image.size, located.family, located.processor)
    box = reported_box(found[0][1] if found else None)  # as predictions.json
    # a box's label is the answer's own when it wrote one, else the asked label
    boxes = [{"label": own or label, "box": reported_box(b),
              "box_normalized_off": list(xyxy_to_openfoodfacts(b, *image.size))} for own, b in found]
    return {"image": str(path), "boxes": boxes, "box": box,
            "box_normalized_off": list(xyxy_to_openfoodfacts(box, *image.size)) if box else None,
            "label": label if box else None, "confidence": round(score, 4), "answer": text}


# --- evaluating ---------------------------------------------------------------------------------

def evaluate(model_dir: str | Path, dataset: str, *, recipe: str | None = None, out_dir: str | Path | None = None,
             device: str = "cpu", max_test: int | None = None, quantized: bool | None = None,
             split: str | None = None) -> dict:
    """{"model", "dataset", "recipe", "objective", "metrics"} of `model_dir` on `dataset`'s test split,
    scored by the objective's own evaluator (sft: IoU/AP, mrl: retrieval). The objective is the
    run's; `recipe` (default r4-joint) only names one for a model without a run. With `out_dir`:
    metrics.json (this dict) and predictions.json (one row per test sample). `quantized` as in
    `open_trained`. `split`: the split scored (default: the recipe's data.test_split)."""
    out = check_out_dir(out_dir) if out_dir is not None else None
    check_device(device)
    located = _locate(model_dir)
    cfg = _eval_recipe(located.recipe or load_recipe(recipe or DEFAULT_RECIPE), dataset, max_test, split)
    objective = build_objective(cfg, located.processor, located.family)
    samples = objective.load_data()["test"]
    model = _load(located, device, quantized, objective)
    result = objective.evaluator().evaluate(model, samples, desc="evaluating")
    report = {"model": str(model_dir), "dataset": dataset, "recipe": cfg.name, "objective": cfg.objective.name,
              "metrics": result.metrics}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "metrics.json", report)
        _write_json(out / "predictions.json", result.predictions)
    return report


def _eval_recipe(recipe: RecipeConfig, dataset: str, max_test: int | None, split: str | None = None) -> RecipeConfig:
    # Only the test split is scored, and splits are drawn independently of each other's size:
    # one train row keeps the loader from rendering or converting a train split for nothing. That
    # row is read from the scored split, so data without a train split (RefCOCO) is scored too.
    test_split = split or recipe.data.test_split
    data = replace(recipe.data, dataset=dataset, num_train=1, max_train=1, test_split=test_split,
                   train_split=test_split, max_test=max_test if max_test is not None else recipe.data.max_test)
    return replace(recipe, data=data)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


# --- exporting ----------------------------------------------------------------------------------

def export(model_dir: str | Path, out_dir: str | Path, device: str = "cpu") -> ExportResult:
    """Merge a run's LoRA adapter into its full-precision base and save it to `out_dir` with the
    processor and the run's recipe (recipe.yaml), checked (models.export.merge_adapter). Full
    weights (r2's model/, or an export) need no export: an InputError says so; copy the directory."""
    out = check_out_dir(out_dir)
    check_device(device)
    where = _model_path(model_dir)
    if isinstance(where, str):
        raise InputError(f"{model_dir} is a base model: it has no adapter to merge and is usable as it is")
    adapter_dir, _ = adapter_dir_of(where)  # the one-line error for full weights
    check_model_files(adapter_dir)
    run = adapter_dir.parent if adapter_dir.name == "model" else adapter_dir
    if out.resolve() in (adapter_dir.resolve(), run.resolve()) or adapter_dir.resolve() in out.resolve().parents:
        raise InputError(f"--out {out_dir}: that is the model being exported (or inside it); the merged checkpoint "
                         "would overwrite its own input: pass another directory")
    base_of_adapter(adapter_dir)
    recipe = _recipe_of(adapter_dir)
    result = merge_adapter(adapter_dir, out, device)
    if recipe is not None:
        (out / RECIPE_FILE).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
    return result


def base_of_adapter(adapter_dir: Path) -> str:
    """The base model an adapter was trained on (its adapter_config.json), read through the one JSON reader."""
    config = read_json(adapter_dir / "adapter_config.json", dict, MODEL_FIX,
                       keys={"base_model_name_or_path": str})
    if not config.get("base_model_name_or_path"):
        raise InputError(f"{adapter_dir / 'adapter_config.json'}: no base_model_name_or_path: {MODEL_FIX}")
    return config["base_model_name_or_path"]


def check_out_dir(path: str | Path) -> Path:
    """`path` as a directory that exists or can be made and is writable; else an InputError. Called
    before any model loads, so a typo costs no minutes of loading."""
    path = Path(path)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"lies under the file {existing}"
        raise InputError(f"output directory {path} {what}: pass a directory path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"output directory {path}: {existing} is not writable; pass another directory")
    return path
