"""scripts/run_recipes.sh: argument handling (dry runs) and a real sweep with a stand-in trainer."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "run_recipes.sh"


def _sh(*args, gpus=0, cores=2, python=sys.executable, **env):
    inherited = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    full_env = dict(inherited, RUN_RECIPES_GPU_COUNT=str(gpus), RUN_RECIPES_CPU_COUNT=str(cores), PYTHON=python,
                    **env)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=120)


def _commands(result) -> list[list[str]]:
    """The train commands of a dry run, as argument lists (the log redirection dropped)."""
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "train_recipe.py" in line]
    return [shlex.split(line.split(" > ")[0]) for line in lines]


def _flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def test_help_explains_every_mode():
    result = _sh("--help")
    assert result.returncode == 0
    for words in ("RECIPE [GPUS]", "all [GPUS]", "parallel [RECIPES...]", "OMP_NUM_THREADS", "--gpu-groups",
                  "--dry-run", "SWEEP/<recipe>.log", "leaderboard", "Exit status"):
        assert words in result.stdout, words


def test_one_recipe_short_name_on_gpus_with_passthrough(tmp_path):
    cmds = _commands(_sh("--dry-run", "--out", tmp_path / "s", "r4", "0,1", "--", "--max-steps", "20",
                         "--set", "data.num_train=64"))
    assert len(cmds) == 1
    cmd = cmds[0]
    assert _flag(cmd, "--recipe") == "r4-joint" and _flag(cmd, "--gpu") == "0,1"
    assert _flag(cmd, "--output-dir") == str(tmp_path / "s" / "r4-joint")
    assert cmd[-4:] == ["--max-steps", "20", "--set", "data.num_train=64"]
    assert not cmd[0].startswith("env")  # one run: the trainer uses every core


def test_full_names_and_no_gpu_argument():
    cmd = _commands(_sh("--dry-run", "r2-vision-only"))[0]
    assert _flag(cmd, "--recipe") == "r2-vision-only" and "--gpu" not in cmd


def test_all_runs_every_recipe_in_order():
    cmds = _commands(_sh("--dry-run", "all", "cpu"))
    shipped = sorted(p.stem for p in (ROOT / "src" / "vlm_recipes" / "recipes").glob("*.yaml"))
    assert [_flag(c, "--recipe") for c in cmds] == shipped
    assert {_flag(c, "--gpu") for c in cmds} == {"cpu"}


def test_parallel_splits_gpus_into_groups():
    cmds = _commands(_sh("--dry-run", "parallel", "r1", "r2", gpus=4))
    assert [(_flag(c, "--recipe"), _flag(c, "--gpu")) for c in cmds] == [("r1-llm-only", "0,1"),
                                                                          ("r2-vision-only", "2,3")]
    cmds = _commands(_sh("--dry-run", "--gpu-groups", "3:0,1,2", "parallel", "r1", "r2", gpus=4))
    assert [_flag(c, "--gpu") for c in cmds] == ["3", "0,1,2"]


@pytest.mark.parametrize("cores, runs, threads", [(2, 2, "1"), (8, 3, "2"), (2, 3, "1")])
def test_parallel_on_cpu_splits_the_cores(cores, runs, threads):
    names = ["r1", "r2", "r3"][:runs]
    cmds = _commands(_sh("--dry-run", "parallel", *names, cores=cores))
    assert len(cmds) == runs
    for cmd in cmds:
        assert cmd[:3] == ["env", f"OMP_NUM_THREADS={threads}", f"MKL_NUM_THREADS={threads}"]
        assert _flag(cmd, "--gpu") == "cpu"
    assert len({_flag(c, "--output-dir") for c in cmds}) == runs  # a directory per run


@pytest.mark.parametrize("args, gpus, message", [
    (["r9"], 0, "unknown recipe 'r9'"),
    (["r1", "0,x"], 0, "GPUS '0,x'"),
    (["r1", "0", "1"], 0, "at most one GPUS"),
    (["parallel", "r1", "r2"], 1, "need at least 2 GPUs"),
    (["--gpu-groups", "0", "parallel", "r1", "r2"], 2, "1 group(s) for 2 run(s)"),
    (["parallel", "r1", "r1-llm-only"], 0, "listed twice"),
    (["r1", "--", "--output-dir", "x"], 0, "--output-dir after --"),
    (["--bogus", "r1"], 0, "unknown option --bogus"),
    ([], 0, "Usage"),
])
def test_bad_arguments_exit_2_with_a_message(args, gpus, message):
    result = _sh("--dry-run", *args, gpus=gpus)
    assert result.returncode == 2
    assert message in result.stderr


def test_an_existing_sweep_directory_is_refused(tmp_path):
    (tmp_path / "old.log").write_text("x")
    result = _sh("--dry-run", "--out", tmp_path, "r1")
    assert result.returncode == 2 and "already holds files" in result.stderr


FAKE_TRAINER = '''#!{python}
"""Stands in for the interpreter: fakes train_recipe.py, runs compare_runs.py for real."""
import json, os, runpy, sys, time
from pathlib import Path

if sys.argv[1].endswith("compare_runs.py"):
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
args = sys.argv[2:]
recipe, out = args[args.index("--recipe") + 1], Path(args[args.index("--output-dir") + 1])
start = time.time()
print("threads", os.environ.get("OMP_NUM_THREADS"), "args", args)
time.sleep(1.5)
out.mkdir(parents=True)
if recipe == "r3-two-stage":
    (out / "status.json").write_text(json.dumps({{"state": "failed", "error": "TrainingDiverged: nan"}}))
    sys.exit(1)
iou = {{"r1-llm-only": 0.3, "r2-vision-only": 0.6}}[recipe]
m = lambda v: {{"mean_iou": v, "median_iou": v, "detection_rate": 1.0, "iou_gt_0.5": v, "iou_gt_0.7": v,
               "ap": v, "ap50": v, "n": 4}}
(out / "metrics.json").write_text(json.dumps({{"recipe": recipe, "base": m(0.1), "finetuned": m(iou),
    "train_seconds": 1.5, "trainable_params": 10, "stages": [], "span": [start, time.time()]}}))
(out / "status.json").write_text(json.dumps({{"state": "complete"}}))
'''


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / "fake-python"
    path.write_text(FAKE_TRAINER.format(python=sys.executable))
    path.chmod(0o755)
    return path


def test_parallel_sweep_runs_concurrently_and_prints_the_leaderboard(tmp_path, fake_python):
    sweep = tmp_path / "sweep"
    result = _sh("--out", sweep, "parallel", "r1", "r2", "--", "--max-steps", "2", python=fake_python, cores=2)
    assert result.returncode == 0, result.stdout + result.stderr
    spans = [json.loads((sweep / r / "metrics.json").read_text())["span"] for r in ("r1-llm-only", "r2-vision-only")]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]  # the two runs overlapped in time
    for recipe in ("r1-llm-only", "r2-vision-only"):
        log = (sweep / f"{recipe}.log").read_text()
        assert log.startswith("threads 1 args") and recipe in log and "--max-steps" in log
    out = result.stdout
    assert "| 1 | r2-vision-only |" in out and "| 2 | r1-llm-only |" in out and "| 3 | base |" in out
    assert (sweep / "leaderboard.md").is_file() and (sweep / "leaderboard.csv").is_file()


def test_a_failed_run_makes_the_sweep_fail_but_the_others_finish(tmp_path, fake_python):
    sweep = tmp_path / "sweep"
    result = _sh("--out", sweep, "parallel", "r2", "r3", python=fake_python)
    assert result.returncode == 1
    assert "r3-two-stage: FAILED (exit 1" in result.stdout
    assert "| 1 | r2-vision-only |" in result.stdout  # the good run is still on the board
    assert "status 'failed'" in result.stdout and "TrainingDiverged: nan" in result.stdout


def test_sequential_mode_tees_the_log(tmp_path, fake_python):
    result = _sh("--out", tmp_path / "s", "r1", python=fake_python)
    assert result.returncode == 0, result.stderr
    assert "=== r1-llm-only" in result.stdout and "threads None" in result.stdout  # no thread cap when alone
    assert (tmp_path / "s" / "r1-llm-only.log").read_text().startswith("threads None")
    assert "| 1 | r1-llm-only |" in result.stdout
