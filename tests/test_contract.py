"""The bad-input contract as rules (issue 32, DECISIONS D33), each through the real CLI entry
(`main(argv)`, in-process): nothing is deleted before everything is checked, everything knowable
before loading a model is checked before loading one, every file goes through one reader per kind,
and nonsense is refused. The fuzzer over a run's files is tests/test_fuzz_run_files.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

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
    # only the new run's files: its config.yaml (written first, D32), its status ("running") and its lock
    assert seen["left"] == ["config.yaml", "run.lock", "status.json"]


# --- 2. everything knowable before loading a model is checked before loading one ---------------

ONE_VAL_ROW = ["--set", "data.num_train=10", "--set", "data.num_test=2", "--no-wandb"]  # a tenth: 1 validation row


@pytest.mark.parametrize("argv, needle", [
    (["--recipe", "r4-joint", "--set", "train.metric_for_best=exact_match"], "on this data"),
    (["--recipe", "mrl", "--set", "train.metric_for_best=t2i.999.recall@1"], "t2i.999.recall@1"),
])
def test_metric_names_are_checked_against_the_data_before_any_weights_load(capsys, tmp_path, no_model_loads,
                                                                           argv, needle):
    run_dir = tmp_path / "run"
    code, err = _run(capsys, train_main, [*argv, *ONE_VAL_ROW, "--output-dir", str(run_dir)])
    assert code == 2 and len(err) == 1 and "metric_for_best" in err[0] and needle in err[0], err
    assert not run_dir.exists()


def test_a_prompt_longer_than_max_length_is_refused_before_any_weights_load(capsys, tmp_path, no_model_loads):
    run_dir = tmp_path / "run"
    code, err = _run(capsys, train_main, ["--recipe", "r4-joint", "--set", "objective.options.max_length=64",
                                          "--set", "data.prompt=" + "find the table " * 30, *SMALL,
                                          "--output-dir", str(run_dir)])
    assert code == 2 and len(err) == 1 and "data.prompt is" in err[0] and "max_length=64" in err[0], err
    assert not run_dir.exists()


def test_a_device_string_is_checked_before_any_weights_load(capsys, tmp_path, no_model_loads):
    from vlm_recipes.cli import evaluate, export, predict

    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "white").save(photo)
    for main, argv in ((predict.main, ["--model", "tiny", "--images", str(photo)]),
                       (evaluate.main, ["--model", "tiny", "--dataset", "synthetic"]),
                       (export.main, ["--model", "tiny", "--out", str(tmp_path / "x")])):
        for device, needle in (("gpu0", "expected cpu, cuda or cuda:N"), ("cuda:99", "cuda:99")):
            code, err = _run(capsys, main, [*argv, "--device", device])
            assert code == 2 and len(err) == 1 and needle in err[0], err


def test_an_adapter_given_as_the_base_says_export_it_first(capsys, tmp_path, no_model_loads):
    adapter = tmp_path / "model"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "tiny", "peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}))
    code, err = _run(capsys, train_main, ["--recipe", "r4-joint", "--model", str(adapter), *SMALL,
                                          "--output-dir", str(tmp_path / "run")])
    assert code == 2 and len(err) == 1 and "is a LoRA adapter" in err[0] and "vlm-recipes export" in err[0], err


# --- 5. nonsense is refused ------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--set", "train.extra.learning_rate=5"], "train.extra.learning_rate: set by train.learning_rate"),
    (["--set", "train.extra.seed=5"], "train.extra.seed: set by the recipe's seed"),
    (["--gpu", "cpu", "--parallel", "model", "--nproc", "2"], "--parallel model with --nproc 2"),
])
def test_nonsense_options_are_refused(capsys, tmp_path, argv, needle):
    code, err = _run(capsys, train_main, ["--recipe", "r4-joint", *SMALL, *argv, "--output-dir", str(tmp_path / "r")])
    assert code == 2 and len(err) == 1 and needle in err[0], err


def test_resume_refuses_every_option_that_changes_the_run(capsys, tmp_path):
    for extra in (["--nproc", "2"], ["--parallel", "model"], ["--accelerate-config", "x.yaml"], ["--seed", "3"]):
        code, err = _run(capsys, train_main, ["--resume", str(tmp_path), *extra])
        assert code == 2 and len(err) == 1 and "--resume continues the run" in err[0] and extra[0] in err[0], err


def test_duplicate_yaml_keys_and_a_recipe_directory_are_errors(capsys, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text((ROOT / "src/vlm_recipes/recipes/r4-joint.yaml").read_text() + "\nseed: 1\nseed: 2\n")
    code, err = _run(capsys, train_main, ["--recipe", str(recipe), *SMALL, "--output-dir", str(tmp_path / "r")])
    assert code == 2 and len(err) == 1 and "'seed' appears twice" in err[0] and "mine.yaml" in err[0], err
    code, err = _run(capsys, train_main, ["--recipe", str(tmp_path), *SMALL, "--output-dir", str(tmp_path / "r")])
    assert code == 2 and len(err) == 1 and "is a directory" in err[0], err


def test_validation_size_is_a_stated_warning():
    from vlm_recipes.training.checks import validation_note

    assert validation_note(0, 0, 100) is None and validation_note(64, 64, 576) is None
    assert "no validation rows were carved" in validation_note(64, 0, 4)
    assert "validation on 3 rows (3 carved, at most a tenth of the 30 training rows)" in validation_note(64, 3, 27)
    assert "data.num_val=64, but 10 rows were carved" in validation_note(64, 10, 90)


def _sft_run_with_model(tmp_path: Path) -> Path:
    """A run directory of an sft recipe whose model/ is a copy of the tiny base (no training)."""
    run = tmp_path / "sft-run"
    shutil.copytree(ROOT / "src/vlm_recipes/assets/tiny-qwen3-vl", run / "model")
    (run / "config.yaml").write_text((ROOT / "src/vlm_recipes/recipes/r4-joint.yaml").read_text())
    return run


def test_encode_needs_an_embedding_model(capsys, tmp_path, no_model_loads):
    from vlm_recipes.cli import encode

    run = _sft_run_with_model(tmp_path)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "white").save(photo)
    code, err = _run(capsys, encode.main, ["--model", str(run / "model"), "--images", str(photo), "--query", "q"])
    assert code == 2 and len(err) == 1 and "not an embedding model" in err[0] and "mrl" in err[0], err


def test_export_refuses_its_own_input_and_fails_when_the_reload_check_fails(capsys, tmp_path, monkeypatch,
                                                                          no_model_loads):
    from vlm_recipes import api
    from vlm_recipes.cli import export
    from vlm_recipes.models.export import ExportResult

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text((ROOT / "src/vlm_recipes/recipes/r4-joint.yaml").read_text())
    (run / "model" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "tiny", "peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}))
    for out in (run / "model", run, run / "model" / "merged"):
        code, err = _run(capsys, export.main, ["--model", str(run / "model"), "--out", str(out)])
        assert code == 2 and len(err) == 1 and "would overwrite its own input" in err[0], err
    monkeypatch.setattr(api, "export", lambda *a, **k: ExportResult(tmp_path / "merged", "tiny", 0.3, 1.61))
    code, err = _run(capsys, export.main, ["--model", str(run / "model"), "--out", str(tmp_path / "merged")])
    assert code == 1 and len(err) == 1 and "does not reload as merged" in err[0] and "1.61" in err[0], err


# --- 7. messages say what happened and what to do -------------------------------------------------

def test_run_info_records_a_command_that_reruns():
    from vlm_recipes.cli.train import build_parser, rerun_command

    args = build_parser().parse_args(["--recipe", "r4-joint", "--max-steps", "5", "--max-steps", "6",
                                      "--set", "data.prompt=Find it.", "--no-wandb", "--output-dir", "runs/x"])
    assert rerun_command(args) == ("vlm-recipes train --recipe r4-joint --max-steps 6 --output-dir runs/x "
                                   "--no-wandb --set 'data.prompt=Find it.'")


def test_accelerate_config_on_the_cpu_does_not_blame_a_flag_never_given(capsys, tmp_path):
    config = ROOT / "configs" / "accelerate" / "fsdp.yaml"
    code, err = _run(capsys, train_main, ["--recipe", "r2-vision-only", "--nproc", "2", "--accelerate-config",
                                          str(config), *SMALL, "--output-dir", str(tmp_path / "r")])
    assert code == 2 and len(err) == 1 and "on the CPU (--gpu cpu, or no GPU visible)" in err[0], err


def test_predict_reports_a_tenth_of_a_pixel_and_says_where_it_drew(capsys, tmp_path, monkeypatch):
    from vlm_recipes import api
    from vlm_recipes.cli import predict

    photo = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), "white").save(photo)
    located = api._Located("tiny", None, None, None, None)
    monkeypatch.setattr(api, "answer_boxes", lambda *a: [("table", (10.123456, 20.987654, 300.05, 400.44444))])
    row = api._prediction(photo, Image.open(photo), "answer", 0.98765, "table", located)
    assert row["box"] == [10.1, 21.0, 300.1, 400.4]  # as predictions.json reports the run's own
    assert [b["box"] for b in row["boxes"]] == [[10.1, 21.0, 300.1, 400.4]]
    assert row["box_normalized_off"] == pytest.approx([21.0 / 480, 10.1 / 640, 400.4 / 480, 300.1 / 640])
    monkeypatch.setattr(api, "predict", lambda *a, **k: [dict(row, image=str(photo))])
    assert predict.main(["--model", "tiny", "--images", str(photo), "--out", str(tmp_path / "out"), "--draw"]) == 0
    out = capsys.readouterr().out
    assert f"drawn -> {tmp_path / 'out' / 'drawn'}/" in out and (tmp_path / "out" / "drawn" / "photo.png").is_file()


def test_a_resume_says_which_stage_and_step_it_continues_from(capsys, tmp_path, short_r4_run, no_model_loads):
    run = Path(shutil.copytree(short_r4_run, tmp_path / "run"))
    (run / "status.json").write_text(json.dumps({"state": "interrupted", "stage": "joint-lora", "step": 6}))
    (run / "progress.json").write_text("[]")
    with pytest.raises(no_model_loads):  # it goes on, up to loading the weights
        train_main(["--resume", str(run), "--no-wandb"])
    err = capsys.readouterr().err
    assert (f"resuming the interrupted run in {run}: stage 1/1 'joint-lora' from step 6 "
            "(trainer/joint-lora/checkpoint-6)") in err, err


# --- 8. fast where a person waits --------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["list"], ["--help"], ["train", "--help"], ["train", "--list"]])
def test_list_and_help_import_no_torch(argv):
    """What makes them answer in well under 2 s: no torch, no transformers (measured: 0.1-0.4 s)."""
    code = ("import sys; from vlm_recipes.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:] + done.stderr[-500:]


def test_a_stage_objective_option_set_on_the_recipe_objective_says_where_it_goes(capsys, tmp_path):
    code, err = _run(capsys, train_main, ["--recipe", "r5-sft-grpo", "--set", "objective.options.beta=0.1", *SMALL,
                                          "--output-dir", str(tmp_path / "r")])
    assert code == 2 and len(err) == 1 and "--set stages.1.objective.options.beta=" in err[0], err


def test_text_files_that_are_not_utf8_are_one_line_naming_them(capsys, tmp_path, no_model_loads):
    from vlm_recipes.cli import encode

    latin = "caf\xe9".encode("latin-1")
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(b'{"image": "a.png", "query": "' + latin + b'"}\n')
    code, err = _run(capsys, train_main, ["--recipe", "mrl", "--dataset", str(rows), *SMALL,
                                          "--output-dir", str(tmp_path / "r")])
    assert code == 2 and len(err) == 1 and "rows.jsonl: not UTF-8 text" in err[0], err
    queries = tmp_path / "queries.txt"
    queries.write_bytes(latin + b"\n")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), "white").save(photo)
    code, err = _run(capsys, encode.main, ["--model", str(ROOT / "src/vlm_recipes/assets/tiny-qwen3-vl"),
                                           "--images", str(photo), "--texts", str(queries), "--out", str(tmp_path / "e")])
    assert code == 2 and len(err) == 1 and "queries.txt: not UTF-8 text" in err[0], err
