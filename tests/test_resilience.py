"""Runs that survive (issue 17): SIGTERM/SIGINT, --resume, one writer per run directory, and every bad
input as one line with exit 2.

Signals are sent by the run itself at a known step (tests/signal_at.py wraps the run's own hooks, in
the test's process or in the child it starts), never by a sleep racing the training loop. Bad inputs run in-process through `main(argv)` (the
package is imported once); the few that need a real process say why.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from signal_at import install as install_signal
from vlm_recipes.cli import compare, encode
from vlm_recipes.cli.train import main as train_main
from vlm_recipes.evaluation.plots import plot_loss
from vlm_recipes.evaluation.retrieval import retrieval_metrics
from vlm_recipes.training.run_dir import LOCK_FILE
from vlm_recipes.training.trainer import DivergenceGuard, total_steps

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
# a few seconds of training: 4 rows, batches of 2 (the equality runs keep the full answer length, so
# that their boxes parse and the compared metrics are not all zero)
TINY = ["--set", "data.num_train=4", "--set", "data.num_test=2", "--set", "train.per_device_train_batch_size=2",
        "--no-wandb"]
SHORT_ANSWERS = ["--set", "eval.max_new_tokens=8"]
TIMING = ("train_seconds",)
LOGS = Path(".")  # set per test by the _logs fixture


def _env(**extra) -> dict:
    env = dict(os.environ)
    return dict(env, PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), **extra)


def _train_process(*args, signal_at: str | None = None) -> subprocess.Popen:
    """scripts/train_recipe.py in its own process, sending itself a signal at `signal_at`
    (tests/signal_at.py); output to a file (a pipe left unread fills and blocks)."""
    script = [str(ROOT / "scripts" / "train_recipe.py")]
    if signal_at:
        script = [str(ROOT / "tests" / "signal_at.py"), signal_at, *script]
    log = open(LOGS / f"train-{time.monotonic_ns()}.log", "w+")
    proc = subprocess.Popen([sys.executable, *script, *map(str, args)],
                            stdout=log, stderr=subprocess.STDOUT, text=True, env=_env())
    proc.log = log
    return proc


def _finish(proc: subprocess.Popen, timeout: int = 900) -> tuple[int, list[str]]:
    """Exit code and the output lines that are messages (not progress bars or library chatter)."""
    proc.wait(timeout=timeout)
    proc.log.seek(0)
    output = proc.log.read()
    proc.log.close()
    return proc.returncode, _messages(output)


@pytest.fixture(autouse=True)
def _logs(tmp_path):
    global LOGS
    LOGS = tmp_path


def _messages(err: str) -> list[str]:
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines()]
    return [line for line in lines if line.startswith(("error:", "interrupted", "taking over", "Traceback"))]


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def _without_timing(tree):
    if isinstance(tree, dict):
        return {k: _without_timing(v) for k, v in tree.items() if k not in TIMING}
    if isinstance(tree, list):
        return [_without_timing(v) for v in tree]
    return tree


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "model").glob("*.safetensors"))
    assert files, f"no weights in {run_dir / 'model'}"
    return {k: v for f in files for k, v in load_file(f).items()}


# --- SIGTERM, then --resume, equals a run that was never stopped -------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("recipe, signal_at", [
    ("r4-joint", "joint-lora:1:SIGTERM"),  # 4-bit + LoRA, mid-epoch 1 of 2
    ("r3-two-stage", "llm-lora:1:SIGTERM"),  # inside stage 2: stage 1 is not repeated
])
def test_sigterm_then_resume_equals_uninterrupted(tmp_path, recipe, signal_at):
    stopped, reference = tmp_path / "stopped", tmp_path / "reference"
    args = ["--recipe", recipe, "--max-steps", 3, *TINY]
    proc = _train_process(*args, "--output-dir", stopped, signal_at=signal_at)
    assert train_main([*map(str, args), "--output-dir", str(reference)]) == 0  # meanwhile, in-process
    code, lines = _finish(proc)
    stage, step, _ = signal_at.split(":")
    assert code == 143 and len(lines) == 1, lines
    assert lines[0].startswith("interrupted by SIGTERM") and f"--resume {stopped}" in lines[0]
    assert _status(stopped) == {"state": "interrupted", "stage": stage, "step": int(step)}
    finished_stage_1 = sorted((stopped / "stages").glob("*/*.safetensors")) if recipe == "r3-two-stage" else []
    mtimes = [f.stat().st_mtime_ns for f in finished_stage_1]

    code, lines = _finish(_train_process("--resume", stopped, "--no-wandb"))
    assert code == 0 and lines == [], lines
    assert _status(stopped) == {"state": "complete"}
    assert [f.stat().st_mtime_ns for f in finished_stage_1] == mtimes  # stage 1 not trained again
    resumed, uninterrupted = (json.loads((d / "metrics.json").read_text()) for d in (stopped, reference))
    assert _without_timing(resumed) == _without_timing(uninterrupted)
    assert resumed["finetuned"]["detection_rate"] > 0  # boxes were parsed: the comparison means something
    logs = [[e for e in json.loads((d / "train_log.json").read_text()) if "loss" in e] for d in (stopped, reference)]
    assert logs[0] == logs[1]  # every logged loss, step by step
    a, b = _weights(stopped), _weights(reference)
    assert a.keys() == b.keys()
    # bitwise: one process order of float32 CPU ops, with optimizer, scheduler, RNG and data order restored
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)


# --- SIGINT, the lock, stale locks, unwritable directories -------------------------------------

def test_sigint_is_one_line_and_state_interrupted(tmp_path):
    """A real process: Ctrl-C's SIGINT during the base evaluation, no traceback; --resume would re-run it."""
    run_dir = tmp_path / "run"
    code, lines = _finish(_train_process("--recipe", "r4-joint", "--max-steps", 1, *TINY, *SHORT_ANSWERS,
                                         "--output-dir", run_dir, signal_at="evaluation::SIGINT"))
    assert code == 130 and len(lines) == 1, lines
    assert lines[0] == f"interrupted by SIGINT (base evaluation); resume with: vlm-recipes train --resume {run_dir}"
    assert _status(run_dir) == {"state": "interrupted", "stage": "base evaluation"}
    assert not (run_dir / LOCK_FILE).exists() and not (run_dir / "base_eval.json").exists()


@pytest.mark.slow  # two processes, each a base evaluation and a step: ~1 min on 2 busy cores
def test_two_concurrent_runs_exactly_one_proceeds(tmp_path):
    """Two real processes into one directory: one holds the lock (and stops itself at its first
    training step), the other fails at once naming its pid. (In-process: test_live_lock_...)"""
    run_dir = tmp_path / "run"
    args = ["--recipe", "r4-joint", "--max-steps", 1, *TINY, *SHORT_ANSWERS, "--output-dir", run_dir]
    procs = [_train_process(*args, signal_at="joint-lora:0:SIGTERM") for _ in range(2)]
    results = sorted((_finish(p) + (p.pid,) for p in procs), key=lambda r: r[0])
    (lost, lost_lines, _), (won, _, winner_pid) = results
    assert (lost, won) == (2, 143), results
    assert len(lost_lines) == 1 and f"is in use by process {winner_pid}" in lost_lines[0], lost_lines


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_lock_is_taken_over(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pid = _dead_pid()
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    undo = install_signal("evaluation::SIGTERM")  # stop once the lock is ours and data loaded
    try:
        code = train_main(["--recipe", "r4-joint", "--max-steps", "1", *TINY, *SHORT_ANSWERS, "--output-dir", str(run_dir)])
    finally:
        undo()
    err = _messages(capsys.readouterr().err)
    assert code == 143, err
    assert err[0] == f"taking over the stale lock of process {pid} (no longer running) in {run_dir}"
    assert not (run_dir / LOCK_FILE).exists()  # released on the way out


def test_live_lock_blocks_a_run_and_overwrite(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    (run_dir / "config.yaml").write_text((ROOT / "src/vlm_recipes/recipes/r4-joint.yaml").read_text())
    for extra in ([], ["--overwrite"], ["--resume"]):
        recipe = [] if extra == ["--resume"] else ["--recipe", "r4-joint"]
        assert train_main([*recipe, *extra, "--output-dir", str(run_dir), "--no-wandb"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by process {os.getppid()}" in err[0], err
    assert (run_dir / "metrics.json").read_text() == "{}"  # --overwrite deleted nothing


# --- the bad-input table: exit 2, one stderr line, no traceback, no complete-looking run --------

def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def files(tmp_path):
    """Inputs the table's cases point at (all under tmp_path)."""
    return {
        "file": _write(tmp_path / "a-file", "x"),
        "empty_yaml": _write(tmp_path / "empty.yaml", ""),
        "list_yaml": _write(tmp_path / "list.yaml", "- name: r\n- stages: []\n"),
        "config_only": _write(tmp_path / "cfg-only" / "config.json", "{}").parent,
        "not_image": _write(tmp_path / "imgs" / "notes.png", "not a picture"),
        "not_video": _write(tmp_path / "vids" / "clip.mp4", "not a video"),
        "run": _write(tmp_path / "run" / "status.json", '{"state": "failed"}').parent,
    }


TRAIN_CASES = [  # (argv, what the one line must say); {name} is a path from `files`
    (["--recipe", "r5-sft-grpo", "--set", "stages.1.objective.options.num_generations=1"], "num_generations=1"),
    (["--recipe", "r5-sft-grpo", "--set", "stages.1.objective.options.beta=-1"], "beta=-1.0"),
    (["--recipe", "r5-sft-grpo", "--set", "stages.1.objective.options.loss_type=ppo"], "loss_type='ppo'"),
    (["--recipe", "mrl", "--set", "data.num_shifted=8"], "data.num_shifted=8"),
    (["--recipe", "r4-joint", "--set", "train.lr_scheduler_type=bogus"], "train.lr_scheduler_type='bogus'"),
    (["--recipe", "r4-joint", "--set", "train.warmup_ratio=-1"], "train.warmup_ratio=-1.0"),
    (["--recipe", "r4-joint", "--set", "eval.batch_size=0"], "eval.batch_size=0"),
    (["--recipe", "r4-joint", "--set", "eval.max_new_tokens=0"], "eval.max_new_tokens=0"),
    (["--recipe", "r4-joint", "--set", "eval.num_plot=-1"], "eval.num_plot=-1"),
    (["--recipe", "r4-joint", "--set", "model.attn_implementation=flash_attention_2"], "flash_attn"),
    (["--recipe", "r4-joint", "--set", "model.attn_implementation=magic"], "model.attn_implementation='magic'"),
    (["--recipe", "{empty_yaml}", "--set", "seed=1"], "got an empty file"),
    (["--recipe", "{list_yaml}", "--set", "seed=1"], "got a list"),
    (["--recipe", "r4-joint", "--output-dir", "{file}/run"], "is not writable"),
    (["--recipe", "r4-joint", "--output-dir", "{file}"], "is a file"),
    (["--recipe", "r4-joint", "--model", "{config_only}"], "needs a model_type"),
    (["--recipe", "r4-joint", "--model", "/nonexistent"], "--model /nonexistent: no such directory"),
    (["--recipe", "r4-joint", "--set", "train.extra.bogus=1"], "train.extra.bogus"),
    (["--recipe", "r4-joint", "--set", "train.extra.save_strategy=bogus"], "bogus is not a valid SaveStrategy"),
    (["--recipe", "r4-joint", "--max-steps", "0"], "--max-steps 0: must be >= 1"),
    (["--recipe", "r4-joint", "--max-steps", "-1"], "--max-steps -1: must be >= 1"),
    (["--recipe", "r4-joint", "--epochs", "0"], "--epochs 0: must be positive"),
    (["--recipe", "r4-joint", "--max-steps", "two"], "invalid int value: 'two'"),
    (["--recipe", "r4-joint", "--set", "train.learning_rate=0"], "train.learning_rate=0.0"),
    (["--recipe", "r4-joint", "--set", "train.learning_rate=.inf"], "train.learning_rate=inf"),
    (["--recipe", "r4-joint", "--set", "train.save_steps=0"], "train.save_steps=0"),
    (["--recipe", "r4-joint", "--set", "train.save_total_limit=0"], "train.save_total_limit=0"),
    (["--recipe", "r4-joint", "--set", "train.divergence_factor=0.5"], "train.divergence_factor=0.5"),
    (["--recipe", "r4-joint", "--set", "train.logging_steps=0"], "train.logging_steps=0"),
    (["--recipe", "r4-joint", "--set", "train.per_device_train_batch_size=0"], "per_device_train_batch_size"),
    (["--recipe", "r4-joint", "--set", "lora.r=0"], "lora.r=0"),
    (["--recipe", "r4-joint", "--set", "lora.dropout=1"], "lora.dropout=1"),
    (["--recipe", "r4-joint", "--set", "lora.llm_modules=[]"], "lora.llm_modules"),
    (["--recipe", "r4-joint", "--set", "seed=-1"], "seed=-1"),
    (["--recipe", "r4-joint", "--set", "data.num_train=0"], "data.num_train"),
    (["--recipe", "r4-joint", "--set", "model.min_pixels=0"], "model.min_pixels=0"),
    (["--recipe", "r4-joint", "--set", "model.max_pixels=100", "--set", "model.min_pixels=200"], "need 0 < min_pixels"),
    (["--recipe", "r4-joint", "--dataset", "synthetic[train:0]"], "bad slice"),
    (["--recipe", "mrl", "--set", "objective.options.temperature=0"], "objective.options.temperature=0.0"),
    (["--recipe", "mrl-video", "--set", "data.video.num_frames=9"], "data.video.num_frames=9 > data.video.max_frames=8"),
    (["--recipe", "mrl-video", "--set", "data.video.max_pixels=100"], "data.video.max_pixels=100"),
    (["--recipe", "mrl-video", "--set", "data.num_test=81"], "synthetic-video has 80 different motions"),
    (["--recipe", "r4-joint", "--dataset", "synthetic-video"], "synthetic-video is retrieval data"),
    (["--recipe", "r4-joint", "--resume", "{run}"], "--resume continues the run with its own config.yaml"),
    (["--resume", "{file}"], "nothing to resume"),
    (["--resume"], "--resume needs the run directory"),
    (["--recipe", "r4-joint", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
]

ENCODE_CASES = [
    (["--model", "{file}/none", "--images", "{not_image}", "--query", "q"], "no such directory"),
    (["--model", "{config_only}", "--images", "{not_image}", "--query", "q"], "is not a readable image"),
    (["--model", "{config_only}", "--images", "{not_image}", "--texts", "{file}/q.txt", "--out", "{run}/e"],
     "--texts"),
    (["--model", "{config_only}", "--images", "{not_image}", "--query", "q", "--top-k", "-1"], "--top-k -1"),
    (["--model", "{config_only}", "--images", "{not_image}", "--query", "q", "--batch-size", "0"], "--batch-size 0"),
    (["--model", "{config_only}", "--images", "{not_image}", "--out", "{file}"], "is a file"),
    (["--model", "{config_only}", "--images", "{not_image}", "--out", "{file}/sub"], "lies under the file"),
    (["--model", "{config_only}", "--images", "{not_image}"], "nothing to do"),
    (["--model", "{config_only}", "--texts", "{file}", "--query", "q"], "--query searches images"),
    (["--model", "{config_only}"], "nothing to embed"),
    (["--model", "{config_only}", "--videos", "{not_video}", "--query", "q"], "unreadable video"),
    (["--model", "{config_only}", "--videos", "{file}/none.mp4", "--out", "{run}/e"], "--videos"),
    (["--images", "x"], "the following arguments are required: --model"),
]

COMPARE_CASES = [
    (["{run}", "--out-dir", "{file}/sub"], "could not write the leaderboard"),
    (["{run}", "--out-dir", "{file}"], "could not write the leaderboard"),
    (["{run}", "--no-files", "--csv", "x.csv"], "--no-files with an output path"),
    ([], "the following arguments are required: RUN_DIR"),
]


def _fill(argv: list[str], files: dict) -> list[str]:
    return [a.format(**files) for a in argv]


def _one_line(code: int, err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    assert lines[0].startswith("error: ") and needle in lines[0] and "Traceback" not in err, lines


@pytest.mark.parametrize("argv, needle", TRAIN_CASES, ids=[" ".join(a[-2:]) for a, _ in TRAIN_CASES])
def test_bad_train_input(argv, needle, files, tmp_path, capsys):
    out = [] if "--output-dir" in argv or "--resume" in argv else ["--output-dir", str(tmp_path / "out")]
    small = [] if "--resume" in argv else [*TINY, *SHORT_ANSWERS]  # first, so the case's own --set wins
    code = train_main([*small, *_fill(argv, files), *out])
    _one_line(code, capsys.readouterr().err, needle.format(**files))
    assert not (tmp_path / "out").exists()
    assert not (files["run"] / "metrics.json").exists()


@pytest.mark.parametrize("argv, needle", ENCODE_CASES, ids=[" ".join(a[-2:]) for a, _ in ENCODE_CASES])
def test_bad_encode_input(argv, needle, files, capsys):
    _one_line(encode.main(_fill(argv, files)), capsys.readouterr().err, needle)
    assert not (files["run"] / "e").exists()


@pytest.mark.parametrize("argv, needle", COMPARE_CASES, ids=[" ".join(a[-2:]) for a, _ in COMPARE_CASES])
def test_bad_compare_input(argv, needle, files, capsys):
    _one_line(compare.main(_fill(argv, files)), capsys.readouterr().err, needle)


@pytest.mark.parametrize("args, needle", [
    (["r9"], "unknown recipe 'r9'"),
    (["r4", "gpu0"], "GPUS 'gpu0'"),
    (["--bogus", "r4"], "unknown option --bogus"),
    (["r4", "--", "--output-dir", "x"], "--output-dir after --"),
])
def test_bad_run_recipes_input(args, needle, tmp_path):
    """Shell: a real process is the only way in."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run_recipes.sh"), "--out", str(tmp_path / "s"), *args],
                          capture_output=True, text=True, env=_env(PYTHON=sys.executable), timeout=60)
    _one_line(proc.returncode, proc.stderr, needle)
    assert not (tmp_path / "s").exists()


def test_script_entry_points_one_line_no_traceback(files):
    """The scripts as users start them (a process each: argparse and exit codes end to end;
    train_recipe.py's is tests/test_cli.py::test_script_exit_code_and_no_traceback)."""
    for script, argv in [("encode.py", ["--model", "/nonexistent", "--images", str(files["file"]), "--query", "q"]),
                         ("compare_runs.py", [str(files["run"]), "--out-dir", f"{files['file']}/x"])]:
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *argv], capture_output=True,
                              text=True, env=_env(), timeout=300)
        _one_line(proc.returncode, proc.stderr, "")


def test_hub_id_offline_fails_fast(monkeypatch, tmp_path, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.time()
    code = train_main(["--recipe", "r4-joint", "--model", "nobody/not-cached-vl", "--output-dir", str(tmp_path / "o"),
                       "--no-wandb"])
    _one_line(code, capsys.readouterr().err, "not in the local hub cache and HF_HUB_OFFLINE is set")
    assert time.time() - start < 10


# --- the quiet surprises, as units --------------------------------------------------------------

def test_divergence_factor_stops_with_the_step():
    from types import SimpleNamespace

    from vlm_recipes.config import TrainingDiverged

    guard = DivergenceGuard(factor=10)
    state = SimpleNamespace(global_step=1)
    guard.on_log(None, state, None, logs={"loss": 0.5})
    state.global_step = 4
    guard.on_log(None, state, None, logs={"loss": 4.9})
    with pytest.raises(TrainingDiverged, match="at step 5 is over train.divergence_factor=10") as err:
        state.global_step = 5
        guard.on_log(None, state, None, logs={"loss": 5.1})
    assert err.value.step == 5
    DivergenceGuard(factor=0).on_log(None, state, None, logs={"loss": 1e9})  # off


def test_short_runs_log_enough_points_and_loss_png_is_never_blank(tmp_path):
    from vlm_recipes.config import TrainConfig

    assert total_steps(TrainConfig(max_steps=4), 100) == 4
    assert total_steps(TrainConfig(num_train_epochs=2, per_device_train_batch_size=8), 20) == 6
    plot_loss([{"step": 1, "loss": 0.7}], tmp_path / "loss.png", title="one point")
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_retrieval_metrics_on_a_gallery_under_ten():
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.2, 0.9], [0.3, 0.8, 0.1]])  # 3 queries, 3 items
    metrics = retrieval_metrics(scores, torch.eye(3, dtype=torch.bool))
    assert metrics["recall@10"] == 1.0 and metrics["recall@1"] == pytest.approx(1 / 3)
    assert 0 < metrics["ndcg@10"] < 1


# --- run_recipes.sh: SIGTERM reaches the runs, the sweep waits and prints what finished ----------

SIGNAL_AWARE_TRAINER = '''#!{python}
"""Stands in for the interpreter: a train_recipe.py that stops on SIGTERM as the real one does (status
"interrupted", exit 143); r2 completes at once. compare_runs.py runs for real."""
import json, runpy, signal, sys, time
from pathlib import Path

if sys.argv[1].endswith("compare_runs.py"):
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
args = sys.argv[2:]
recipe, out = args[args.index("--recipe") + 1], Path(args[args.index("--output-dir") + 1])
out.mkdir(parents=True)
def stop(signum, frame):
    (out / "status.json").write_text(json.dumps({{"state": "interrupted", "stage": "main", "step": 3}}))
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
if recipe == "r2-vision-only":
    m = {{"mean_iou": 0.6, "median_iou": 0.6, "detection_rate": 1.0, "iou_gt_0.5": 0.6, "iou_gt_0.7": 0.6,
          "ap": 0.6, "ap50": 0.6, "n": 4}}
    (out / "metrics.json").write_text(json.dumps({{"recipe": recipe, "base": m, "finetuned": m,
        "train_seconds": 1, "trainable_params": 10, "stages": []}}))
    (out / "status.json").write_text(json.dumps({{"state": "complete"}}))
    sys.exit(0)
(out / "status.json").write_text(json.dumps({{"state": "running"}}))
time.sleep(120)
'''


def _wait_for(condition, timeout: float = 60) -> None:
    """Poll a file condition (what the processes wrote), not a fixed sleep."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_sweep_forwards_sigterm_and_prints_what_finished(tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(SIGNAL_AWARE_TRAINER.format(python=sys.executable))
    fake.chmod(0o755)
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "run_recipes.sh"), "--out", str(sweep), "parallel",
                             "r1", "r2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(PYTHON=str(fake), RUN_RECIPES_GPU_COUNT="0", RUN_RECIPES_CPU_COUNT="2"))
    running = sweep / "r1-llm-only" / "status.json"
    _wait_for(lambda: running.is_file() and (sweep / "r2-vision-only" / "metrics.json").is_file())
    start = time.time()
    proc.send_signal(15)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert time.time() - start < 60  # not the 120 s the run would have slept
    assert _status(sweep / "r1-llm-only") == {"state": "interrupted", "stage": "main", "step": 3}
    assert "r1-llm-only: interrupted (exit 143): resume with" in out
    assert "| r2-vision-only | r2-vision-only |" in out and (sweep / "leaderboard.md").is_file()  # what finished
    assert "status 'interrupted'" in out  # and what did not
