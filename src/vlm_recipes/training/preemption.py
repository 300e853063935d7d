"""SIGTERM (slurm/Kubernetes preemption) and SIGINT (Ctrl-C) stop a run cleanly instead of killing it.

During training a signal only asks the Trainer to stop after the current step; `StopOnSignal` then
has it save a checkpoint at that step, and `train_stage` raises `Interrupted`. Anywhere else
(data loading, evaluation) the signal raises `Interrupted` at once: an unfinished evaluation is
simply run again by `--resume`. Either way the run directory says "interrupted" and the CLI
exits 128 + the signal number (143, 130), with one line saying how to resume.

A signal that arrives while the run is already stopping is ignored, so that a sweep forwarding
the terminal's Ctrl-C to its children does not cut the checkpoint short (SIGKILL still kills).

The state (which signal came, whether the Trainer is running) lives in the `SignalStop` object
that `signals_stop_the_run` installs as the handler; code deeper in the run finds it as the
process's installed handler (`SignalStop.active`), the one process-wide fact there is.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from transformers import TrainerCallback

from ..errors import EXIT_SIGNAL_BASE

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """The run stopped on a signal. A BaseException, like KeyboardInterrupt: no `except Exception`
    on the way up may swallow it. Where it stopped is added on the way up by wrapping it
    (`within`): the stage or phase, the step, the run directory that can be resumed."""

    def __init__(self, signum: int, stage: str | None = None, step: int | None = None, run_dir: Path | None = None):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.stage, self.step, self.run_dir = signum, stage, step, run_dir

    def within(self, stage: str | None = None, run_dir: Path | None = None) -> Interrupted:
        """The same interruption, with what an outer block knows and it did not yet (raise ... from self)."""
        return Interrupted(self.signum, self.stage or stage, self.step, self.run_dir or run_dir)

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL_BASE + self.signum  # 143 for SIGTERM, 130 for SIGINT

    def resume_line(self) -> str:
        """One line: what stopped, where, and the command that continues it."""
        what = str(self)  # "interrupted by SIGTERM"
        if self.run_dir is None or not (self.run_dir / "status.json").is_file():
            return f"{what} before the run started: nothing to resume, start it again"
        where = f"{self.stage} at step {self.step}, checkpoint saved" if self.step is not None else self.stage or "loading"
        return f"{what} ({where}); resume with: vlm-recipes train --resume {self.run_dir}"


class SignalStop:
    """The handler of SIGTERM/SIGINT for one run, and what it has seen."""

    def __init__(self):
        self.received: int | None = None  # the first signal seen
        self.training = False  # inside trainer.train(): stop after the step, do not raise

    def __call__(self, signum, frame) -> None:
        if self.received is not None:
            return  # already stopping
        self.received = signum
        if not self.training:
            raise Interrupted(signum)

    @contextmanager
    def training_phase(self) -> Iterator[None]:
        """Inside: a signal stops the Trainer after its current step (StopOnSignal) instead of raising."""
        self.training = True
        try:
            yield
        finally:
            self.training = False

    @staticmethod
    def active() -> SignalStop | None:
        """The SignalStop handling SIGTERM in this process now (None outside `signals_stop_the_run`)."""
        handler = signal.getsignal(signal.SIGTERM)
        return handler if isinstance(handler, SignalStop) else None


@contextmanager
def signals_stop_the_run() -> Iterator[SignalStop]:
    """SIGTERM/SIGINT handled as the module docstring says, inside the block (one run)."""
    stop = SignalStop()
    previous = {sig: signal.signal(sig, stop) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def training_phase() -> Iterator[SignalStop | None]:
    """The Trainer's block: a signal stops it after its current step instead of raising (no-op
    outside `signals_stop_the_run`)."""
    stop = SignalStop.active()
    if stop is None:
        yield None
        return
    with stop.training_phase():
        yield stop


@contextmanager
def phase(name: str) -> Iterator[None]:
    """An interruption inside the block is reported as having happened in `name` (status.json)."""
    try:
        yield
    except Interrupted as err:
        raise err.within(stage=name) from err


class StopOnSignal(TrainerCallback):
    """After the step during which a signal arrived: save a checkpoint there, and stop training."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_step_end(self, args, state, control, **kwargs):
        stop = SignalStop.active()
        if stop is not None and stop.received is not None:
            control.should_save = control.should_training_stop = True
        return control
