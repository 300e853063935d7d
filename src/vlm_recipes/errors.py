"""The user-facing failures and what the command line makes of them. The bottom of the package:
it imports nothing else of it, so that every layer (config included) can raise these.

Exit codes (every command): 0 done; 1 the run failed (diverged); 2 bad input (one line on stderr,
nothing trained); 128 + N stopped by signal N (130 SIGINT, 143 SIGTERM; training/preemption.py).
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_SIGNAL_BASE = 128
"""The shell's convention: a process stopped by signal N exits 128 + N."""


class InputError(ValueError):
    """Bad input from the user: the message names the input and says how to fix it. The CLI turns
    it into one line on stderr and exit code 2; anything else is a bug and keeps its traceback."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or blew up: stopping beats training on garbage (CLI: one line, exit 1).
    `step` is the global step it was seen at (written to status.json)."""

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


def exit_code(err: BaseException) -> int:
    """The exit code of a failure the CLI reports in one line."""
    return EXIT_BAD_INPUT if isinstance(err, InputError) else EXIT_FAILED


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none: a library's
    exception quoted inside a one-line InputError."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "EXIT_SIGNAL_BASE", "InputError", "TrainingDiverged",
           "exit_code", "first_line"]
