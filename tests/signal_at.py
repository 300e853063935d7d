"""Tests only: a run sends itself a signal at a known point (never a sleep racing the training loop).

A spec is "STAGE:STEP:SIGNAME": SIGNAME is sent when stage STAGE reaches global step STEP (0: when it
starts training), or "evaluation::SIGNAME": when an evaluation of the run starts. The hooks are the
run's own (`StopOnSignal`, the evaluators' `evaluate`), wrapped here; nothing in src/ knows of it.

In this process: `undo = install(spec)` ... `undo()`. In a child process:
`python tests/signal_at.py SPEC SCRIPT ARGS...` runs SCRIPT (e.g. scripts/train_recipe.py) with it installed.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from typing import Callable


def install(spec: str) -> Callable[[], None]:
    """Wrap the hooks `spec` names; returns what puts them back."""
    from vlm_recipes.evaluation.answers import AnswerEvaluator
    from vlm_recipes.evaluation.retrieval import RetrievalEvaluator
    from vlm_recipes.training.preemption import StopOnSignal

    stage, at, name = spec.split(":")
    signum = getattr(signal, name)

    def send() -> None:
        os.kill(os.getpid(), signum)

    if stage == "evaluation":
        return _wrap([(AnswerEvaluator, "evaluate"), (RetrievalEvaluator, "evaluate")], lambda *args, **kw: True, send)

    def at_step(callback, args, state, *rest, **kw) -> bool:
        return callback.stage == stage and (at == "" or int(at) == state.global_step)

    return _wrap([(StopOnSignal, "on_train_begin"), (StopOnSignal, "on_step_end")], at_step, send)


def _wrap(targets: list[tuple[type, str]], when: Callable[..., bool], send: Callable[[], None]) -> Callable[[], None]:
    """Each `cls.method` sends the signal first when `when(self, *args)` holds, then runs as it was."""
    saved = [(cls, attr, cls.__dict__.get(attr)) for cls, attr in targets]
    for cls, attr in targets:
        original = getattr(cls, attr)

        def wrapped(self, *args, _original=original, **kwargs):
            if when(self, *args, **kwargs):
                send()
            return _original(self, *args, **kwargs)

        setattr(cls, attr, wrapped)

    def undo() -> None:
        for cls, attr, before in saved:
            if before is None:
                delattr(cls, attr)
            else:
                setattr(cls, attr, before)

    return undo


if __name__ == "__main__":
    install(sys.argv[1])
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
