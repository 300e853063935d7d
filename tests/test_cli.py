"""Bad input through the real CLI entry: one line on stderr, exit 2, no run directory that looks complete."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlm_recipes.cli.train import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.num_train=4", "--set", "data.num_test=2", "--no-wandb"]


def _run(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def _assert_not_complete(run_dir: Path):
    status = run_dir / "status.json"
    assert not (run_dir / "metrics.json").exists()
    assert not status.exists() or json.loads(status.read_text())["state"] != "complete"


@pytest.mark.parametrize("argv, needle", [
    (["--recipe", "r9-magic"], "unknown recipe 'r9-magic': choose one of"),
    (["--recipe", "r4-joint", "--gpu", "7"], "--gpu '7': GPU 7 does not exist"),
    (["--recipe", "r4-joint", "--gpu", "zero"], "expected GPU ids"),
    (["--recipe", "r4-joint", "--set", "train.warp=9"], "unknown key 'stages.0.train.warp'"),
    (["--recipe", "r4-joint", "--dataset", "/no/such/dataset"], "/no/such/dataset"),
    (["--recipe", "r4-joint", "--family", "llama"], "unknown model family 'llama'"),
    ([], "--recipe is required"),
    (["--recipe", "r2-vision-only", "--gpu", "cpu", "--nproc", "2", "--accelerate-config",
      str(ROOT / "configs" / "accelerate" / "fsdp.yaml")], "accelerate runs FSDP and DeepSpeed on GPUs only"),
    (["--recipe", "r2-vision-only", "--gpu", "cpu", "--accelerate-config", "/no/fsdp.yaml"],
     "--accelerate-config /no/fsdp.yaml: no such file"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, needle):
    run_dir = tmp_path / "run"
    code, err = _run(capsys, argv + ["--output-dir", str(run_dir)] + SMALL)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not run_dir.exists()


def test_model_dir_without_processor(capsys, tmp_path):
    model_dir = tmp_path / "weights-only"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    run_dir = tmp_path / "run"
    code, err = _run(capsys, ["--recipe", "r4-joint", "--model", str(model_dir), "--output-dir", str(run_dir)] + SMALL)
    assert code == 2 and len(err) == 1 and "could not load a processor" in err[0], err
    assert not run_dir.exists()


def test_existing_run_dir_is_not_overwritten_silently(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text("{}")
    code, err = _run(capsys, ["--recipe", "r4-joint", "--output-dir", str(run_dir)] + SMALL)
    assert code == 2 and "already holds files" in err[0]
    assert (run_dir / "metrics.json").read_text() == "{}"


def test_list_shows_every_recipe_with_description(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("r1-llm-only", "r2-vision-only", "r3-two-stage", "r4-joint"):
        assert name in out
    assert "4-bit NF4" in out


def test_script_exit_code_and_no_traceback(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_recipe.py"), "--recipe", "nope",
                           "--output-dir", str(run_dir)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown recipe 'nope'")
    _assert_not_complete(run_dir)
