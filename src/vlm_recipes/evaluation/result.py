"""What an evaluator returns, and the interface every evaluator implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class EvalResult:
    metrics: dict
    """The numbers that go to metrics.json (under "base" / "finetuned")."""
    predictions: list = field(default_factory=list)
    """One JSON-ready row per test sample (predictions.json)."""
    notes: dict = field(default_factory=dict)
    """Facts the report states but metrics.json does not hold (e.g. the gallery size)."""


class Evaluator(Protocol):
    def evaluate(self, model, samples: list, desc: str) -> EvalResult:
        """Score `model` on `samples`."""

    def summary(self, metrics: dict, finetuned: EvalResult) -> str:
        """The printable markdown summary of a run's metrics (the top of results.md)."""

    def write_report(self, run_dir: Path, metrics: dict, base: EvalResult, finetuned: EvalResult,
                     samples: list) -> None:
        """results.md (the summary plus its figures) and the plots it shows."""


def stages_line(metrics: dict) -> str:
    """A run's stages in one line for its summary: name, training time, trainable parameters."""
    return ", ".join(f"{s['name']} ({s['train_seconds']} s, {s['trainable_params']:,} trainable)"
                     for s in metrics["stages"])


def directions_of(metrics: dict) -> tuple[str, str]:
    """The direction names one retrieval evaluation uses: t2v/v2t for a video gallery, else t2i/i2t."""
    return ("t2v", "v2t") if "t2v" in metrics else ("t2i", "i2t")


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """{"t2i": {"128": {"recall@1": x}}} -> {"t2i/128/recall@1": x}; numbers only."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def pick_metric(metrics: dict, name: str) -> float:
    """The value `name` (dotted, as `train.metric_for_best` writes it) names in an evaluator's
    metrics. A level keyed by Matryoshka dims that the name skips means the full (largest) dim:
    "t2i.recall@1" -> metrics["t2i"]["128"]["recall@1"]."""
    node, parts = metrics, name.split(".")
    while parts:
        if isinstance(node, dict) and parts[0] not in node and node and all(k.isdigit() for k in node):
            node = node[max(node, key=int)]
            continue
        if not isinstance(node, dict) or parts[0] not in node:
            raise KeyError(f"metric {name!r} is not among the evaluator's: {', '.join(flatten(metrics))}")
        node = node[parts.pop(0)]
    if isinstance(node, dict) and node and all(k.isdigit() for k in node):  # "order": by dim, the full one
        node = node[max(node, key=int)]
    return float(node)
