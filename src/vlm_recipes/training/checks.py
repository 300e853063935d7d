"""What a run can know about its validation once the data is open, checked before any weights load
(issue 32, DECISIONS D33): the recipe alone cannot tell a detection split from a conversation
split, an image gallery from a video one, or the model's Matryoshka dims; the opened data and the
base's config can. Each name is resolved by the very function validation uses (`pick_metric`),
on the metric names the evaluator will report for these rows, so the two never disagree.
"""

from __future__ import annotations

from ..config import RecipeConfig
from ..errors import InputError
from ..evaluation.answers import detection_view, single_box_metrics
from ..evaluation.detection import detection_metrics, set_metrics
from ..evaluation.result import flatten, pick_metric
from ..evaluation.retrieval import METRIC_NAMES, directions
from ..models.embedding import default_dims


def check_validation_metrics(recipe: RecipeConfig, samples: list, base, sets: bool | None = None) -> None:
    """Each stage's `train.metric_for_best` names a metric its evaluator reports on the validation
    rows `samples` (none: nothing is validated, nothing to check)."""
    if not samples:
        return
    reported = reported_metrics(recipe, samples, base, sets)
    for index, stage in enumerate(recipe.stages):
        metric = recipe.metric_for_best(stage.train)
        try:
            pick_metric(reported, metric)
        except (KeyError, TypeError, ValueError):
            kind = "conversation" if "exact_match" in reported else "video" if "t2v" in reported else "this"
            raise InputError(f"stages.{index}.train.metric_for_best={metric!r}: the evaluator reports no such "
                             f"metric on {kind} data ({samples_source(recipe)}); choose one of "
                             f"{', '.join(_names(reported))}") from None


def reported_metrics(recipe: RecipeConfig, samples: list, base, sets: bool | None = None) -> dict:
    """The tree of metric names (values 0) the recipe's evaluator reports on `samples`."""
    if recipe.objective.name == "mrl":
        dims = recipe.objective.options.dims or default_dims(hidden_size_of(base.path))
        forward, backward = directions([s.target for s in samples])
        ranks = {name: 0.0 for name in METRIC_NAMES}
        tree = {forward: {str(d): dict(ranks) for d in dims}, backward: {str(d): dict(ranks) for d in dims}}
        if forward == "t2v":
            tree["order"] = {str(d): 0.0 for d in dims}
        return tree
    views = [detection_view(s, base.family, base.processor) for s in samples]
    if any(view is None for view in views):
        return {"exact_match": 0.0, "n": 0.0}
    if single_box_metrics(views, sets):  # as score_answers: single-box metrics, else set metrics
        return {name: 0.0 for name in detection_metrics([None], [(0.0, 0.0, 1.0, 1.0)])}
    return set_metrics([[] for _ in views], [v.boxes for v in views], [v.label for v in views], [v.task for v in views])


def hidden_size_of(path: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return getattr(config, "text_config", config).hidden_size


def samples_source(recipe: RecipeConfig) -> str:
    return f"data.dataset={recipe.data.dataset}"


def _names(reported: dict) -> list[str]:
    """Dotted names as metric_for_best writes them (t2i.32.recall@1), numbers only."""
    return [name.replace("/", ".") for name in flatten(reported) if not name.endswith("/n") and name != "n"]


SMALL_VALIDATION = 8
"""Fewer validation rows than this make the validation metric too coarse to pick a checkpoint by."""


def validation_note(num_val: int, carved: int, train_rows: int) -> str | None:
    """The one warning a run prints about its validation split (data.num_val is a request, capped
    at a tenth of the training rows, DECISIONS D33): None when it got what it asked for and at
    least SMALL_VALIDATION rows, or asked for none."""
    if num_val == 0:
        return None
    if carved == 0:
        return (f"warning: data.num_val={num_val} but no validation rows were carved (at most a tenth of the "
                f"{train_rows + carved} training rows): nothing is validated while training; use 10+ training rows")
    short = f" ({carved} carved, at most a tenth of the {train_rows + carved} training rows)" if carved < num_val else ""
    if carved < SMALL_VALIDATION:
        return (f"warning: validation on {carved} rows{short}: its metric moves in steps of 1/{carved}, too coarse "
                "to choose a checkpoint by; use more training rows or data.num_val")
    if short:
        return f"warning: data.num_val={num_val}, but {carved} rows were carved{short}"
    return None


def check_prompt_length(recipe: RecipeConfig, processor) -> None:
    """The chat-formatted `data.prompt` alone must fit `objective.options.max_length` (answer
    objectives), with room for one image token and one answer token: a longer one fails every
    batch, so it is refused here, before the base evaluation, instead of at the first step. The
    full length (image + answer) is still checked when each batch is built (`data/chat.py`)."""
    from ..data.chat import prompt_text

    limit = getattr(recipe.objective.options, "max_length", None)
    if limit is None or recipe.objective.name == "mrl":
        return
    tokens = len(processor.tokenizer(prompt_text(processor, recipe.data.prompt))["input_ids"])
    if tokens + 2 > limit:
        raise InputError(f"data.prompt is {tokens} tokens once chat-formatted, which leaves no room for the image and "
                         f"the answer within objective.options.max_length={limit}: shorten the prompt or raise "
                         "max_length")
