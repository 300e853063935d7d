"""SIGTERM (slurm/Kubernetes preemption) and SIGINT (Ctrl-C) stop a run cleanly instead of killing it.

During training a signal only asks the Trainer to stop after the current step; `StopOnSignal` then
has it save a checkpoint at that step, and `train_stage` raises `Interrupted`. Anywhere else
(data loading, evaluation) the signal raises `Interrupted` at once: an unfinished evaluation is
simply run again by `--resume`. Either way the run directory says "interrupted" and the CLI
exits 128 + the signal number (143, 130), with one line saying how to resume.

A signal that arrives while the run is already stopping is ignored, so that a sweep forwarding
the terminal's Ctrl-C to its children does not cut the checkpoint short (SIGKILL still kills).
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator

from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT)
TEST_SIGNAL_ENV = "VLM_RECIPES_TEST_SIGNAL"
"""Tests only: "STAGE:STEP:SIGNAME" sends SIGNAME to this process when STAGE reaches global step
STEP (STEP 0: when the stage starts), "evaluation::SIGNAME" when an evaluation starts. A signal at a
known step, not a sleep that races the training loop."""


class Interrupted(BaseException):
    """The run stopped on a signal. A BaseException, like KeyboardInterrupt: no `except Exception`
    on the way up may swallow it."""

    def __init__(self, signum: int, stage: str | None = None, step: int | None = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.stage, self.step = signum, stage, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


class _State:
    received: int | None = None  # the first signal seen
    training: bool = False  # inside trainer.train(): stop after the step, do not raise


STATE = _State()


def _handler(signum, frame) -> None:
    if STATE.received is not None:
        return  # already stopping
    STATE.received = signum
    if not STATE.training:
        raise Interrupted(signum)


@contextmanager
def signals_stop_the_run() -> Iterator[None]:
    """SIGTERM/SIGINT handled as the module docstring says, inside the block (one run)."""
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    STATE.received, STATE.training = None, False
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def training_phase() -> Iterator[None]:
    """Inside: a signal stops the Trainer after its current step (StopOnSignal) instead of raising."""
    STATE.training = True
    try:
        yield
    finally:
        STATE.training = False


def stop_requested() -> int | None:
    return STATE.received


class StopOnSignal(TrainerCallback):
    """After the step during which a signal arrived: save a checkpoint there, and stop training."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        send_test_signal(self.stage, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        send_test_signal(self.stage, state.global_step)
        if STATE.received is not None:
            control.should_save = control.should_training_stop = True
        return control


def send_test_signal(where: str, step: int = 0) -> None:
    spec = os.environ.get(TEST_SIGNAL_ENV, "")
    if spec.count(":") != 2:
        return
    stage, at, name = spec.split(":")
    if stage == where and (at == "" or int(at) == step):
        os.kill(os.getpid(), getattr(signal, name))
