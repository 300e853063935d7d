"""Loading a base model and making it trainable: quantization, freezing, LoRA.

Parameters are grouped in three parts by name, the same in the three HF Qwen-VL classes:
  vision  = model.visual.*  (patch embedding and blocks)
  merger  = model.visual.merger.* and model.visual.deepstack_merger_list.* (vision -> LLM bridge)
  llm     = model.language_model.* and lm_head.*
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..config import LoraConfig, ModelConfig, QuantizationConfig, RecipeConfig, StageConfig
from ..data.sources import check_hub_available
from ..errors import InputError, first_line
from ..families import FAMILIES, Family, get_family
from ..readers import check_safetensors, read_json, read_text
from .distributed import local_device

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def tiny_base_path(family: Family) -> Path:
    return ASSETS / f"tiny-{family.name.replace('_', '-')}"


def resolve_model_path(cfg: ModelConfig) -> str:
    if cfg.name_or_path == "tiny":
        path = tiny_base_path(get_family(cfg.family))
        if not (path / "config.json").is_file():
            raise InputError(f"the tiny {cfg.family} base is not built at {path}: run "
                             f"vlm-recipes build-base --family {cfg.family}")
        return str(path)
    name = cfg.name_or_path
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        check_model_files(path)
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise InputError(f"--model {name} is a LoRA adapter, not a base model: merge it first with "
                             f"`vlm-recipes export --model {name} --out DIR`, then pass --model DIR")
        return str(path)
    # what cannot be a hub id ("org/name") is a directory that is not there
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).exists():
        raise InputError(f"--model {name}: no such directory; pass a checkpoint directory, a hub id "
                         "(org/name) or 'tiny'")
    check_hub_available(name, "model")
    return name


MODEL_FIX = "the checkpoint is damaged: copy or export it again"
MODEL_FILE_KEYS = {
    "adapter_config.json": {"base_model_name_or_path": str},
    "tokenizer_config.json": {"tokenizer_class": str},
    "processor_config.json": {"processor_class": str, "image_processor": dict},
    "preprocessor_config.json": {"image_processor_type": str},
    "tokenizer.json": {"model": dict},
}
"""What loading cannot do without, per file of a model directory (each must be there, of its type).
config.json's model_type is the family check's (`model_family`: "needs a model_type")."""
MODEL_FILE_TYPES = {"adapter_config.json": {"peft_type": str, "r": int, "target_modules": (list, str, type(None))}}
"""Keys that must have their type when they are there."""


def check_model_files(path: Path) -> None:
    """Every file of the model directory `path` that loading reads, read through its kind's reader
    (JSON, UTF-8 text, safetensors headers) before anything loads: corruption is one line naming
    the file."""
    for item in sorted(path.iterdir()):
        if item.suffix == ".json":
            read_json(item, dict, MODEL_FIX, required=MODEL_FILE_KEYS.get(item.name), keys=MODEL_FILE_TYPES.get(item.name))
        elif item.suffix == ".jinja":
            check_chat_template(item)
        elif item.suffix == ".safetensors":
            check_safetensors(item, MODEL_FIX)


def check_chat_template(path: Path) -> None:
    """A chat template file: UTF-8, a Jinja template that parses, and one that uses its messages."""
    import jinja2

    text = read_text(path, MODEL_FIX)
    try:
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as err:
        raise InputError(f"{path}: not a valid Jinja chat template (line {err.lineno}: {err.message}): "
                         f"{MODEL_FIX}") from None
    if "messages" not in text:
        raise InputError(f"{path}: a chat template that never reads the messages: {MODEL_FIX}")


def check_device(device: str, flag: str = "--device") -> str:
    """`device` as torch names one this machine has: cpu, cuda, cuda:N (N a visible GPU)."""
    import re

    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if match is None:
        raise InputError(f"{flag} {device!r}: expected cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        count = torch.cuda.device_count()
        index = int(match.group(1) or 0)
        if count == 0:
            raise InputError(f"{flag} {device}: no CUDA GPU is visible here; use {flag} cpu")
        if index >= count:
            raise InputError(f"{flag} {device}: GPU {index} does not exist ({count} visible: cuda:0..cuda:{count - 1})")
    return device


@dataclass(frozen=True)
class Base:
    """A base checkpoint opened for use: where it is, its processor (with the run's pixel budget
    applied) and its family (box convention)."""
    path: str
    processor: object
    family: Family


def open_base(cfg: ModelConfig) -> Base:
    """The one way to open a model: resolve `cfg.name_or_path`, load its processor, read its family.
    Fails with an InputError (one line) on anything a user can get wrong; loads no weights."""
    path = resolve_model_path(cfg)
    family = model_family(path, cfg)  # first: a config.json without a model type says so here
    return Base(path, load_processor(path, cfg), family)


def part_of(param_name: str) -> str:
    name = param_name.removeprefix("base_model.model.")
    if name.startswith(("model.visual.merger.", "model.visual.deepstack_merger_list.")):
        return "merger"
    if name.startswith("model.visual."):
        return "vision"
    return "llm"


def pick_dtype(cfg: ModelConfig, device: str) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_processor(path: str, cfg: ModelConfig):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise InputError(f"could not load a processor from {path!r}: {first_line(err)}; pass a model "
                         "directory or hub id that includes the processor/tokenizer files") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise InputError(f"{path!r} has no image processor and tokenizer: it is not a vision-language "
                         "checkpoint (save the processor next to the weights)")
    # The pixel budget of this run applies, whatever the checkpoint saved.
    size = dict(processor.image_processor.size)
    if cfg.min_pixels is not None:
        size["shortest_edge"] = cfg.min_pixels
    if cfg.max_pixels is not None:
        size["longest_edge"] = cfg.max_pixels
    if size["shortest_edge"] > size["longest_edge"]:
        raise InputError(f"model.min_pixels={size['shortest_edge']} > model.max_pixels={size['longest_edge']} "
                         f"for {path!r}: lower min_pixels or raise max_pixels")
    processor.image_processor.size = size
    return processor



def model_family(path: str, cfg: ModelConfig) -> Family:
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as err:
        raise InputError(f"could not read a model config from {path!r} ({first_line(err)}): its config.json "
                         "needs a model_type of a Qwen-VL model") from None
    if model_type not in FAMILIES:
        raise InputError(f"{path!r} is a {model_type!r} model; vlm-recipes supports {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def load_model(path: str, cfg: ModelConfig, quant: QuantizationConfig, device: str):
    """The base model on `device`: under a launcher the whole model on this process's own GPU (data
    parallel); one process with several GPUs spreads it with device_map="balanced" (`--parallel
    model`, for a model larger than one GPU)."""
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    dtype = pick_dtype(cfg, device)
    kwargs = dict(dtype=dtype, attn_implementation=cfg.attn_implementation)
    if quant.load_in_4bit:
        skip = ["lm_head"] + (["visual"] if quant.skip_vision else [])
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type,
            bnb_4bit_use_double_quant=quant.double_quant, bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=skip)
    device = local_device(device)
    if device == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "balanced"
    else:
        kwargs["device_map"] = {"": device if device != "cuda" else "cuda:0"}
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except OSError as err:
        raise InputError(f"could not load model weights from {path!r}: {first_line(err)}") from None
    model.config.use_cache = False
    if quant.load_in_4bit:
        _disable_cpu_repacking(model)
    return model


def _disable_cpu_repacking(model) -> None:
    # bitsandbytes repacks 4-bit weights in place for fast CPU inference the first time a
    # module runs in eval mode; the packed layout then breaks training after evaluation (and
    # needs in_features % 64 == 0). The base model is evaluated before it is trained, so off.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@dataclass
class TrainableReport:
    """What a stage trains, per part: counts of trainable / total / 4-bit parameters."""
    trainable: dict[str, int]
    total: dict[str, int]
    quantized: dict[str, int]
    lora_modules: list[str]

    @property
    def trainable_params(self) -> int:
        return sum(self.trainable.values())


@contextmanager
def peft_quietly() -> Iterator[None]:
    """Around peft calls that wrap a model: peft 0.21 reads transformers' deprecated
    `is_gradient_checkpointing`, a FutureWarning on every LoRA model that no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_stage(model, stage: StageConfig):
    """Freeze parts, add LoRA where the stage says; returns the (maybe peft-wrapped) model."""
    for name, param in model.named_parameters():
        frozen = getattr(stage.freeze, part_of(name))
        param.requires_grad_(not frozen and param.dtype.is_floating_point)
    if stage.lora.targets == "none":
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if stage.quantization.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=stage.train.gradient_checkpointing)
    targets = lora_target_names(model, stage.lora)
    if not targets:
        raise InputError(f"lora: no Linear layer matches {stage.lora.targets!r} targets; check lora.llm_modules "
                         "/ lora.vision_modules")
    peft_cfg = PeftLoraConfig(r=stage.lora.r, lora_alpha=stage.lora.alpha, lora_dropout=stage.lora.dropout,
                              target_modules=targets, bias="none")
    with peft_quietly():
        model = get_peft_model(model, peft_cfg)
    # peft freezes every non-adapter weight: the parts this stage unfreezes train in full again
    for name, param in model.named_parameters():
        if ".lora_" not in name and not getattr(stage.freeze, part_of(name)) and param.dtype.is_floating_point:
            param.requires_grad_(True)
    return model


def lora_target_names(model: nn.Module, lora: LoraConfig) -> list[str]:
    """Full names of the Linear layers that get adapters, so peft matches exactly these."""
    wanted = {"llm": ("llm",), "vision": ("vision", "merger"), "both": ("llm", "vision", "merger")}[lora.targets]
    names = []
    for name, module in model.named_modules():
        if not _is_linear(module) or name.endswith("lm_head"):
            continue
        suffixes = lora.llm_modules if part_of(name + ".") == "llm" else lora.vision_modules
        if part_of(name + ".") in wanted and any(name == s or name.endswith("." + s) for s in suffixes):
            names.append(name)
    return names


def _is_linear(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def trainable_report(model) -> TrainableReport:
    trainable, total, quantized = ({p: 0 for p in ("vision", "merger", "llm")} for _ in range(3))
    lora_modules = sorted({n.rsplit(".lora_", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n})
    for name, param in model.named_parameters():
        part = part_of(name)
        count = _num_params(param)
        total[part] += count
        trainable[part] += count if param.requires_grad else 0
        quantized[part] += count if type(param).__name__ == "Params4bit" else 0
    return TrainableReport(trainable, total, quantized, lora_modules)


def stage_reports(recipe: RecipeConfig, path: str, device: str = "cpu") -> list[tuple[StageConfig, TrainableReport]]:
    """What each stage of `recipe` trains and stores in 4-bit when applied to the model at `path`
    (loaded as the stage says; nothing is trained). For inspection: notebooks, dry runs."""
    return [(stage, trainable_report(apply_stage(load_model(path, recipe.model, stage.quantization, device), stage)))
            for stage in recipe.stages]


def _num_params(param) -> int:
    # 4-bit weights are packed two per byte; report the logical count
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()
