"""The bad-input contract as rules (issue 32, DECISIONS D33), each through the real CLI entry
(`main(argv)`, in-process): nothing is deleted before everything is checked, everything knowable
before loading a model is checked before loading one, every file goes through one reader per kind,
and nonsense is refused. The fuzzer over a run's files is tests/test_fuzz_run_files.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_recipes.cli.train import main as train_main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "data.num_train=4", "--set", "data.num_test=2", "--no-wandb"]


def _run(capsys, main, argv) -> tuple[int, list[str]]:
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line]
    return code, err


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes: equal snapshots are byte-identical directories."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _earlier_run(path: Path) -> Path:
    """A finished run's files as a run writes them (what --overwrite may replace)."""
    (path / "model").mkdir(parents=True)
    (path / "config.yaml").write_text((ROOT / "src/vlm_recipes/recipes/r4-joint.yaml").read_text())
    (path / "status.json").write_text(json.dumps({"state": "complete"}))
    (path / "metrics.json").write_text(json.dumps({"base": {"map": 0.1}, "finetuned": {"map": 0.5}}))
    (path / "model" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    (path / "loss.png").write_bytes(b"\x89PNG\r\n")
    return path


# --- 1. nothing is deleted before everything is checked ----------------------------------------

@pytest.mark.parametrize("bad, needle", [
    (["--dataset", "missing.jsonl"], "missing.jsonl"),
    (["--model", "/no/such/model"], "/no/such/model"),
    (["--set", "train.warp=9"], "unknown key"),
    (["--set", "data.num_train=-3"], "num_train"),
])
def test_overwrite_with_bad_input_leaves_the_earlier_run_byte_identical(capsys, tmp_path, bad, needle):
    run_dir = _earlier_run(tmp_path / "run")
    before = _snapshot(run_dir)
    code, err = _run(capsys, train_main, ["--recipe", "r4-joint", "--overwrite", "--output-dir", str(run_dir),
                                          *SMALL, *bad])
    assert code == 2 and len(err) == 1 and needle in err[0], err
    assert _snapshot(run_dir) == before


@pytest.mark.parametrize("contents, needle", [
    ({"notes.txt": "mine"}, "not a run directory"),
    ({"status.json": '{"state": "complete"}', "thesis.tex": "mine"}, "'thesis.tex'"),
    ({"status.json": '{"state": "complete"}', "data/rows.jsonl": "{}"}, "'data'"),
])
def test_overwrite_refuses_a_folder_that_is_not_a_run(capsys, tmp_path, contents, needle):
    folder = tmp_path / "folder"
    for name, text in contents.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = _snapshot(folder)
    code, err = _run(capsys, train_main, ["--recipe", "r4-joint", "--overwrite", "--output-dir", str(folder), *SMALL])
    assert code == 2 and len(err) == 1 and needle in err[0] and "not deleted" in err[0], err
    assert _snapshot(folder) == before


def test_overwrite_replaces_a_run_only_once_its_inputs_opened(capsys, tmp_path, monkeypatch):
    """With good input the earlier run is cleared after open_run (model, data), before training: the
    run stops right there (a stand-in for training), and the earlier files are gone, the lock too."""
    import vlm_recipes.training.run as run_module

    seen = {}

    def stop_instead_of_training(run, run_dir, command):
        seen["left"] = sorted(p.name for p in run_dir.path.iterdir())
        raise KeyboardInterrupt  # not an InputError: nothing may catch it as bad input

    monkeypatch.setattr(run_module, "train_and_evaluate", stop_instead_of_training)
    run_dir = _earlier_run(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train_main(["--recipe", "r4-joint", "--overwrite", "--output-dir", str(run_dir), *SMALL])
    assert seen["left"] == ["run.lock", "status.json"]  # only the new run's status ("running") and its lock
