"""The user-facing failures (defined in `config`, the bottom layer, so that config imports nothing
else of the package): bad input (exit 2) and a diverged run (exit 1)."""

from .config import InputError, TrainingDiverged

__all__ = ["InputError", "TrainingDiverged"]
