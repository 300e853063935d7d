"""Typed recipe configs: a recipe is one YAML file that parses into `RecipeConfig`.

Defaults live in these dataclasses only. Loading is strict: an unknown key, a wrong type or
a bad value fails at load time with the key's dotted name (`stages.0.lora.r`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import InputError

RECIPE_DIR = Path(__file__).parent / "recipes"


@dataclass(frozen=True)
class ModelConfig:
    name_or_path: str = "tiny"
    """"tiny" = the project's shipped pretrained tiny base of `family`; else a hub id or a local
    checkpoint directory that has a processor."""
    family: str = "qwen3_vl"
    """Grounding convention and tiny base to use; a hub/local model's own config overrides it.
    The default is Qwen3-VL: its vision tower carries absolute positions (DECISIONS D11, D14)."""
    min_pixels: int | None = None
    """Pixel budget of the image processor (smart_resize); None = the checkpoint's own setting
    (the tiny base: at most 160x160 px). The resolved values are saved in the run's config.yaml
    and reused at evaluation and inference, so boxes mean the same thing everywhere. Cap
    max_pixels for real models (e.g. 802816 = 1024 tokens) to avoid out-of-memory on photos."""
    max_pixels: int | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """"auto": bfloat16 on a GPU that supports it, float32 on CPU."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    def __post_init__(self):
        lo, hi = self.min_pixels or 1, self.max_pixels or self.min_pixels or 1
        if lo <= 0 or lo > hi:
            raise InputError(f"model.min_pixels={self.min_pixels} and model.max_pixels={self.max_pixels}: "
                             "need 0 < min_pixels <= max_pixels")


@dataclass(frozen=True)
class QuantizationConfig:
    load_in_4bit: bool = False
    """Load the base weights in 4-bit with bitsandbytes (QLoRA); needs LoRA to train."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    skip_vision: bool = False
    """Keep the vision tower in full precision (quantize only the LLM)."""


@dataclass(frozen=True)
class LoraConfig:
    targets: Literal["none", "llm", "vision", "both"] = "none"
    """Where LoRA adapters go; "none" trains the unfrozen parts in full."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    llm_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    vision_modules: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj",
                                       "linear_fc1", "linear_fc2", "mlp.0", "mlp.2")
    """Suffixes of Linear layers in the vision tower and merger (mlp.0/mlp.2: Qwen2-VL's merger)."""

    def __post_init__(self):
        if self.r <= 0 or self.alpha <= 0:
            raise InputError(f"lora.r={self.r}, lora.alpha={self.alpha}: both must be positive")
        if not 0 <= self.dropout < 1:
            raise InputError(f"lora.dropout={self.dropout}: must be in [0, 1)")


@dataclass(frozen=True)
class FreezeConfig:
    """Which parts keep their weights fixed. With LoRA, frozen parts still get adapters."""
    vision: bool = True
    merger: bool = True
    llm: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """The subset of transformers' TrainingArguments a recipe sets; anything else goes in `extra`."""
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    logging_steps: int = 10
    extra: dict = field(default_factory=dict)
    """Passed to TrainingArguments as is (checked against its fields at load time)."""

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise InputError(f"train.learning_rate={self.learning_rate}: must be positive")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise InputError("train.per_device_train_batch_size and train.gradient_accumulation_steps must be >= 1")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise InputError("train.num_train_epochs or train.max_steps must be positive")


@dataclass(frozen=True)
class StageConfig:
    """One training run. Multi-stage recipes chain stages: each starts from the previous output."""
    name: str = "main"
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.quantization.load_in_4bit and self.lora.targets == "none":
            raise InputError(f"stage {self.name!r}: 4-bit weights cannot be trained directly; "
                             "set lora.targets to llm, vision or both")
        nothing_trains = self.lora.targets == "none" and self.freeze.vision and self.freeze.merger \
            and self.freeze.llm
        if nothing_trains:
            raise InputError(f"stage {self.name!r} trains nothing: unfreeze a part (freeze.*=false) "
                             "or add LoRA (lora.targets)")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    """"synthetic" (generated here), a hub id such as openfoodfacts/nutrition-table-detection,
    a directory saved by datasets, or parquet file(s) in that schema."""
    num_train: int = 3200
    """Rows generated for the synthetic train split (ignored for real datasets). A row costs about
    15 ms to render, and the recipes were data-limited at 800 (more epochs overfit; DECISIONS D17)."""
    num_test: int = 100
    max_train: int | None = None
    """Use at most this many train rows (None: all)."""
    max_test: int | None = None
    prompt: str = "Locate the nutrition table in the image."
    label: str = "nutrition table"

    def __post_init__(self):
        if self.num_train < 1 or self.num_test < 1:
            raise InputError("data.num_train and data.num_test must be >= 1")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "sft"
    """Objective module in vlm_recipes.objectives: sft, mrl or mdlm."""
    options: dict = field(default_factory=dict)
    """Checked against the objective's own options dataclass at load time."""


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 16
    max_new_tokens: int = 64
    """Enough for one box in every family's format (Qwen2.5/3-VL JSON: ~42 tokens)."""
    num_plot: int = 8
    """Test images drawn with true and predicted boxes in predictions.png."""


@dataclass(frozen=True)
class RecipeConfig:
    name: str
    description: str
    stages: tuple[StageConfig, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0

    def __post_init__(self):
        if not self.stages:
            raise InputError(f"recipe {self.name!r} has no stages")
        from .objectives import get_objective  # late: objectives import this module

        get_objective(self.objective.name).parse_options(self.objective.options)


# --- loading -------------------------------------------------------------------------------


def available_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPE_DIR.glob("*.yaml"))}


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> RecipeConfig:
    """Parse a shipped recipe name or a YAML path, apply `key=value` overrides, validate."""
    path = Path(name_or_path)
    if not path.suffix:
        recipes = available_recipes()
        if name_or_path not in recipes:
            raise InputError(f"unknown recipe {name_or_path!r}: choose one of {', '.join(recipes)} "
                             "(or pass a path to a recipe .yaml)")
        path = recipes[name_or_path]
    if not path.is_file():
        raise InputError(f"recipe file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise InputError(f"recipe file {path} is not valid YAML: {err}".replace("\n", " ")) from None
    for item in overrides:
        apply_override(raw, item)
    return from_dict(RecipeConfig, raw, "")


def apply_override(raw: dict, item: str) -> None:
    """`a.b.c=value` sets raw[a][b][c]; a stage key without `stages.N.` applies to every stage."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise InputError(f"--set {item!r}: expected key=value, e.g. --set train.learning_rate=1e-4")
    value = yaml.safe_load(text) if text else ""
    parts = key.strip().split(".")
    stage_keys = {f.name for f in dataclasses.fields(StageConfig)} - {"name"}
    if parts[0] in stage_keys:
        for stage in raw.setdefault("stages", [{}]):
            _set_path(stage, parts, value, key)
    else:
        _set_path(raw, parts, value, key)


def _set_path(node: Any, parts: list[str], value: Any, key: str) -> None:
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a valid index")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if node is None:
                node = {}
    if isinstance(node, list):
        raise InputError(f"--set {key}: cannot replace a list item; set one of its fields")
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from plain data, strictly, naming the key on any error."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{where or 'recipe'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown key {_join(where, unknown[0])!r}: valid keys here are {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"{where or 'recipe'}: {err}") from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise InputError(f"{where}={value!r}: must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}.{i}") for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "2e-4" (no dot) as a string
        except ValueError:
            pass
    if tp in (int, float, str, bool, dict) and not (isinstance(value, tp) and
                                                    not (tp is int and isinstance(value, bool))):
        raise InputError(f"{where}={value!r}: expected {tp.__name__}")
    return value


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)
