"""Checkpoints that survive a hard stop (issue 31, DECISIONS D32).

A SIGKILL, an out-of-memory kill or a lost node can stop a run anywhere, also halfway through a
checkpoint write, and a disk can fill while one is written. The rules:

- A stage's random state is a function of (seed, stage index) only (`seed_stage`): its LoRA / head
  initialisation and its data order never depend on where an earlier run of it stopped.
- A checkpoint counts only once it is complete: Trainer writes `checkpoint-N/`, every file is
  flushed to disk, and then `checkpoint_complete.json` is written last (`mark_complete`).
  `newest_complete` skips (and removes) a torn one with one line naming it.
- `save_total_limit` deletes older checkpoints only after the new one is marked complete
  (`CompleteCheckpoints._save_checkpoint`), so the last complete one always survives a save.
- A full disk (ENOSPC) while saving is a `DiskFull` failure naming the step: one line, exit 1,
  status "failed"; the previous complete checkpoint stays, and `--resume` works once there is space.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import TrainingDiverged
from ..models.distributed import barrier, is_main_process

COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


# --- seeds ----------------------------------------------------------------------------------

def stage_seed(seed: int, index: int) -> int:
    """The seed of stage `index` (0-based) of a run seeded `seed`. Stage 0 keeps the run's seed (a
    one-stage recipe trains as it always did); a later stage gets a seed drawn from (seed, index)
    by numpy's SeedSequence, so that no two stages, and no stage of a run with another seed,
    share a random stream."""
    if index == 0:
        return seed
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def seed_stage(seed: int, index: int) -> int:
    """Reseed python, numpy and torch for stage `index` before its initialisation (LoRA, heads);
    returns the stage's seed, which its Trainer uses for the data order."""
    from transformers import set_seed

    seeded = stage_seed(seed, index)
    set_seed(seeded)
    return seeded


# --- complete checkpoints -------------------------------------------------------------------

def is_complete(checkpoint: Path) -> bool:
    return (Path(checkpoint) / COMPLETE_MARKER).is_file()


def mark_complete(checkpoint: Path, step: int) -> None:
    """Flush every file of `checkpoint` to disk, then write the marker (atomically, last): a reader
    that sees the marker sees the whole checkpoint, also after a power loss."""
    checkpoint = Path(checkpoint)
    for path in sorted(checkpoint.rglob("*")):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
    tmp = checkpoint / f".{COMPLETE_MARKER}.tmp"
    with open(tmp, "w") as f:
        json.dump({"step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, checkpoint / COMPLETE_MARKER)


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders in `output_dir`, oldest step first."""
    if not Path(output_dir).is_dir():
        return []
    found = [p for p in Path(output_dir).iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))


def newest_complete(output_dir: Path) -> Path | None:
    """The newest complete checkpoint in `output_dir` (what `--resume` continues from), or None.
    Every torn one (its write never finished: a kill, a full disk) is skipped with one line on
    stderr naming it, and removed by the main process, so that it cannot count towards
    `save_total_limit` nor be taken for a checkpoint later."""
    torn = [p for p in checkpoint_dirs(output_dir) if not is_complete(p)]
    complete = [p for p in checkpoint_dirs(output_dir) if is_complete(p)]
    if is_main_process():
        for path in torn:
            print(f"skipping torn checkpoint {path} (its write did not finish); removed", file=sys.stderr)
            shutil.rmtree(path, ignore_errors=True)
    barrier()
    return complete[-1] if complete else None


def ends_its_stage(checkpoint: Path) -> bool:
    """Whether `checkpoint` is its stage's last step (global_step reached max_steps)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state["global_step"] >= state["max_steps"] > 0


def take_back_finished_stage(trainer, checkpoint: Path) -> None:
    """The model of a stage that ended at `checkpoint`, without training: Trainer resumed from its
    last step trains one step too many when that step is not an epoch's end (its loop runs a step
    before it checks max_steps), so a run killed after a stage's last checkpoint would train on.
    Loads the weights (and, with load_best_at_end, the best ones), the state and its log, and ends
    training as Trainer would (callbacks' train begin and end: GRPO drops its reference adapter at the end)."""
    from transformers.trainer_callback import TrainerState

    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    trainer._load_from_checkpoint(str(checkpoint))
    if trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint:
        trainer._load_best_model()
    handler = trainer.callback_handler  # a training of no steps, as callbacks expect it: begin, then end
    trainer.control = handler.on_train_begin(trainer.args, trainer.state, trainer.control)
    trainer.control = handler.on_train_end(trainer.args, trainer.state, trainer.control)


class CompleteCheckpoints:
    """Trainer mixin: every checkpoint is marked complete once written, and older ones are rotated
    out (`save_total_limit`) only after that. Trainer itself rotates inside its save, before any
    marker could be written; here its rotation is held back until the new checkpoint is marked."""

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        limit, self.args.save_total_limit = self.args.save_total_limit, None  # Trainer: no rotation
        try:
            with disk_full_fails("saving checkpoint", self.state.global_step):
                super()._save_checkpoint(model, trial)
                self.accelerator.wait_for_everyone()  # every process's files (RNG states) are written
                run_dir = Path(self._get_output_dir(trial=trial))
                if self.args.should_save:
                    mark_complete(run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}", self.state.global_step)
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save:
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)


# --- a full disk ------------------------------------------------------------------------------

class DiskFull(TrainingDiverged):
    """The disk filled up while the run wrote (ENOSPC): the run failed at `step` (CLI: one line, exit 1,
    status "failed"); the last complete checkpoint is kept, and `--resume` continues once space is freed."""


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC, also as the libraries report it: safetensors' Rust writer ("No space left on device",
    StorageFull) and torch's zip writer ("file write failed") raise it as their own errors."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or "StorageFull" in text


@contextmanager
def disk_full_fails(what: str, step: int | None = None, where: Path | None = None) -> Iterator[None]:
    """A full disk inside the block becomes `DiskFull` naming `what`, the step and the path."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        at = step
        place = f" in {where}" if where is not None else ""
        raise DiskFull(f"no space left on device while {what}{f' at step {at}' if at is not None else ''}{place}: "
                       "free some space, then continue with --resume (the last complete checkpoint is kept)",
                       at) from None
