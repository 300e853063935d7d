"""Typed recipe configs, the bottom layer (only `errors` is below it): a recipe is one YAML file
that parses into `RecipeConfig`, strictly, before any data or model is loaded.

  schema.py    the recipe dataclasses (model, data, stages: quantization, LoRA, freeze, train; eval)
  options.py   one options dataclass and one `ObjectiveSpec` per objective (`OBJECTIVES`)
  loading.py   strict YAML / `--set` / dataclass loading, errors naming the dotted key
  recipes.py   the shipped recipes and `load_recipe`

Everything is re-exported here: `from vlm_recipes.config import load_recipe, MRLOptions` works.
"""

from ..errors import InputError, TrainingDiverged
from .loading import from_dict, to_dict
from .options import (
    DETECTION_METRICS,
    OBJECTIVES,
    QUERY_INSTRUCTION,
    RETRIEVAL_METRIC,
    TARGET_INSTRUCTION,
    VIDEO_DATASETS,
    GRPOOptions,
    MDLMOptions,
    MetricNames,
    MRLOptions,
    ObjectiveSpec,
    SFTOptions,
    check_metric,
    spec_of,
)
from .recipes import RECIPE_DIR, apply_override, available_recipes, describe_recipes, load_recipe, load_saved_recipe
from .schema import (
    DataConfig,
    EvalConfig,
    FreezeConfig,
    LoraConfig,
    ModelConfig,
    ObjectiveConfig,
    QuantizationConfig,
    RecipeConfig,
    StageConfig,
    TrainConfig,
    VideoConfig,
)

__all__ = [
    "DETECTION_METRICS", "OBJECTIVES", "QUERY_INSTRUCTION", "RECIPE_DIR", "RETRIEVAL_METRIC", "TARGET_INSTRUCTION",
    "VIDEO_DATASETS", "DataConfig", "EvalConfig", "FreezeConfig", "GRPOOptions", "InputError", "LoraConfig",
    "MDLMOptions", "MRLOptions", "MetricNames", "ModelConfig", "ObjectiveConfig", "ObjectiveSpec",
    "QuantizationConfig", "RecipeConfig", "SFTOptions", "StageConfig", "TrainConfig", "TrainingDiverged",
    "VideoConfig", "apply_override", "available_recipes", "describe_recipes", "check_metric", "from_dict", "load_recipe", "load_saved_recipe",
    "spec_of",
    "to_dict",
]
