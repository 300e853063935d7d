"""Contrastive Matryoshka (MRL) training: the VLM as a text<->image embedding model.

Loss: symmetric in-batch InfoNCE (text->target over [all positives, then all hard negatives];
target->text over all queries), summed over the Matryoshka dims with per-dim weights, each dim
scoring TRUNCATED AND RE-NORMALISED embeddings. Under DDP, embeddings of every process are
gathered WITH gradients, and this process's queries are labelled `rank * local_batch + i`.
With `grad_cache_chunk`, the step runs as GradCache (training/grad_cache.py) so the contrastive
batch does not depend on memory (gradient accumulation would not add negatives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from transformers import TrainerCallback

from ..data.retrieval import RetrievalSample, Target, load_retrieval_splits
from ..errors import InputError
from ..evaluation.retrieval import metrics_by_dim, write_retrieval_report
from ..models.embedding import (QUERY_INSTRUCTION, TARGET_INSTRUCTION, EncodeSettings, embed, encode, encode_texts,
                                hidden_size, resolve_dims, tokenize, truncate)
from ..training.grad_cache import cached_step, split_rows
from ..training.trainer import DropOnTrainEnd
from .base import Objective

SCALE_PARAM = "mrl_logit_scale"  # learnable log(1/temperature), lives on the model during training only
MAX_LOGIT_SCALE = 100.0  # as CLIP: temperature >= 0.01 keeps the softmax trainable


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

    def __post_init__(self):
        if self.temperature <= 0:
            raise InputError(f"objective.options.temperature={self.temperature}: must be positive")
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

    def encode_settings(self, batch_size: int) -> EncodeSettings:
        return EncodeSettings(self.pooling, self.query_instruction, self.target_instruction, self.max_length,
                              batch_size)


# --- the loss -----------------------------------------------------------------------------

def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """(n, h) on each of W processes -> (W*n, h) in rank order; gradients flow back to each shard
    (summed over the processes that used it: backward is a reduce-scatter)."""
    from torch.distributed._functional_collectives import all_gather_single_autograd

    gathered = all_gather_single_autograd(tensor.contiguous(), 0, dist.group.WORLD)
    return gathered.wait() if hasattr(gathered, "wait") else gathered


def distributed() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
    positives, negatives = targets[:batch], targets[batch:]
    rank, world = distributed() if gather else (0, 1)
    all_queries, all_positives, all_negatives = queries, positives, negatives
    if world > 1:
        all_queries, all_positives = gather_with_grad(queries), gather_with_grad(positives)
        all_negatives = gather_with_grad(negatives) if negatives.shape[0] else negatives
    candidates = torch.cat([all_positives, all_negatives])  # positives first: labels index them
    labels = torch.arange(batch, device=queries.device) + rank * batch
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

    Targets are [every positive, then every sample's first k hard negatives]; each group carries
    `*_images_per_row` so GradCache can split its flat pixel_values by row. The resolved options
    ride along under "mrl_options" (the loss needs them; the Trainer passes non-tensors through).
    """

    def __init__(self, processor, options: MRLOptions):
        self.processor, self.options = processor, options

    def __call__(self, samples: list[RetrievalSample]) -> dict:
        k = self.options.num_hard_negatives
        short = next((s for s in samples if len(s.hard_negatives) < k), None)
        if short is not None:
            raise InputError(f"sample {short.sample_id} has {len(short.hard_negatives)} hard negatives < "
                             f"objective.options.num_hard_negatives={k}")
        targets = [s.target for s in samples] + [n for s in samples for n in s.hard_negatives[:k]]
        batch = self._group("query", [s.query for s in samples], [None] * len(samples), self.options.query_instruction)
        batch.update(self._group("target", [t.text for t in targets], [t.image for t in targets],
                                 self.options.target_instruction))
        batch["mrl_options"] = self.options
        return batch

    def _group(self, prefix: str, texts, images, instruction: str) -> dict:
        encoded = tokenize(self.processor, texts, images, instruction, self.options.max_length)
        encoded["images_per_row"] = torch.tensor([int(img is not None) for img in images])
        return {f"{prefix}_{key}": value for key, value in encoded.items()}


def group_inputs(inputs: dict, prefix: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The model inputs of one group and its images per row."""
    part = {key[len(prefix) + 1:]: value for key, value in inputs.items() if key.startswith(prefix + "_")}
    return part, part.pop("images_per_row")


# --- the objective ------------------------------------------------------------------------

class MRL(Objective):
    name = "mrl"
    Options = MRLOptions

    def load_data(self, recipe):
        data, options = recipe.data, self.options(recipe)
        from_data = options.num_hard_negatives if options.hard_negatives == "data" else 0
        return load_retrieval_splits(data.dataset, data.num_train, data.num_test, recipe.seed,
                                     from_data, data.max_train, data.max_test)

    def make_collator(self, processor, family, recipe):
        return MRLCollator(processor, self.options(recipe))

    def prepare_trainer(self, trainer) -> None:
        options: MRLOptions = trainer.data_collator.options
        if options.hard_negatives == "mined":
            # a batch that fits for training (with gradients) fits for the encoding pass
            trainer.train_dataset = mine_hard_negatives(trainer.model, trainer.data_collator.processor,
                                                        list(trainer.train_dataset), options,
                                                        trainer.args.per_device_train_batch_size)
        if options.learn_temperature:
            model = trainer.model
            device = next(model.parameters()).device
            scale = torch.nn.Parameter(torch.tensor(math.log(1 / options.temperature), device=device))
            model.register_parameter(SCALE_PARAM, scale)
            trainer.add_callback(DropTemperature(model, SCALE_PARAM))
        if options.ema_decay > 0:
            trainer.add_callback(WeightEMA(trainer.model, options.ema_decay))

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        options: MRLOptions = inputs["mrl_options"]
        queries, _ = group_inputs(inputs, "query")
        targets, _ = group_inputs(inputs, "target")
        return self._loss(model, options, embed(model, queries, options.pooling),
                          embed(model, targets, options.pooling))

    def training_step(self, trainer, model, inputs, num_items_in_batch=None):
        options: MRLOptions = inputs["mrl_options"]
        if options.grad_cache_chunk <= 0:
            return None  # the Trainer's own step, with compute_loss above
        model.train()
        inputs = trainer._prepare_inputs(inputs)
        parts = [split_rows(*group_inputs(inputs, prefix), options.grad_cache_chunk) for prefix in ("query", "target")]
        scale = 1.0 / trainer.current_gradient_accumulation_steps  # as Trainer.training_step scales its loss

        def encode_chunk(chunk):
            with trainer.compute_loss_context_manager():
                return embed(model, chunk, options.pooling)

        loss = cached_step(encode_chunk, parts, lambda q, t: self._loss(model, options, q, t) * scale,
                           trainer.accelerator.backward, lambda: trainer.accelerator.no_sync(model))
        return loss

    def _loss(self, model, options: MRLOptions, queries, targets) -> torch.Tensor:
        dims = resolve_dims(options.dims, hidden_size(model))
        weights = options.dim_weights or (1.0,) * len(dims)
        if options.dim_weights:  # weights follow the configured order; dims are used sorted
            weights = tuple(w for _, w in sorted(zip(options.dims, options.dim_weights)))
        learned = getattr(getattr(model, "module", model), SCALE_PARAM, None)
        logit_scale = learned.clamp(max=math.log(MAX_LOGIT_SCALE)).exp() if learned is not None \
            else 1.0 / options.temperature
        return matryoshka_info_nce(queries, targets, dims, weights, logit_scale, options.gather_across_processes)

    def evaluate(self, model, processor, family, recipe, samples, desc):
        options = self.options(recipe)
        settings = options.encode_settings(recipe.eval.batch_size)
        gallery = unique_targets(samples)
        keys = [t.key for t in gallery]
        queries = encode_texts(model, processor, [s.query for s in samples], settings)  # (Q, H)
        targets = encode_targets(model, processor, gallery, settings)  # (G, H)
        relevant = torch.zeros(len(samples), len(keys), dtype=torch.bool)
        relevant[torch.arange(len(samples)), target_rows(samples, gallery)] = True
        dims = resolve_dims(options.dims, hidden_size(model))
        top = (queries @ targets.T).topk(min(10, len(keys)), dim=1).indices  # full dim
        predictions = [{"query": s.query, "target": s.target.key, "top10": [keys[j] for j in row]}
                       for s, row in zip(samples, top.tolist())]
        return {"metrics": metrics_by_dim(queries, targets, relevant, dims), "predictions": predictions,
                "gallery_size": len(keys), "num_queries": len(samples)}

    def summary(self, model, recipe) -> dict:
        return {"dims": list(resolve_dims(self.options(recipe).dims, hidden_size(model)))}

    def report(self, run_dir, metrics, base_eval, finetuned_eval, samples):
        write_retrieval_report(run_dir, metrics, finetuned_eval, samples)


def unique_targets(samples: list[RetrievalSample]) -> list[Target]:
    """The gallery: each sample's target once (equal keys are one item), in first-seen order."""
    seen: dict[str, Target] = {}
    for s in samples:
        seen.setdefault(s.target.key, s.target)
    return list(seen.values())


def target_rows(samples: list[RetrievalSample], gallery: list[Target]) -> torch.Tensor:
    """Each sample's own target as a row of `gallery` (matched by key)."""
    index = {t.key: i for i, t in enumerate(gallery)}
    return torch.tensor([index[s.target.key] for s in samples])


def encode_targets(model, processor, targets: list[Target], settings) -> torch.Tensor:
    """(N, H) embeddings in `targets` order: images (with their optional text) and text-only
    targets, all with the target instruction (rows are padding-invariant, so they may share a batch)."""
    return encode(model, processor, [t.text for t in targets], [t.image for t in targets],
                  settings.target_instruction, settings)


def mine_hard_negatives(model, processor, samples: list[RetrievalSample], options: MRLOptions,
                        batch_size: int) -> list[RetrievalSample]:
    """`samples` with `options.num_hard_negatives` mined negatives each: the training targets the
    model ranks highest for the query, skipping its own target and any candidate scoring above
    `mining_margin` x the positive's score (that close, it is often an unlabelled positive)."""
    k = options.num_hard_negatives
    gallery = unique_targets(samples)
    if len(gallery) <= k:
        raise InputError(f"hard_negatives=mined: {len(gallery)} distinct training targets cannot give "
                         f"{k} negatives per query; lower objective.options.num_hard_negatives")
    settings = options.encode_settings(batch_size)
    scores = encode_texts(model, processor, [s.query for s in samples], settings) \
        @ encode_targets(model, processor, gallery, settings).T  # (Q, G), full dim
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


OBJECTIVE = MRL()
