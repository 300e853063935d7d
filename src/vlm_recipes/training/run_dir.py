"""The run directory: one object owns its lock, its JSON files and what a resume reads back.

  config.yaml         resolved recipe, as trained
  run_info.json       command line, seed, device, library versions (a resume appends its own command)
  status.json         running | failed (error, step) | interrupted (stage, step) | complete
  run.lock            pid and host of the process writing it, while it runs (one writer per directory)
  base_eval.json      the base model's evaluation (and on the shifted split), so --resume does not repeat it
  progress.json       the stages finished so far, with their test evaluations (--resume repeats none)
  model/              final adapter or weights + processor (+ stages/<n>-<name>/ for earlier stages)
  trainer/<stage>/    Trainer output; TensorBoard logs under runs/ (evaluation scalars under evaluation/)
  metrics.json, predictions.json, train_log.json, results.md, loss.png, and the evaluator's plots

A run is complete only when status.json says "complete". Every JSON file is written whole or not
at all (a temporary file, then rename). Under a launcher every process holds a RunDir for the same
path; only the main process writes (DECISIONS D20), the others' writes do nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from ..config import RecipeConfig, StageConfig, load_saved_recipe, to_dict
from ..errors import InputError, TrainingDiverged
from ..evaluation.result import EvalResult
from ..models.distributed import is_main_process
from ..models.loading import MODEL_FILE_KEYS
from ..readers import check_safetensors, check_torch_file
from ..readers import read_json as read_json_strictly
from .checkpoints import checkpoint_dirs, is_complete
from .preemption import Interrupted

LOCK_FILE, STATUS_FILE, BASE_EVAL_FILE, PROGRESS_FILE, RUN_INFO_FILE = (
    "run.lock", "status.json", "base_eval.json", "progress.json", "run_info.json")
RUN_MARKERS = (STATUS_FILE, "config.yaml", RUN_INFO_FILE)
"""A directory holding one of these (written first by every run) is a run of this project."""
RUN_FOLDERS = {"model", "stages", "trainer", "wandb", "test_images"}
RUN_SUFFIXES = {".json", ".png", ".md", ".yaml", ".lock", ".tmp", ".html"}
"""What a run writes at its top level; anything else in a directory means it is not only a run."""
REPAIR = "repair or delete that file, or start a new run in another --output-dir"


class RunDir:
    """`path` as one run's directory; `resume`: the run already there goes on (its finished base
    evaluation and stages are read back, its first start's facts kept)."""

    def __init__(self, path: Path, resume: bool = False, replaces: bool = False):
        self.path, self.resume, self.replaces = Path(path), resume, replaces
        """`replaces`: an earlier run is there (--overwrite), deleted by `clear_earlier` once the
        new run's inputs (recipe, data, model) have all passed their checks."""

    def clear_earlier(self) -> None:
        """Delete the earlier run --overwrite replaces (never the lock), main process only. Called
        only after the recipe, the data and the model have opened: bad input leaves it untouched."""
        if not self.replaces or not is_main_process() or not self.path.is_dir():
            return
        for item in self.path.iterdir():
            if item.name != LOCK_FILE:
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        self.replaces = False

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --- files (main process only) -----------------------------------------------------------

    def write_json(self, name: str, data) -> None:
        write_json(self.path / name, data)

    def read_json(self, name: str, default):
        return read_json(self.path / name, default)

    def write_status(self, state: str, error: str | None = None, **where) -> None:
        """status.json: `state`, and the error and/or stage and step it stopped at when given."""
        extra = {key: value for key, value in where.items() if value is not None}
        self.write_json(STATUS_FILE, {"state": state, **({"error": error} if error else {}), **extra})

    @contextmanager
    def recording_status(self) -> Iterator[None]:
        """status.json says "running" inside the block, then "complete", "interrupted" (with stage
        and step) or "failed" (with the error, and the step of a diverged run)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_status("running")
        try:
            yield
        except Interrupted as err:
            self.write_status("interrupted", stage=err.stage, step=err.step)
            raise
        except BaseException as err:
            step = err.step if isinstance(err, TrainingDiverged) else None
            self.write_status("failed", f"{type(err).__name__}: {err}", step=step)
            raise
        self.write_status("complete")

    def write_config(self, recipe: RecipeConfig) -> None:
        """config.yaml, the recipe as trained (what --resume reads it from), written whole or not at
        all and before status.json, so that a run killed from its first file on can resume (D32)."""
        if is_main_process():
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.path / ".config.yaml.tmp"
            tmp.write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False))
            tmp.replace(self.path / "config.yaml")

    def start(self, facts: dict) -> None:
        """run_info.json: `facts` of the first start; a resume keeps them and appends its own
        command and time."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        earlier = self.read_json(RUN_INFO_FILE, None) if self.resume else None
        if earlier is None:
            info = {**facts, "started": now}
        else:
            info = {**earlier, "resumed": [*earlier.get("resumed", []), {"command": facts["command"], "time": now}]}
        self.write_json(RUN_INFO_FILE, info)

    # --- resume state ------------------------------------------------------------------------

    def base_eval(self) -> tuple[EvalResult | None, dict | None]:
        """The base model's test evaluation and its shifted-split metrics, when a resume has them."""
        data = self.read_json(BASE_EVAL_FILE, None) if self.resume else None
        if data is None:
            return None, None
        shifted = data.pop("shifted", None)
        return EvalResult(**data), shifted

    def save_base_eval(self, result: EvalResult, shifted: dict | None) -> None:
        self.write_json(BASE_EVAL_FILE, {**dataclasses.asdict(result), "shifted": shifted})

    def finished(self, index: int) -> dict | None:
        """Stage `index`'s entry (metrics.json's, with its log and test metrics) when a resume finds
        it finished before the interruption, else None."""
        done = self.read_json(PROGRESS_FILE, []) if self.resume else []
        return done[index] if index < len(done) else None

    def save_progress(self, stages: list[dict]) -> None:
        self.write_json(PROGRESS_FILE, stages)

    def stage_output(self, index: int, stage: StageConfig, last: bool) -> Path:
        """Where a stage saves its model: model/ for the last, stages/<n>-<name>/ for the others."""
        return self.path / "model" if last else self.path / "stages" / f"{index + 1}-{stage.name}"

    def trainer_dir(self, stage: StageConfig) -> Path:
        return self.path / "trainer" / stage.name

    # --- one writer per run directory -------------------------------------------------------

    @classmethod
    @contextmanager
    def claim(cls, path: Path, overwrite: bool, resume: bool) -> Iterator[RunDir]:
        """`path`, created if needed and locked (run.lock) before any data loads, cleared for a new
        run or checked for a resume; released on the way out, and removed again if it was created
        here and nothing was written into it."""
        if path.exists() and not path.is_dir():
            raise InputError(f"--output-dir {path} is a file; pass a directory")
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
            note = acquire_lock(path)  # also the writability check
        except OSError as err:
            raise InputError(f"--output-dir {path} is not writable ({err.strerror or err}): pass a directory "
                             "you can write to") from None
        try:
            if note:
                print(note, file=sys.stderr)
            replaces = check_for_run(path, overwrite, resume)
            yield cls(path, resume, replaces)
        finally:
            release_lock(path)
            if created and path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def resumed_recipe(path: Path) -> RecipeConfig:
    """The recipe of the run in `path`, as it was trained (its config.yaml)."""
    if not (path / "config.yaml").is_file():
        raise InputError(f"--resume {path}: not a run directory (no config.yaml): nothing to resume")
    return load_saved_recipe(path / "config.yaml", REPAIR)


def run_facts(recipe: RecipeConfig, device: str, command: str, family: str, base_path: str) -> dict:
    """run_info.json of a first start: what ran, where, with which libraries."""
    import peft
    import torch
    import transformers

    return {"recipe": recipe.name, "command": command or " ".join(sys.argv), "seed": recipe.seed,
            "device": device, "family": family, "base_model": base_path, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def check_for_run(path: Path, overwrite: bool, resume: bool) -> bool:
    """Under the lock, deleting nothing: a resume needs an unfinished run there whose files all read;
    a new run needs the directory empty, or --overwrite and a run of this project there (returns
    True: `RunDir.clear_earlier` deletes it once the new run's inputs are checked)."""
    earlier = [p for p in path.iterdir() if p.name != LOCK_FILE]
    if resume:
        check_resumable(path)
        return False
    if not earlier:
        return False
    if not overwrite:
        raise InputError(f"--output-dir {path} already holds files; pass --overwrite, --resume, or another directory")
    names = {p.name for p in earlier}
    if not names & set(RUN_MARKERS):
        raise InputError(f"--overwrite {path}: not a run directory (no {', '.join(RUN_MARKERS)}), so it is "
                         "not deleted: pick another --output-dir, or empty it yourself")
    foreign = sorted(p.name for p in earlier if not _is_run_entry(p))
    if foreign:
        raise InputError(f"--overwrite {path}: holds {foreign[0]!r}, which a run does not write, so it is not "
                         "deleted: move that out, or pick another --output-dir")
    return True


def _is_run_entry(item: Path) -> bool:
    if item.is_dir() and not item.is_symlink():
        return item.name in RUN_FOLDERS
    return item.suffix in RUN_SUFFIXES


def check_resumable(path: Path) -> None:
    """Every file a resume reads, read now (before any model loads): status.json, config.yaml,
    run_info.json, base_eval.json, progress.json, and the checkpoints' state and weight headers.
    Any corruption is one line naming the file."""
    status = path / STATUS_FILE
    if not (path / "config.yaml").is_file():  # written first (D32): without it nothing ever started here
        raise InputError(f"--resume {path}: not a run directory (no config.yaml): nothing to resume")
    # no status.json: the run was killed between its config.yaml and its first status (D32)
    state = read_json_strictly(status, dict, REPAIR, keys={"state": str}).get("state") if status.is_file() else "new"
    if state is None:
        raise InputError(f"{status}: has no 'state': {REPAIR}")
    if state == "complete":
        raise InputError(f"--resume {path}: the run is already complete")
    read_json_strictly(path / RUN_INFO_FILE, dict, REPAIR, default=None, required={"command": str},
                       keys={"resumed": list})
    base = read_json_strictly(path / BASE_EVAL_FILE, dict, REPAIR, default=None,
                              keys={"metrics": dict, "predictions": list, "notes": dict, "shifted": (dict, type(None))})
    if base is not None and ("metrics" not in base or set(base) - {"metrics", "predictions", "notes", "shifted"}):
        raise InputError(f"{path / BASE_EVAL_FILE}: not a base evaluation (keys {sorted(base)}): {REPAIR}")
    stages = read_json_strictly(path / PROGRESS_FILE, list, REPAIR, default=[])
    if any(not isinstance(stage, dict) for stage in stages):
        raise InputError(f"{path / PROGRESS_FILE}: every entry must be a stage's object {{...}}: {REPAIR}")
    for checkpoint in sorted((path / "trainer").glob("*/checkpoint-*")):
        if is_complete(checkpoint):  # a torn one is skipped (and named) when its stage resumes (D32)
            check_checkpoint(checkpoint)
    print(resume_point(path, state, len(stages)), file=sys.stderr)


def resume_point(path: Path, state: str, finished: int) -> str:
    """The line a resume prints: which stage and step (which checkpoint) it continues from."""
    recipe = load_saved_recipe(path / "config.yaml", REPAIR)
    if finished >= len(recipe.stages):
        return f"resuming the {state} run in {path}: every stage trained; evaluating and writing its results"
    stage = recipe.stages[finished]
    steps = [int(p.name.split("-")[1]) for p in checkpoint_dirs(path / "trainer" / stage.name) if is_complete(p)]
    where = (f"step {max(steps)} (trainer/{stage.name}/checkpoint-{max(steps)})" if steps
             else "its start (no checkpoint was saved)")
    return f"resuming the {state} run in {path}: stage {finished + 1}/{len(recipe.stages)} {stage.name!r} from {where}"


def check_checkpoint(checkpoint: Path) -> None:
    """A Trainer checkpoint a resume may continue from: its trainer_state.json and weights' headers."""
    fix = f"delete {checkpoint} to resume from the one before it (or from the stage's start)"
    read_json_strictly(checkpoint / "trainer_state.json", dict, fix, default=None,
                       required={"global_step": int, "log_history": list})
    for name in ("adapter_config.json", "config.json"):
        read_json_strictly(checkpoint / name, dict, fix, default=None, required=MODEL_FILE_KEYS.get(name))
    for weights in sorted(checkpoint.glob("*.safetensors")):
        check_safetensors(weights, fix)
    for state in sorted(p for p in checkpoint.iterdir() if p.suffix in (".pt", ".pth", ".bin")):
        check_torch_file(state, fix)


def acquire_lock(run_dir: Path) -> str | None:
    """Take `run_dir/run.lock` (created atomically, holding pid and host) before anything else is
    read or written. A lock held by a live process is an InputError naming it; one left by a dead
    process on this host is taken over (the returned message says so). OSError: not writable."""
    lock = run_dir / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    note = None
    for _ in range(3):  # a stale lock removed by us (or another process) frees the name: try again
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_json(lock, {})
            if not _is_stale(holder):
                raise InputError(f"{run_dir} is in use by process {holder.get('pid', '?')} on "
                                 f"{holder.get('host', '?')} (lock {lock}): wait for it, stop it, or pick another "
                                 "--output-dir (delete the lock only if that process is gone)") from None
            note = f"taking over the stale lock of process {holder.get('pid', '?')} (no longer running) in {run_dir}"
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return note
    raise InputError(f"could not take the lock {lock}: another process keeps taking it; try again")


def _is_stale(holder: dict) -> bool:
    """A lock whose process is gone. Only a pid on this host can be checked; another host's lock
    (a shared filesystem) counts as held. A lock file being written (empty for an instant) is held."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def release_lock(run_dir: Path) -> None:
    """Remove our own lock (never another process's)."""
    lock = run_dir / LOCK_FILE
    if read_json(lock, {}).get("pid") == os.getpid():
        lock.unlink(missing_ok=True)


def read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path: Path, data) -> None:
    """Written whole or not at all (a temporary file, then rename): a reader never sees half a file.
    Only the main process writes the run directory; in the others this does nothing."""
    if not is_main_process():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
