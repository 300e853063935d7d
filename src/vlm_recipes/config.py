"""Typed recipe configs: a recipe is one YAML file that parses into `RecipeConfig`.

Defaults live in these dataclasses only. Loading is strict: an unknown key, a wrong type or
a bad value fails at load time with the key's dotted name (`stages.0.lora.r`), before any data
or model is loaded. This module is the bottom layer: it imports no other module of the package
(tests/test_architecture.py checks it), so objective options are declared here too, as data.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

RECIPE_DIR = Path(__file__).parent / "recipes"


class InputError(ValueError):
    """Bad input from the user: the message names the input and says how to fix it. The CLI turns
    it into one line on stderr and exit code 2; anything else is a bug and keeps its traceback."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or blew up: stopping beats training on garbage (CLI: one line, exit 1).
    `step` is the global step it was seen at (written to status.json)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


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
        _check_against_trainer(self)


def _check_against_trainer(train: TrainConfig) -> None:
    """What transformers' TrainingArguments would reject later, rejected now with the key's name."""
    from transformers import SchedulerType, TrainingArguments

    schedulers = [s.value for s in SchedulerType]
    if train.lr_scheduler_type not in schedulers:
        raise InputError(f"train.lr_scheduler_type={train.lr_scheduler_type!r}: must be one of {', '.join(schedulers)}")
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    bad = sorted(set(train.extra) - known)
    if bad:
        raise InputError(f"train.extra.{bad[0]} is not a TrainingArguments field: see "
                         "transformers.TrainingArguments for the valid names")
    try:  # the values too: TrainingArguments checks them when built, which is cheap (no device is touched)
        TrainingArguments(output_dir="unused", use_cpu=True, report_to=[], **train.extra)
    except (ValueError, TypeError) as err:
        raise InputError(f"train.extra ({', '.join(f'{k}={v!r}' for k, v in train.extra.items())}): "
                         f"{_first_line(err)}") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


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
    recipe objective's data and evaluator (config.SHARED_DATA): sft and grpo."""

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


# --- objective options: one frozen dataclass per objective, parsed once at load time ----------

QUERY_INSTRUCTION = "Find the image that matches the description."
TARGET_INSTRUCTION = "Represent the image for retrieval."


@dataclass(frozen=True)
class SFTOptions:
    loss_on: Literal["answer", "all"] = "answer"
    """"answer": only the assistant's answer carries loss; "all": every non-image token does."""
    max_length: int = 2048
    """Longest allowed training sequence; longer samples are an error, never truncated."""

    def __post_init__(self):
        if self.max_length < 1:
            raise InputError(f"objective.options.max_length={self.max_length}: must be >= 1")


@dataclass(frozen=True)
class MRLOptions:
    pooling: Literal["last", "mean"] = "last"
    """Last real token of the final hidden state (VLM2Vec/GME), or the mean over real tokens."""
    dims: tuple[int, ...] = ()
    """Matryoshka dims; () = derived from the hidden size (16,32,64,128 for the tiny base)."""
    dim_weights: tuple[float, ...] = ()
    """One weight per dim (ascending dims); () = 1.0 each (the losses are summed)."""
    temperature: float = 0.05
    learn_temperature: bool = False
    """Train log(1/temperature) from `temperature`, capped at 1/0.01."""
    num_hard_negatives: int = 0
    """Hard-negative targets per query (synthetic data: one-attribute changes)."""
    hard_negatives: Literal["data", "mined"] = "data"
    """Where they come from: the data's own, or mined before each stage by the model as it is then
    (every training query against every training target, the top-ranked non-positives)."""
    mining_margin: float | None = None
    """None: every candidate but the positive may be mined. A value m skips candidates scoring
    above m x the positive's score as likely unlabelled positives (NV-Retriever's positive-aware
    mining uses 0.95); it needs a model that already ranks, since a base that was never trained
    as an embedder scores everything near the positive and the margin would leave nothing."""
    gather_across_processes: bool = True
    """Under DDP, every process's embeddings are negatives for every query (gathered with gradients)."""
    grad_cache_chunk: int = 0
    """> 0: GradCache with chunks of this many rows; 0: one forward per batch."""
    query_instruction: str = QUERY_INSTRUCTION
    target_instruction: str = TARGET_INSTRUCTION
    max_length: int = 1024
    """Longest embedding input in tokens; longer is an error, never truncated."""
    ema_decay: float = 0.0
    """> 0: keep an exponential moving average of the trainable weights and end training on it."""
    teacher: str = ""
    """Knowledge distillation (objectives/distillation.py): an embedder whose in-batch similarities the
    student learns: a finished mrl run (its directory or its model/), a checkpoint directory or a hub
    id. "" = none. Its pooling and instructions come from the run's config.yaml, or the teacher_* keys."""
    teacher_pooling: Literal["last", "mean"] | None = None
    """The teacher's pooling; None: its mrl run's own, else (a plain checkpoint) the student's `pooling`."""
    teacher_query_instruction: str | None = None
    """The teacher's query instruction; None: its mrl run's own, else the student's."""
    teacher_target_instruction: str | None = None
    """The teacher's target instruction; None: its mrl run's own, else the student's."""
    teacher_4bit: bool = False
    """Load the teacher's weights in 4-bit (bitsandbytes NF4) to save memory; it is never trained."""
    distillation_alpha: float = 0.0
    """Loss = (1 - alpha) x Matryoshka InfoNCE + alpha x distillation term; 0 = no distillation (a
    `teacher` is then only evaluated, as a row of the report). A run with alpha > 0 and no `teacher`
    fails before it starts (a shipped recipe cannot know where the user's teacher is, but must parse)."""
    distillation_temperature: float | None = None
    """tau of the `kl` term (both softmaxes; `mse` compares cosines and has none); None: the
    temperature the teacher run was trained at, else the student's `temperature`."""
    distillation_loss: Literal["kl", "mse"] = "kl"
    """"kl": KL(teacher || student) of the in-batch similarity distributions; "mse": squared error of
    the in-batch similarity matrices (objectives/distillation.py has the formulas)."""
    untaught_run: str = ""
    """A finished run of the same student trained without distillation (same recipe with
    distillation_alpha=0): its test metrics become the report's "untaught student" row. "" = none."""

    def __post_init__(self):
        if not 0 <= self.distillation_alpha <= 1:
            raise InputError(f"objective.options.distillation_alpha={self.distillation_alpha}: must be in [0, 1]")
        if self.distillation_temperature is not None and not 0 < self.distillation_temperature < math.inf:
            raise InputError(f"objective.options.distillation_temperature={self.distillation_temperature}: "
                             "must be positive (or null: the teacher's training temperature)")
        if self.temperature <= 0:
            raise InputError(f"objective.options.temperature={self.temperature}: must be positive")
        if any(d < 1 for d in self.dims):
            raise InputError(f"objective.options.dims={list(self.dims)}: every dim must be >= 1")
        if self.dim_weights and len(self.dim_weights) != len(self.dims):
            raise InputError("objective.options.dim_weights needs one weight per entry of objective.options.dims "
                             "(set dims explicitly to weight them)")
        if any(w < 0 for w in self.dim_weights):
            raise InputError("objective.options.dim_weights must be >= 0")
        if self.num_hard_negatives < 0 or self.grad_cache_chunk < 0:
            raise InputError("objective.options.num_hard_negatives and grad_cache_chunk must be >= 0")
        if self.hard_negatives == "mined" and self.num_hard_negatives < 1:
            raise InputError("objective.options.hard_negatives=mined needs objective.options.num_hard_negatives >= 1")
        if self.mining_margin is not None and not 0 < self.mining_margin <= 1:
            raise InputError(f"objective.options.mining_margin={self.mining_margin}: must be in (0, 1]")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"objective.options.ema_decay={self.ema_decay}: must be in [0, 1)")
        if self.max_length < 1:
            raise InputError(f"objective.options.max_length={self.max_length}: must be >= 1")


@dataclass(frozen=True)
class MDLMOptions:
    mask_prompt_loss: bool = True
    """Only the answer is masked and trained (prompt and image tokens stay visible); off: every text
    token of the conversation may be masked (image and vision-marker tokens never are)."""
    eps: float = 1e-3
    """t ~ U(eps, 1): keeps the 1/t weight finite."""
    canvas_length: int = 48
    """Answer canvas in tokens, for training and decoding; an answer (+ <|im_end|>) longer than it is
    an error, never truncated."""
    steps: int | None = None
    """Decoding steps (model calls) per canvas; None: canvas_length, i.e. one token per step."""
    block_length: int | None = None
    """Block-wise decoding: blocks of this many tokens, left to right; None: one block (the canvas)."""
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """Which predictions are committed each step: the most confident (re-masking the rest), or random ones."""
    temperature: float = 0.0
    """Sampling temperature of the predictions; 0 = argmax."""
    max_length: int = 2048
    """Longest allowed training sequence (prompt + canvas); longer is an error, never truncated."""
    shift_logits: bool = True
    """Token i is predicted by the logits at position i-1, as the autoregressive base was trained to
    (Dream's adaptation of an AR checkpoint); false: by the logits at position i (LLaDA, MDLM)."""

    def __post_init__(self):
        steps, block = self.decode_steps, self.decode_block
        if not 0 < self.eps < 1:
            raise InputError(f"objective.options.eps={self.eps}: must be in (0, 1)")
        if self.canvas_length < 2 or self.temperature < 0 or steps < 1:
            raise InputError("objective.options: need canvas_length >= 2, steps >= 1 and temperature >= 0")
        if block < 1 or self.canvas_length % block or steps % (self.canvas_length // block):
            raise InputError(f"objective.options: canvas_length={self.canvas_length} must be a multiple of "
                             f"block_length={block}, and steps={steps} a multiple of the number of blocks")

    @property
    def decode_steps(self) -> int:
        return self.steps if self.steps is not None else self.canvas_length

    @property
    def decode_block(self) -> int:
        return self.block_length if self.block_length is not None else self.canvas_length


@dataclass(frozen=True)
class GRPOOptions:
    """Group Relative Policy Optimization on the grounding task, by TRL's GRPOTrainer (objectives/grpo.py).
    Each prompt (an image and `data.prompt`) is answered `num_generations` times by sampling; each
    answer is rewarded (objectives/rewards.py) and its advantage is its reward against its group's."""
    num_generations: int = 4
    """Answers sampled per prompt (the group). At least 2: an advantage is relative to the group."""
    prompts_per_step: int = 4
    """Prompts per optimizer step and process; a step trains on prompts_per_step x num_generations answers."""
    temperature: float = 1.0
    """Sampling temperature of the answers."""
    max_completion_length: int = 64
    """Longest sampled answer in tokens (a box answer takes ~20-42)."""
    beta: float = 0.0
    """KL coefficient against the stage's starting model (0: no KL term and no reference pass;
    VLM-R1 uses 0.04). With LoRA the reference is the frozen starting adapter, not a second model."""
    epsilon: float = 0.2
    """PPO-style clip range of the probability ratio."""
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "dapo"
    """TRL's token aggregation: grpo (per-answer mean), dr_grpo (a constant), dapo (tokens of the whole batch)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the group's reward std (GRPO), the batch's, or not at all (Dr. GRPO)."""
    iou_weight: float = 1.0
    """Weight of `iou_reward`: IoU of the first parsed box with the true box (sets of boxes:
    `match_reward`, the Hungarian-matched IoU over max(predicted, true) boxes; D29)."""
    format_weight: float = 0.5
    """Weight of `format_reward`: 1 when the answer parses into exactly one box with the asked label
    (sets: a list all labelled as asked, or the family's explicit empty answer)."""
    length_weight: float = 0.0
    """Weight of `length_penalty`: minus the tokens beyond the true answer's length, over max_completion_length."""

    def __post_init__(self):
        if self.num_generations < 2:
            raise InputError(f"objective.options.num_generations={self.num_generations}: a GRPO group needs at "
                             "least 2 answers per prompt (advantages are relative to the group)")
        if self.prompts_per_step < 1 or self.max_completion_length < 1:
            raise InputError("objective.options.prompts_per_step and max_completion_length must be >= 1")
        if not 0 < self.temperature < math.inf:
            raise InputError(f"objective.options.temperature={self.temperature}: must be positive (sampling)")
        if not 0 <= self.beta < math.inf:
            raise InputError(f"objective.options.beta={self.beta}: the KL coefficient must be >= 0")
        if not 0 < self.epsilon < 1:
            raise InputError(f"objective.options.epsilon={self.epsilon}: the clip range must be in (0, 1)")
        weights = (self.iou_weight, self.format_weight, self.length_weight)
        if any(w < 0 or not math.isfinite(w) for w in weights) or not any(weights):
            raise InputError("objective.options.iou_weight, format_weight and length_weight must be >= 0, "
                             "and at least one > 0")


OBJECTIVE_OPTIONS: dict[str, type] = {"sft": SFTOptions, "mrl": MRLOptions, "mdlm": MDLMOptions,
                                      "grpo": GRPOOptions}
"""Objective name -> its options dataclass. A new objective adds its module in objectives/ and
its options here."""

SHARED_DATA = {"sft": {"grpo"}, "grpo": {"sft"}}
"""Objectives a stage may use instead of the recipe's: they read the same rows and are scored by
the same evaluator, so one run can chain them (r5-sft-grpo: SFT, then GRPO)."""


DETECTION_METRICS = ("mean_iou", "median_iou", "detection_rate", "iou_gt_0.5", "iou_gt_0.7", "ap", "ap50",
                     "exact_match", "precision", "recall", "f1", "matched_iou", "map", "map50", "acc50",
                     "negative_empty")
"""Higher-is-better metrics of the grounding evaluator: single-box data (mean_iou ... ap50), sets of
boxes (precision ... map50 at IoU 0.5, evaluation/detection.py), referring expressions (acc50),
negatives (negative_empty), conversations (exact_match)."""
DATASET_METRIC = {"synthetic-multi": "f1", "synthetic-refer": "acc50"}
"""Datasets whose default validation metric is not the objective's (their answers are sets of boxes)."""
RETRIEVAL_METRIC = re.compile(r"^((t2i|i2t|t2v|v2t)(\.\d+)?\.(recall@1|recall@5|recall@10|mrr@10|ndcg@10)"
                              r"|order(\.\d+)?)$")
DEFAULT_METRIC = {"sft": "mean_iou", "mdlm": "mean_iou", "grpo": "mean_iou", "mrl": "t2i.recall@1"}
"""Objective name -> the validation metric `train.metric_for_best` defaults to (higher is better);
mrl on video (a gallery of clips is scored as t2v/v2t) defaults to "t2v.recall@1"."""
VIDEO_DATASETS = ("synthetic-video",)
"""Sources known to hold video targets before they are opened (the default metric names t2v)."""


def check_metric(objective: str, metric: str, where: str) -> None:
    """A metric the objective's evaluator reports: detection names (exact_match on conversation
    data), or mrl's `t2i|i2t[.dim].recall@k|mrr@10|ndcg@10`."""
    valid = RETRIEVAL_METRIC.match(metric) if objective == "mrl" else metric in DETECTION_METRICS
    if not valid:
        choices = ("t2i.recall@1, i2t.recall@5, t2i.16.ndcg@10, t2v.recall@1, order, ... "
                   "(t2i|i2t|t2v|v2t[.dim].recall@1|5|10, mrr@10, ndcg@10; order[.dim] on video)"
                   if objective == "mrl" else ", ".join(DETECTION_METRICS))
        raise InputError(f"{where}={metric!r} is not a metric of objective {objective!r}: choose one of {choices}")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: str = "sft"
    """Objective module in vlm_recipes.objectives: sft, grpo, mrl or mdlm."""
    options: Any = None
    """The objective's own options dataclass (OBJECTIVE_OPTIONS[name]); None = its defaults."""

    def __post_init__(self):
        if self.name not in OBJECTIVE_OPTIONS:
            raise InputError(f"unknown objective.name {self.name!r}: choose one of {', '.join(OBJECTIVE_OPTIONS)}")
        kind = OBJECTIVE_OPTIONS[self.name]
        if self.options is None:
            object.__setattr__(self, "options", kind())
        elif not isinstance(self.options, kind):
            raise InputError(f"objective.options: expected {kind.__name__} for objective {self.name!r}")

    @classmethod
    def from_raw(cls, data: Any, where: str) -> ObjectiveConfig:
        """The options are parsed into the named objective's dataclass, strictly, here and only here."""
        data = _mapping(data, where)
        unknown = sorted(set(data) - {"name", "options"})
        if unknown:
            raise InputError(f"unknown key {_join(where, unknown[0])!r}: valid keys here are name, options")
        name = _convert(str, data.get("name", cls.name), _join(where, "name"))
        if name not in OBJECTIVE_OPTIONS:
            raise InputError(f"unknown {_join(where, 'name')} {name!r}: choose one of {', '.join(OBJECTIVE_OPTIONS)}")
        return cls(name, from_dict(OBJECTIVE_OPTIONS[name], data.get("options"), _join(where, "options")))


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
            if own != self.objective.name and own not in SHARED_DATA.get(self.objective.name, ()):
                raise InputError(f"stages.{index}.objective.name={own!r} cannot follow the recipe's objective "
                                 f"{self.objective.name!r}: a stage may only switch between objectives that share "
                                 "data and evaluator (sft and grpo); make it a separate recipe")
            self._check_validation(stage.train, f"stages.{index}.train")

    def _check_validation(self, train: TrainConfig, where: str) -> None:
        check_metric(self.objective.name, self.metric_for_best(train), f"{where}.metric_for_best")
        if self.data.num_val == 0 and (train.load_best_at_end or train.early_stopping_patience):
            raise InputError(f"{where}.load_best_at_end / early_stopping_patience need a validation split: "
                             "set data.num_val >= 1")
        ema = getattr(self.objective.options, "ema_decay", 0.0)
        if ema and train.load_best_at_end:
            raise InputError(f"{where}.load_best_at_end: objective.options.ema_decay ends training on the "
                             "weights' average, which would replace the best checkpoint; use one of the two")

    def objective_for(self, stage: StageConfig) -> ObjectiveConfig:
        """The objective that trains `stage`: its own, else the recipe's."""
        return stage.objective or self.objective

    def metric_for_best(self, train: TrainConfig) -> str:
        """The stage's validation metric: its own `metric_for_best`, else the objective's default."""
        if train.metric_for_best:
            return train.metric_for_best
        source = self.data.dataset.split("[")[0]
        video = self.objective.name == "mrl" and source in VIDEO_DATASETS
        if self.objective.name != "mrl" and source in DATASET_METRIC:
            return DATASET_METRIC[source]
        return "t2v.recall@1" if video else DEFAULT_METRIC[self.objective.name]


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
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise InputError(f"recipe file {path}: the top level must be a mapping of recipe keys (name, stages, ...), "
                         f"got {got}")
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
    # `objective.*` is the recipe's (a stage's own is set as stages.N.objective...)
    stage_keys = {f.name for f in dataclasses.fields(StageConfig)} - {"name", "objective"}
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
    data = _mapping(data, where)
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


def _mapping(data: Any, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{where or 'recipe'}: expected a mapping, got {data!r}")
    return data


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return tp.from_raw(value, where) if hasattr(tp, "from_raw") else from_dict(tp, value, where)
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
