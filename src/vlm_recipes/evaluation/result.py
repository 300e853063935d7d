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
