"""The recipe schema: a recipe is one YAML file that parses into `RecipeConfig`.

Defaults live in these dataclasses only; each checks its own values when built, naming the key
(`stages.0.lora.r`), before any data or model is loaded. What varies per objective (its options,
metrics, shared data) is asked of its spec (`options.OBJECTIVES`), never branched on by name here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InputError, first_line
from .loading import convert, from_dict, join, mapping
from .options import check_metric, check_prompts_per_step, spec_of


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
        # transformers only finds out when the weights load, after data and the base evaluation
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise InputError("model.attn_implementation=flash_attention_2: the flash_attn package is not "
                             "installed here; use sdpa (the default) or install flash-attn on a CUDA machine")
        for key in ("min_pixels", "max_pixels"):  # 0 is not "unset": the processor would fail on it later
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise InputError(f"model.{key}={getattr(self, key)}: must be >= 1 (or null: the checkpoint's own)")
        lo, hi = self.min_pixels or 1, self.max_pixels or self.min_pixels or 1
        if lo > hi:
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
        if self.targets in ("llm", "both") and not self.llm_modules:
            raise InputError(f"lora.targets={self.targets} with an empty lora.llm_modules: name the Linear layers")
        if self.targets in ("vision", "both") and not self.vision_modules:
            raise InputError(f"lora.targets={self.targets} with an empty lora.vision_modules: name the Linear layers")


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
    drop_last: bool = True
    """Drop an epoch's last, partial global batch, so that 1 process and N processes at the same global
    batch train on the same rows (under N processes accelerate would fill it with repeated rows;
    D32). A training split smaller than one global batch is kept whole (its one batch is partial)."""
    logging_steps: int = 10
    """Log the loss every this many steps, capped so that a short run still logs a curve."""
    save_steps: int = 500
    """Save a checkpoint (weights, optimizer, scheduler, RNG) every this many steps, and at the end of
    the stage; `--resume` continues from the latest one. SIGTERM/SIGINT also save one."""
    save_total_limit: int = 2
    """Keep only this many checkpoints per stage (the oldest are deleted)."""
    divergence_factor: float = 10.0
    """Stop (exit 1) when the logged loss exceeds this many times the first logged loss; 0 = off."""
    eval_steps: int = 300
    """Evaluate the task metric on the validation split (`data.num_val`) every this many optimizer
    steps, and at the end of the stage. Each evaluation generates an answer per validation row; the
    default adds 10.5% to a default r4-joint run's wall time (every 200 steps: 15.3%; README, D21)."""
    metric_for_best: str = ""
    """Validation metric that picks the best step, higher is better: "" = the objective's default
    (`mean_iou`; mrl: `t2i.recall@1`, at the full dim unless one is named: `t2i.16.recall@1`;
    mrl on synthetic-video: `t2v.recall@1`; `order` is the video order test's fraction)."""
    load_best_at_end: bool = False
    """End the stage on its best validated checkpoint instead of its last step (a non-final stage
    passes that one on). Saves a checkpoint at every evaluation."""
    early_stopping_patience: int = 0
    """Stop the stage after this many evaluations without a better `metric_for_best`; 0 = never."""
    packing: Literal["none", "padding_free", "packed"] = "none"
    """How an SFT micro-batch reaches the model (training/packing.py, D31). "none": one right-padded
    row per sample. "padding_free": the batch's samples concatenated into one row, no pads.
    "packed": the samples bin-packed into rows of at most `max_tokens_per_row` tokens. Every sample
    keeps its own 3-D mRoPE positions (the model's rope index, per sample), attends only to itself
    and keeps its label mask, so the loss equals the padded one; the steps are the same samples."""
    max_tokens_per_row: int = 2048
    """`packing: packed`: the longest row; a sample longer than this is an error naming it."""
    group_by_length: bool = False
    """Trainer's length-grouped sampling: batches of similar token counts (fewer pads), in an order
    that is still shuffled; SFT stages."""
    extra: dict = field(default_factory=dict)
    """Passed to TrainingArguments as is (checked against its fields at load time)."""

    def __post_init__(self):
        if not 0 < self.learning_rate < math.inf:
            raise InputError(f"train.learning_rate={self.learning_rate}: must be positive and finite")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise InputError("train.per_device_train_batch_size and train.gradient_accumulation_steps must be >= 1")
        if self.max_steps == 0 or self.max_steps < -1:
            raise InputError(f"train.max_steps={self.max_steps}: must be >= 1 (or -1: train by epochs)")
        if self.max_steps == -1 and self.num_train_epochs <= 0:
            raise InputError(f"train.num_train_epochs={self.num_train_epochs}: must be positive (or set train.max_steps)")
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"train.warmup_ratio={self.warmup_ratio}: must be in [0, 1) (a fraction of the steps)")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise InputError("train.weight_decay and train.max_grad_norm must be >= 0")
        for key in ("logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, key) < 1:
                raise InputError(f"train.{key}={getattr(self, key)}: must be >= 1")
        if not (self.divergence_factor == 0 or self.divergence_factor > 1) or not math.isfinite(self.divergence_factor):
            raise InputError(f"train.divergence_factor={self.divergence_factor}: must be > 1, or 0 to turn the check off")
        if self.eval_steps < 1 or self.early_stopping_patience < 0:
            raise InputError("train.eval_steps must be >= 1 and train.early_stopping_patience >= 0")
        if self.max_tokens_per_row < 1:
            raise InputError(f"train.max_tokens_per_row={self.max_tokens_per_row}: must be >= 1")
        _check_against_trainer(self)


RUN_OWNED_ARGUMENTS = {"output_dir": "the run directory (--output-dir)", "seed": "the recipe's seed (--seed)",
                       "report_to": "--no-wandb (TensorBoard always)", "use_cpu": "--gpu cpu",
                       "bf16": "model.dtype", "fp16": "model.dtype"}
"""TrainingArguments the run sets from elsewhere: train.extra cannot override them."""


def _check_against_trainer(train: TrainConfig) -> None:
    """What transformers' TrainingArguments would reject later, rejected now with the key's name."""
    from transformers import SchedulerType, TrainingArguments

    schedulers = [s.value for s in SchedulerType]
    if train.lr_scheduler_type not in schedulers:
        raise InputError(f"train.lr_scheduler_type={train.lr_scheduler_type!r}: must be one of {', '.join(schedulers)}")
    typed = {f.name for f in dataclasses.fields(TrainConfig)} | {"warmup_steps": "warmup_ratio"}.keys()
    shadowed = sorted(set(train.extra) & (typed | RUN_OWNED_ARGUMENTS.keys()))
    if shadowed:
        key = shadowed[0]
        owner = RUN_OWNED_ARGUMENTS.get(key) or f"train.{'warmup_ratio' if key == 'warmup_steps' else key}"
        raise InputError(f"train.extra.{key}: set by {owner}, which checks it; train.extra is for the "
                         "TrainingArguments the recipe has no field for")
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    bad = sorted(set(train.extra) - known)
    if bad:
        raise InputError(f"train.extra.{bad[0]} is not a TrainingArguments field: see "
                         "transformers.TrainingArguments for the valid names")
    try:  # the values too: TrainingArguments checks them when built, which is cheap (no device is touched)
        TrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **train.extra)
    except (ValueError, TypeError) as err:
        raise InputError(f"train.extra ({', '.join(f'{k}={v!r}' for k, v in train.extra.items())}): "
                         f"{first_line(err)}") from None



@dataclass(frozen=True)
class StageConfig:
    """One training run. Multi-stage recipes chain stages: each starts from the previous output."""
    name: str = "main"
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig | None = None
    """This stage's own objective (name and options); None: the recipe's. Only one that shares the
    recipe objective's data and evaluator (its spec's `shares_data_with`): sft and grpo."""

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
class VideoConfig:
    """How a video (a file or a directory of frames) becomes the frames the model sees. Saved in
    the run's config.yaml and reused by its evaluation and by `vlm-recipes encode`, so a clip is
    sampled and sized the same way at training, evaluation and inference (data/video.py)."""
    num_frames: int = 0
    """> 0: this many frames, spread evenly over the clip (Qwen's own rounding); 0: sample at `fps`."""
    fps: float = 2.0
    """Frames sampled per second of video when `num_frames` is 0 (Qwen-VL's default, 2)."""
    max_frames: int = 32
    """At most this many frames per clip (a long video at `fps` is spread over this many)."""
    min_pixels: int = 4096
    """Pixel budget of ONE frame (smart_resize to sides that are multiples of patch x merge size),
    the same meaning for the three families. The tiny base: 96x96 px frames = 3x3 tokens each."""
    max_pixels: int = 16384
    """Real models: e.g. 200704 (256 tokens a frame for Qwen2.5-VL); tokens grow with frames x pixels."""
    default_fps: float = 2.0
    """The frame rate of a directory of frames (and of a file whose container states none)."""

    def __post_init__(self):
        if self.num_frames < 0 or self.max_frames < 1:
            raise InputError(f"data.video.num_frames={self.num_frames} must be >= 0 (0: sample at data.video.fps) "
                             f"and data.video.max_frames={self.max_frames} >= 1")
        if self.num_frames > self.max_frames:
            raise InputError(f"data.video.num_frames={self.num_frames} > data.video.max_frames={self.max_frames}: "
                             "raise max_frames or sample fewer frames")
        for key in ("fps", "default_fps"):
            if not 0 < getattr(self, key) < math.inf:
                raise InputError(f"data.video.{key}={getattr(self, key)}: must be a positive number of frames a second")
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise InputError(f"data.video.min_pixels={self.min_pixels}, data.video.max_pixels={self.max_pixels}: "
                             "need 1 <= min_pixels <= max_pixels (pixels of one frame)")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    """"synthetic" (generated here), a hub id such as openfoodfacts/nutrition-table-detection,
    a directory saved by datasets, parquet or JSONL file(s) (data/sources.py); any of them may end
    in a slice, `name[train:N,test:M]`, keeping at most N train and M test rows."""
    num_train: int = 3200
    """Rows generated for the synthetic train split (ignored for real datasets). A row costs about
    15 ms to render, and the recipes were data-limited at 800 (more epochs overfit; DECISIONS D17)."""
    num_test: int = 100
    max_train: int | None = None
    """Use at most this many train rows (None: all)."""
    max_test: int | None = None
    num_val: int = 64
    """Validation rows carved (seeded) from the training rows, never from the test split, and
    evaluated while training (`train.eval_steps`); at most a tenth of the training rows, so a
    16-row debugging run keeps 15 to train on. 0 switches evaluation during training off."""
    num_shifted: int = 0
    """Rows of an out-of-domain test split, never trained on, evaluated beside the test split for
    the base and every stage (detection only). "synthetic": generated in a shifted style (other
    backgrounds, table layouts, image sizes and distractors); another source: its split "shifted"."""
    prompt: str = "Locate the nutrition table in the image."
    label: str = "nutrition table"
    keep_negatives: bool = False
    """Keep OpenFoodFacts-schema rows without a box of the asked category as negatives (answer:
    nothing). Off: such a row may be unannotated rather than empty, and the recipes' task is "locate
    THE table" (D29). Rows with their own `prompt` (synthetic-multi) are always kept."""
    video: VideoConfig = field(default_factory=VideoConfig)
    """Frame sampling and per-frame pixel budget of video targets, queries and negatives (mrl)."""
    train_split: str = "train"
    """The split trained on (detection data); e.g. "val" for lmms-lab/RefCOCO, which has no train split."""
    test_split: str = "test"
    """The split scored (detection data; `--split` of train and evaluate): "test" falls back to "val",
    then "validation"; RefCOCO's are val/test/testA/testB."""
    coco_samples: Literal["each", "all"] = "each"
    """COCO data: one sample per (image, category) asked "Detect every <category>." ("each"), or one per
    image asking for every object ("all"); data/coco.py."""
    coco_negative_rate: float = 0.25
    """COCO data, "each": the seeded fraction of images that also get a question about a category
    absent from them (answer: nothing)."""

    def __post_init__(self):
        if not 0 <= self.coco_negative_rate <= 1:
            raise InputError(f"data.coco_negative_rate={self.coco_negative_rate}: must be within 0..1")
        if self.num_train < 1 or self.num_test < 1 or self.num_val < 0 or self.num_shifted < 0:
            raise InputError("data.num_train and data.num_test must be >= 1, data.num_val and data.num_shifted >= 0")
        for key in ("max_train", "max_test"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise InputError(f"data.{key}={getattr(self, key)}: must be >= 1 (or null: no limit)")



@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "sft"
    """Objective module in vlm_recipes.objectives: sft, grpo, mrl or mdlm."""
    options: Any = None
    """The objective's own options dataclass (`options.OBJECTIVES[name].options`); None = its defaults."""

    def __post_init__(self):
        kind = spec_of(self.name, "objective.name").options
        if self.options is None:
            object.__setattr__(self, "options", kind())
        elif not isinstance(self.options, kind):
            raise InputError(f"objective.options: expected {kind.__name__} for objective {self.name!r}")

    @classmethod
    def from_raw(cls, data: Any, where: str) -> ObjectiveConfig:
        """The options are parsed into the named objective's dataclass, strictly, here and only here."""
        data = mapping(data, where)
        unknown = sorted(set(data) - {"name", "options"})
        if unknown:
            raise InputError(f"unknown key {join(where, unknown[0])!r}: valid keys here are name, options")
        name = convert(str, data.get("name", cls.name), join(where, "name"))
        spec = spec_of(name, join(where, "name"))
        return cls(name, from_dict(spec.options, data.get("options"), join(where, "options")))


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 16
    max_new_tokens: int = 64
    """Enough for one box in every family's format (Qwen2.5/3-VL JSON: ~42 tokens)."""
    num_plot: int = 8
    """Test images drawn with true and predicted boxes in predictions.png."""

    def __post_init__(self):
        for key in ("batch_size", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise InputError(f"eval.{key}={getattr(self, key)}: must be >= 1")
        if self.num_plot < 0:
            raise InputError(f"eval.num_plot={self.num_plot}: must be >= 0")


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
        if not 0 <= self.seed < 2**32:  # numpy's seed range, which set_seed feeds
            raise InputError(f"seed={self.seed}: must be in [0, 2**32)")
        if not self.stages:
            raise InputError(f"recipe {self.name!r} has no stages")
        for stage in self.stages[:-1]:
            if stage.quantization.load_in_4bit:
                raise InputError(f"stage {stage.name!r} feeds a later stage, so it cannot be 4-bit (a LoRA merged "
                                 "into 4-bit weights is lost); set its quantization.load_in_4bit=false")
        names = [stage.name for stage in self.stages]
        if len(set(names)) != len(names):
            raise InputError(f"recipe {self.name!r}: stage names must be unique (they name output directories): {names}")
        for index, stage in enumerate(self.stages):
            own = self.objective_for(stage).name
            if own != self.objective.name and own not in spec_of(self.objective.name).shares_data_with:
                raise InputError(f"stages.{index}.objective.name={own!r} cannot follow the recipe's objective "
                                 f"{self.objective.name!r}: a stage may only switch between objectives that share "
                                 "data and evaluator (sft and grpo); make it a separate recipe")
            self._check_validation(stage.train, f"stages.{index}.train")
            check_prompts_per_step(self.objective_for(stage).options, stage.train.gradient_accumulation_steps,
                                   f"stages.{index}")
            self._check_batching(stage.train, own, f"stages.{index}.train")

    def _check_validation(self, train: TrainConfig, where: str) -> None:
        check_metric(self.objective.name, self.metric_for_best(train), f"{where}.metric_for_best")
        if self.data.num_val == 0 and (train.load_best_at_end or train.early_stopping_patience):
            raise InputError(f"{where}.load_best_at_end / early_stopping_patience need a validation split: "
                             "set data.num_val >= 1")
        ema = getattr(self.objective.options, "ema_decay", 0.0)
        if ema and train.load_best_at_end:
            raise InputError(f"{where}.load_best_at_end: objective.options.ema_decay ends training on the "
                             "weights' average, which would replace the best checkpoint; use one of the two")

    def _check_batching(self, train: TrainConfig, objective: str, where: str) -> None:
        """Packing and length grouping rebuild the padded next-token batch of SFT (D31)."""
        if not spec_of(objective).packs and (train.packing != "none" or train.group_by_length):
            raise InputError(f"{where}.packing / group_by_length: only for sft stages (this one trains "
                             f"{objective}); set packing: none and group_by_length: false")
        if train.packing == "packed" and self.model.attn_implementation.startswith("flash"):
            raise InputError(f"{where}.packing=packed: flash_attention_2 keeps packed samples apart only in a "
                             "single row (varlen from position ids); use packing: padding_free, whose memory "
                             "is linear in the row anyway")

    def objective_for(self, stage: StageConfig) -> ObjectiveConfig:
        """The objective that trains `stage`: its own, else the recipe's."""
        return stage.objective or self.objective

    def metric_for_best(self, train: TrainConfig) -> str:
        """The stage's validation metric: its own `metric_for_best`, else the objective's default."""
        if train.metric_for_best:
            return train.metric_for_best
        return spec_of(self.objective.name).default_metric_for(self.data.dataset)

