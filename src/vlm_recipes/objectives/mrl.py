"""Contrastive Matryoshka (MRL) training: the VLM as a text<->image (and text<->video) embedding model.

Loss: symmetric in-batch InfoNCE (text->target over [all positives, then all hard negatives];
target->text over all queries), summed over the Matryoshka dims with per-dim weights, each dim
scoring TRUNCATED AND RE-NORMALISED embeddings. Under DDP, embeddings of every process are
gathered WITH gradients, and this process's queries are labelled `rank * local_batch + i`.
With `grad_cache_chunk`, the step runs as GradCache (training/grad_cache.py) so the contrastive
batch does not depend on memory (gradient accumulation would not add negatives).
With `teacher` and `distillation_alpha`, a teacher embedder's in-batch similarities are taught too
(objectives/distillation.py: the loss; models/teacher.py: the teacher and its cached embeddings).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from ..config import MRLOptions, VideoConfig
from ..data.retrieval import RetrievalSample
from ..data.splits import load_splits
from ..errors import InputError
from ..evaluation.retrieval import (
    RetrievalEvaluator,
    directions,
    encode_queries_and_gallery,
    target_rows,
    unique_targets,
)
from ..models.distributed import in_batch_layout, rank_and_world
from ..models.embedding import EncodeSettings, embed, hidden_size, kind_of, resolve_dims, tokenize, truncate
from ..models.teacher import Teacher, TeacherBatch, TeacherCache, WithTeacher, untaught_metrics
from .base import DropOnTrainEnd, Objective
from .distillation import distillation_loss
from .grad_cache import cached_step, split_rows

SCALE_PARAM = "mrl_logit_scale"  # learnable log(1/temperature), lives on the model during training only
MAX_LOGIT_SCALE = 100.0  # as CLIP: temperature >= 0.01 keeps the softmax trainable


# --- the loss -----------------------------------------------------------------------------

def matryoshka_info_nce(queries: torch.Tensor, targets: torch.Tensor, dims: tuple[int, ...],
                        weights: tuple[float, ...], logit_scale: torch.Tensor | float, gather: bool = True
                        ) -> torch.Tensor:
    """Symmetric InfoNCE summed over Matryoshka dims.

    queries (B, H); targets ((1 + k) * B, H) laid out [B positives, then k*B hard negatives] (the
    positive of query i is targets[i]). With W processes the candidates are [all W*B positives,
    then all W*k*B negatives], so query i of rank r has label r*B + i in both directions.
    Returns this process's mean over its B queries; DDP's gradient averaging makes it the global mean.
    """
    batch = queries.shape[0]
    positives, candidates, all_queries = in_batch_layout(queries, targets, gather, with_grad=True)
    rank = rank_and_world()[0] if gather else 0
    labels = torch.arange(batch, device=queries.device) + rank * batch  # positives come first in candidates
    total = queries.new_zeros((), dtype=torch.float32)
    for dim, weight in zip(dims, weights):
        q, p = truncate(queries, dim), truncate(positives, dim)  # (B, dim), re-normalised
        text_to_target = F.cross_entropy(logit_scale * q @ truncate(candidates, dim).T, labels)
        target_to_text = F.cross_entropy(logit_scale * p @ truncate(all_queries, dim).T, labels)
        total = total + weight * (text_to_target + target_to_text) / 2
    return total


# --- batches ------------------------------------------------------------------------------

class MRLCollator:
    """list[RetrievalSample] -> query and target processor batches ("query_*", "target_*").

    Targets are [every positive, then every sample's first k hard negatives]; a row's visual is an
    image, a video or nothing, and rows of each kind share a batch. Each group carries
    `*_images_per_row` and `*_videos_per_row` so GradCache can split its flat pixel_values and
    pixel_values_videos by row.
    """

    def __init__(self, processor, options: MRLOptions, video: VideoConfig = VideoConfig()):
        self.processor, self.options, self.video = processor, options, video

    def __call__(self, samples: list[RetrievalSample]) -> dict:
        k = self.options.num_hard_negatives
        short = next((s for s in samples if len(s.hard_negatives) < k), None)
        if short is not None:
            raise InputError(f"sample {short.sample_id} has {len(short.hard_negatives)} hard negatives < "
                             f"objective.options.num_hard_negatives={k}")
        targets = [s.target for s in samples] + [n for s in samples for n in s.hard_negatives[:k]]
        batch = self._group("query", [s.query_text for s in samples], [s.query_visual for s in samples],
                            self.options.query_instruction)
        batch.update(self._group("target", [t.text for t in targets], [t.visual for t in targets],
                                 self.options.target_instruction))
        return batch

    def _group(self, prefix: str, texts, visuals, instruction: str) -> dict:
        encoded = tokenize(self.processor, texts, visuals, instruction, self.options.max_length, video=self.video)
        for kind in ("image", "video"):
            encoded[f"{kind}s_per_row"] = torch.tensor([int(kind_of(v) == kind) for v in visuals])
        return {f"{prefix}_{key}": value for key, value in encoded.items()}


def teacher_rows(inputs: dict) -> TeacherBatch | None:
    """The teacher's cached rows of a batch (models.teacher.WithTeacher), if it carries them."""
    if "teacher_queries" not in inputs:
        return None
    return TeacherBatch(inputs["teacher_queries"], inputs["teacher_targets"])


def group_inputs(inputs: dict, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model inputs of one group, and its images and videos per row ({"image": (rows,), "video": (rows,)})."""
    part = {key[len(prefix) + 1:]: value for key, value in inputs.items() if key.startswith(prefix + "_")}
    return part, {kind: part.pop(f"{kind}s_per_row") for kind in ("image", "video")}


# --- the objective ------------------------------------------------------------------------

class MRL(Objective):
    name = "mrl"
    data_kind = "retrieval"

    def __init__(self, recipe, processor, family, config=None):
        super().__init__(recipe, processor, family, config)
        self.collate = MRLCollator(processor, self.options, recipe.data.video)
        self.teacher, self.teacher_cache = None, TeacherCache()

    def prepare_run(self, device: str) -> None:
        """The teacher and the untaught run are checked (no weights yet), before anything is written."""
        options = self.options
        if options.distillation_alpha > 0 and not options.teacher:
            raise InputError(f"recipe {self.recipe.name}: objective.options.distillation_alpha="
                             f"{options.distillation_alpha} distils from a teacher; name one with --set "
                             "objective.options.teacher=runs/<a finished mrl run>/model")
        if options.teacher:
            self.teacher = Teacher.resolve(options, self.recipe.eval.batch_size)
        if options.untaught_run:
            untaught_metrics(options.untaught_run)

    def reference_rows(self, test: list, device: str) -> dict:
        """The report's teacher row (the teacher embedding the test split as it embeds) and the
        untaught student's (from `untaught_run`), at the student's dims."""
        rows = {}
        if self.teacher is not None:
            self.teacher.load(device)
            model = self.teacher.model
            dims = [d for d in self.options.dims if d <= hidden_size(model)] if self.options.dims else ()
            evaluator = RetrievalEvaluator(self.teacher.processor, self.teacher.settings, tuple(dims))
            rows["teacher"] = evaluator.evaluate(model, test, desc="teacher").metrics
            if not self.distilling:  # only evaluated: its weights need not sit beside the student's
                self.teacher.release()
        if self.options.untaught_run:
            rows["untaught"] = untaught_metrics(self.options.untaught_run)
        return rows

    @property
    def distilling(self) -> bool:
        """A teacher whose similarities are in the loss (alpha > 0), not only evaluated."""
        return self.teacher is not None and self.options.distillation_alpha > 0

    def load_data(self):
        options = self.options
        from_data = options.num_hard_negatives if options.hard_negatives == "data" else 0
        data = load_splits(self.recipe.data, self.data_kind, self.recipe.seed, num_hard_negatives=from_data)
        self._check_metric_names(data["val"])
        return data

    def _check_metric_names(self, val: list[RetrievalSample]) -> None:
        """A gallery of videos is scored as t2v/v2t (RetrievalEvaluator): a metric_for_best that names
        t2i/i2t would be missing at the first validation, after the base evaluation; say so now."""
        names = directions(unique_targets(val)) if val else None
        for index, stage in enumerate(self.recipe.stages):
            metric = self.recipe.metric_for_best(stage.train)
            if names and metric.split(".")[0] not in (*names, "order"):
                raise InputError(f"stages.{index}.train.metric_for_best={metric!r}: this data's validation gallery "
                                 f"is scored as {'/'.join(names)}; set e.g. train.metric_for_best={names[0]}.recall@1")
            if names and metric.startswith("order") and names[0] != "t2v":
                raise InputError(f"stages.{index}.train.metric_for_best={metric!r}: the order test needs video "
                                 "targets; this data's validation gallery has none")

    def prepare_trainer(self, trainer) -> None:
        options = self.options
        if options.hard_negatives == "mined":
            # a batch that fits for training (with gradients) fits for the encoding pass
            trainer.train_dataset = mine_hard_negatives(trainer.model, self.processor, list(trainer.train_dataset),
                                                        options, trainer.args.per_device_train_batch_size,
                                                        self.recipe.data.video)
        if self.distilling:  # after mining: the mined negatives are cached too
            device = str(next(trainer.model.parameters()).device)
            self.teacher_cache.fill_from(self.teacher, trainer.train_dataset, options.num_hard_negatives, device)
            self.teacher.release()
            trainer.data_collator = WithTeacher(trainer.data_collator, self.teacher_cache, options.num_hard_negatives)
        if options.learn_temperature:
            model = trainer.model
            device = next(model.parameters()).device
            scale = torch.nn.Parameter(torch.tensor(math.log(1 / options.temperature), device=device))
            model.register_parameter(SCALE_PARAM, scale)
            trainer.add_callback(DropTemperature(model, SCALE_PARAM))
        if options.ema_decay > 0:
            trainer.add_callback(WeightEMA(trainer.model, options.ema_decay))

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        queries, _ = group_inputs(inputs, "query")
        targets, _ = group_inputs(inputs, "target")
        pooling = self.options.pooling
        return self.loss(model, embed(model, queries, pooling), embed(model, targets, pooling), teacher_rows(inputs))

    def training_step(self, trainer, model, inputs, num_items_in_batch=None):
        chunk = self.options.grad_cache_chunk
        if chunk <= 0:
            return None  # the Trainer's own step, with compute_loss above
        model.train()
        inputs = trainer._prepare_inputs(inputs)
        parts = [split_rows(*group_inputs(inputs, prefix), chunk) for prefix in ("query", "target")]
        scale = 1.0 / trainer.current_gradient_accumulation_steps  # as Trainer.training_step scales its loss

        def encode_chunk(rows):
            with trainer.compute_loss_context_manager():
                return embed(model, rows, self.options.pooling)

        teacher = teacher_rows(inputs)
        return cached_step(encode_chunk, parts, lambda q, t: self.loss(model, q, t, teacher) * scale,
                           trainer.accelerator.backward, lambda: trainer.accelerator.no_sync(model))

    def loss(self, model, queries, targets, teacher: TeacherBatch | None = None) -> torch.Tensor:
        """The Matryoshka InfoNCE; with the teacher's rows of the batch, (1 - alpha) x it + alpha x
        the distillation term (objectives/distillation.py)."""
        options = self.options
        model = getattr(model, "module", model)  # the DDP wrapper holds the model's config and temperature
        dims = resolve_dims(options.dims, hidden_size(model))
        weights = options.dim_weights or (1.0,) * len(dims)
        if options.dim_weights:  # weights follow the configured order; dims are used sorted
            weights = tuple(w for _, w in sorted(zip(options.dims, options.dim_weights)))
        learned = getattr(model, SCALE_PARAM, None)
        logit_scale = learned.clamp(max=math.log(MAX_LOGIT_SCALE)).exp() if learned is not None \
            else 1.0 / options.temperature
        contrastive = matryoshka_info_nce(queries, targets, dims, weights, logit_scale, options.gather_across_processes)
        if teacher is None or options.distillation_alpha == 0:
            return contrastive
        taught = distillation_loss(queries, targets, teacher, dims, weights, options.distillation_loss,
                                   self.distillation_temperature, options.gather_across_processes)
        return (1 - options.distillation_alpha) * contrastive + options.distillation_alpha * taught

    @property
    def distillation_temperature(self) -> float:
        """tau: the option, else the teacher run's training temperature, else the student's."""
        options = self.options
        teacher = self.teacher.temperature if self.teacher is not None else None
        return options.distillation_temperature or teacher or options.temperature

    def every_step_sees_images(self, samples: list) -> bool:
        # GradCache replays query chunks (text only) after target chunks, each its own backward
        return self.options.grad_cache_chunk <= 0 and all(s.target.visual is not None for s in samples)

    def evaluator(self):
        settings = EncodeSettings.from_options(self.options, self.recipe.eval.batch_size, self.recipe.data.video)
        return RetrievalEvaluator(self.processor, settings, self.options.dims)

    def summary(self, model) -> dict:
        summary = {"dims": list(resolve_dims(self.options.dims, hidden_size(model)))}
        if self.teacher is not None:
            options = self.options
            summary["distillation"] = {
                "teacher": self.teacher.source, "alpha": options.distillation_alpha, "loss": options.distillation_loss,
                "temperature": self.distillation_temperature, "teacher_pooling": self.teacher.settings.pooling,
                "teacher_cache_seconds": round(self.teacher_cache.seconds, 1),
                "teacher_cached_inputs": len(self.teacher_cache.queries) + len(self.teacher_cache.targets),
                **({"untaught_run": options.untaught_run} if options.untaught_run else {})}
        return summary


def mine_hard_negatives(model, processor, samples: list[RetrievalSample], options: MRLOptions,
                        batch_size: int, video: VideoConfig = VideoConfig()) -> list[RetrievalSample]:
    """`samples` with `options.num_hard_negatives` mined negatives each: the training targets the
    model ranks highest for the query, skipping its own target and any candidate scoring above
    `mining_margin` x the positive's score (that close, it is often an unlabelled positive)."""
    k = options.num_hard_negatives
    gallery = unique_targets(samples)
    if len(gallery) <= k:
        raise InputError(f"hard_negatives=mined: {len(gallery)} distinct training targets cannot give "
                         f"{k} negatives per query; lower objective.options.num_hard_negatives")
    # each of N processes encodes 1/N of the batches; every process ranks the gathered whole (D20)
    queries, targets = encode_queries_and_gallery(model, processor, samples, gallery,
                                                  EncodeSettings.from_options(options, batch_size, video))
    scores = queries @ targets.T  # (Q, G), full dim
    rows, own = torch.arange(len(samples)), target_rows(samples, gallery)
    if options.mining_margin is not None:
        positive = scores[rows, own]
        # margin x positive for a positive score, and still below the positive when it is negative
        ceiling = positive - (1 - options.mining_margin) * positive.abs()
        scores = scores.masked_fill(scores > ceiling[:, None], -math.inf)
    scores[rows, own] = -math.inf
    top = scores.topk(k, dim=1)
    if torch.isinf(top.values).any():
        raise InputError(f"hard_negatives=mined: a query has fewer than {k} candidates under "
                         f"objective.options.mining_margin={options.mining_margin}; raise it towards 1 "
                         "or set it to null (no filtering)")
    return [replace(s, hard_negatives=[gallery[j] for j in row]) for s, row in zip(samples, top.indices.tolist())]


# --- training extras ----------------------------------------------------------------------

class DropTemperature(DropOnTrainEnd):
    """Logs the learned temperature, then removes its parameter before the model is saved."""

    def on_train_end(self, args, state, control, **kwargs):
        value = getattr(self.model, self.name)
        state.log_history.append({"learned_temperature": math.exp(-value.detach().item()), "step": state.global_step})
        super().on_train_end(args, state, control, **kwargs)


class WeightEMA(TrainerCallback):
    """Exponential moving average of the trainable weights, copied into the model when training ends."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.params = [p for name, p in model.named_parameters() if p.requires_grad and name != SCALE_PARAM]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        for average, param in zip(self.shadow, self.params):
            average.lerp_(param.detach(), 1 - self.decay)

    @torch.no_grad()
    def on_train_end(self, args, state, control, **kwargs):
        for average, param in zip(self.shadow, self.params):
            param.copy_(average)


OBJECTIVE_CLASS = MRL
