"""GradCache against plain backward: shared by the mrl, distillation and video tests."""

import contextlib

import pytest

from vlm_recipes.models.embedding import embed
from vlm_recipes.objectives.grad_cache import cached_step, split_rows
from vlm_recipes.objectives.mrl import group_inputs


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def cached_loss(model, batch, loss, chunk: int):
    """One GradCache step over the batch's query and target groups in chunks of `chunk` rows;
    `loss(queries, targets)` scores the embeddings. Returns the loss; the gradients are on the model."""
    parts = [split_rows(*group_inputs(batch, prefix), chunk) for prefix in ("query", "target")]
    return cached_step(lambda c: embed(model, c, "last"), parts, loss, lambda value: value.backward(),
                       contextlib.nullcontext)


def assert_same_gradients(plain, cached, plain_grads: dict, cached_grads: dict) -> None:
    assert cached.item() == pytest.approx(plain.item(), rel=1e-5)
    assert plain_grads.keys() == cached_grads.keys()
    for name, grad in plain_grads.items():
        # float32 sums in a different order: compare against each tensor's own scale
        error = (cached_grads[name] - grad).abs().max()
        assert error <= 1e-4 * grad.abs().max() + 1e-8, (name, error.item())
