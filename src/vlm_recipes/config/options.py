"""Objective options and specs: one frozen options dataclass per objective, parsed once at load
time, and one `ObjectiveSpec` per objective saying what the rest of the package must know about it
(its options class, the metric that picks the best step, which metric names it reports, which
objectives share its data and evaluator, and the module that implements it).

Adding an objective is one entry in `OBJECTIVES` plus one module exposing `OBJECTIVE_CLASS`
(tests/test_config.py::test_a_new_objective_is_one_spec_and_one_module).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from ..errors import InputError

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
    """Prompts per optimizer step and process; a step trains on prompts_per_step x num_generations answers,
    also under gradient accumulation (g micro-batches of prompts_per_step x num_generations / g answers,
    which must divide evenly)."""
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


def check_prompts_per_step(options, accumulation_steps: int, where: str) -> None:
    """GRPO splits a step's prompts_per_step x num_generations answers into the stage's
    gradient_accumulation_steps micro-batches: they must divide evenly (D32)."""
    if not isinstance(options, GRPOOptions):
        return
    answers = options.prompts_per_step * options.num_generations
    if answers % accumulation_steps:
        raise InputError(f"{where}.train.gradient_accumulation_steps={accumulation_steps}: must divide "
                         f"objective.options.prompts_per_step x num_generations = {answers} (the answers of one "
                         "optimizer step, split into that many micro-batches)")


# --- what the package knows about each objective ------------------------------------------------

DETECTION_METRICS = ("mean_iou", "median_iou", "detection_rate", "iou_gt_0.5", "iou_gt_0.7", "ap", "ap50",
                     "exact_match", "precision", "recall", "f1", "matched_iou", "map", "map50", "acc50",
                     "negative_empty")
"""Higher-is-better metrics of the grounding evaluator: single-box data (mean_iou ... ap50), sets of
boxes (precision ... map50 at IoU 0.5, evaluation/detection.py), referring expressions (acc50),
negatives (negative_empty), conversations (exact_match)."""
GROUNDING_DATASET_METRICS = (("synthetic-multi", "f1"), ("synthetic-refer", "acc50"))
"""Datasets whose default validation metric is not the answer objectives' (their answers are sets of
boxes, or referring expressions; D29)."""
RETRIEVAL_METRIC = re.compile(r"^((t2i|i2t|t2v|v2t)(\.\d+)?\.(recall@1|recall@5|recall@10|mrr@10|ndcg@10)"
                              r"|order(\.\d+)?)$")
VIDEO_DATASETS = ("synthetic-video",)
"""Sources known to hold video targets before they are opened (the default metric names t2v)."""


@dataclass(frozen=True)
class MetricNames:
    """The metric names an objective's evaluator reports (what `train.metric_for_best` may name)."""
    pattern: re.Pattern
    choices: str
    """How the one-line error lists them."""

    def __contains__(self, metric: str) -> bool:
        return self.pattern.match(metric) is not None


ANSWER_METRICS = MetricNames(re.compile("^(" + "|".join(map(re.escape, DETECTION_METRICS)) + ")$"),
                             ", ".join(DETECTION_METRICS))
"""Detection names (exact_match on conversation data): AnswerEvaluator's."""
RETRIEVAL_METRICS = MetricNames(RETRIEVAL_METRIC, "t2i.recall@1, i2t.recall@5, t2i.16.ndcg@10, t2v.recall@1, order, "
                                "... (t2i|i2t|t2v|v2t[.dim].recall@1|5|10, mrr@10, ndcg@10; order[.dim] on video)")
"""RetrievalEvaluator's: `t2i|i2t|t2v|v2t[.dim].recall@k|mrr@10|ndcg@10`, `order[.dim]`."""


@dataclass(frozen=True)
class ObjectiveSpec:
    """Everything outside an objective's own module needs to know about it."""
    options: type
    """Its options dataclass (`objective.options` parses into it)."""
    metrics: MetricNames
    default_metric: str
    """What `train.metric_for_best` defaults to (higher is better)."""
    video_metric: str | None = None
    """The default on a source of video targets (VIDEO_DATASETS), when it differs."""
    shares_data_with: frozenset[str] = frozenset()
    """Objectives a stage may use instead of this one: they read the same rows and are scored by the
    same evaluator, so one run can chain them (r5-sft-grpo: SFT, then GRPO)."""
    module: str = ""
    """The module exposing OBJECTIVE_CLASS; "" = vlm_recipes.objectives.<name>."""
    packs: bool = False
    """Its batches are padded next-token batches that `train.packing` / `group_by_length` can rebuild (D31)."""
    dataset_metrics: tuple[tuple[str, str], ...] = ()
    """(source, metric): the default on these sources, when it differs (synthetic-multi: f1)."""

    def default_metric_for(self, dataset: str) -> str:
        source = dataset.split("[")[0]
        if self.video_metric and source in VIDEO_DATASETS:
            return self.video_metric
        return dict(self.dataset_metrics).get(source, self.default_metric)


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "sft": ObjectiveSpec(SFTOptions, ANSWER_METRICS, "mean_iou", shares_data_with=frozenset({"grpo"}), packs=True,
                         dataset_metrics=GROUNDING_DATASET_METRICS),
    "mrl": ObjectiveSpec(MRLOptions, RETRIEVAL_METRICS, "t2i.recall@1", video_metric="t2v.recall@1"),
    "mdlm": ObjectiveSpec(MDLMOptions, ANSWER_METRICS, "mean_iou", dataset_metrics=GROUNDING_DATASET_METRICS),
    "grpo": ObjectiveSpec(GRPOOptions, ANSWER_METRICS, "mean_iou", shares_data_with=frozenset({"sft"}),
                          dataset_metrics=GROUNDING_DATASET_METRICS),
}
"""Objective name -> its spec. A new objective adds its entry here and its module in objectives/."""


def spec_of(name: str, where: str = "objective.name") -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise InputError(f"unknown {where} {name!r}: choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def check_metric(objective: str, metric: str, where: str) -> None:
    """`metric` is one the objective's evaluator reports, else a one-line InputError naming `where`."""
    names = spec_of(objective).metrics
    if metric not in names:
        raise InputError(f"{where}={metric!r} is not a metric of objective {objective!r}: choose one of "
                         f"{names.choices}")
