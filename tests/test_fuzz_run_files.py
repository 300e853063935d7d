"""The fuzzer of issue 32 (DECISIONS D33): every file of a finished run, an interrupted run and a
checkpoint, corrupted each way (zero bytes, [], {}, null, binary, truncated, wrong types for known
keys), read by every command that reads it: --resume, compare, predict, evaluate, export, encode,
and mrl-distill with the run as teacher. The rule for each combination: exit 2, no traceback, at
most 3 lines on stderr, the file named, and the run directory untouched (so never one that looks
complete): bad input costs seconds and changes nothing.

The runs are built once: the session's short r4-joint run (conftest.short_r4_run, shared with the
use-a-model tests), copied; the interrupted one is that copy with status "interrupted" and without
the files a finished run adds (its checkpoint-6 is the Trainer's own). Commands run in-process
through their `main(argv)`, as the console script does; the failures all happen before any model
loads (`no_model_loads` makes any load a reported failure), which is what makes a few hundred
combinations cost about a minute.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlm_recipes.cli import compare, encode, evaluate, export, predict
from vlm_recipes.cli.train import main as train_main

BINARY = bytes(range(256)) * 3
PLAIN = {"zero bytes": b"", "[]": b"[]", "{}": b"{}", "null": b"null", "binary": BINARY}
WRONG_TYPES = {
    "status.json": {"state": 3},
    "metrics.json": {"base": [], "finetuned": "0.5"},
    "run_info.json": {"command": 5, "resumed": "x"},
    "base_eval.json": {"metrics": "x", "predictions": {}},
    "progress.json": [1, "stage"],
    "config.yaml": "name: r4-joint\nseed: many\nstages: 3\n",
    "adapter_config.json": {"base_model_name_or_path": 7, "peft_type": "LORA", "r": "8", "target_modules": []},
    "tokenizer_config.json": {"tokenizer_class": ["x"]},
    "processor_config.json": {"processor_class": "x", "image_processor": "x"},
    "tokenizer.json": {"model": 1},
    "trainer_state.json": {"global_step": "6", "log_history": {}},
    "adapter_model.safetensors": b"\x0e\x00\x00\x00\x00\x00\x00\x00{\"w\": \"F32\"}  ",
}
VALID = {("progress.json", "[]")}
"""Corruptions that are a valid value of that file (no stage finished yet): not corruptions."""
CHECKPOINT = "trainer/joint-lora/checkpoint-6"


def corruptions(name: str, original: bytes) -> dict[str, bytes]:
    found = {**PLAIN, "truncated": original[: len(original) // 2]}
    wrong = WRONG_TYPES.get(name)
    if wrong is not None:
        found["wrong types"] = wrong if isinstance(wrong, bytes) else (
            wrong.encode() if isinstance(wrong, str) else json.dumps(wrong).encode())
    return {how: data for how, data in found.items() if (name, how) not in VALID}


@pytest.fixture(scope="module")
def runs(short_r4_run, tmp_path_factory) -> dict[str, Path]:
    """{"finished", "interrupted"} copies of the session's short run, and a work directory."""
    root = tmp_path_factory.mktemp("fuzz")
    finished = Path(shutil.copytree(short_r4_run, root / "finished"))
    interrupted = Path(shutil.copytree(short_r4_run, root / "interrupted"))
    for name in ("metrics.json", "predictions.json", "results.md", "train_log.json", "eval_history.json"):
        (interrupted / name).unlink(missing_ok=True)
    shutil.rmtree(interrupted / "model")
    (interrupted / "status.json").write_text(json.dumps({"state": "interrupted", "stage": "joint-lora", "step": 6}))
    (interrupted / "progress.json").write_text("[]")
    work = root / "work"
    work.mkdir()
    Image.new("RGB", (64, 48), "white").save(work / "photo.png")
    return {"finished": finished, "interrupted": interrupted, "work": work}


def commands(runs: dict[str, Path]) -> dict[str, tuple]:
    """Command name -> (main, argv, output directory it must not leave behind)."""
    finished, work = runs["finished"], runs["work"]
    model, photo = str(finished / "model"), str(work / "photo.png")
    return {
        "resume-finished": (train_main, ["--resume", str(finished), "--no-wandb"], None),
        "resume": (train_main, ["--resume", str(runs["interrupted"]), "--no-wandb"], None),
        "compare": (compare.main, [str(finished), "--no-files"], None),
        "compare-interrupted": (compare.main, [str(runs["interrupted"]), "--no-files"], None),
        "predict": (predict.main, ["--model", model, "--images", photo], None),
        "evaluate": (evaluate.main, ["--model", model, "--dataset", "synthetic", "--max-test", "2",
                                     "--out", str(work / "eval")], work / "eval"),
        "export": (export.main, ["--model", model, "--out", str(work / "export")], work / "export"),
        "encode": (encode.main, ["--model", model, "--images", photo, "--query", "a table"], None),
        "mrl-distill": (train_main, ["--recipe", "mrl-distill", "--set", f"objective.options.teacher={finished}",
                                     "--set", "objective.options.teacher_pooling=last", "--set", "data.num_train=8",
                                     "--set", "data.num_test=4", "--no-wandb", "--output-dir",
                                     str(work / "student")], work / "student"),
    }


USE_MODEL = ("predict", "evaluate", "export", "encode")
READERS = {  # (which run, file) -> the commands that read it
    ("finished", "config.yaml"): ("resume-finished", *USE_MODEL, "mrl-distill"),
    ("finished", "status.json"): ("resume-finished", "compare", "mrl-distill"),
    ("finished", "metrics.json"): ("compare",),
    **{("finished", f"model/{name}"): (*USE_MODEL, "mrl-distill")
       for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
                    "processor_config.json", "tokenizer.json", "chat_template.jinja")},
    ("interrupted", "status.json"): ("resume", "compare-interrupted"),
    **{("interrupted", name): ("resume",) for name in ("config.yaml", "run_info.json", "base_eval.json",
                                                       "progress.json")},
    **{("interrupted", f"{CHECKPOINT}/{name}"): ("resume",)
       for name in ("trainer_state.json", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt",
                    "scheduler.pt", "rng_state.pth", "training_args.bin")},
}


def _stat(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_every_corrupt_file_is_one_line_for_every_command_that_reads_it(runs, capsys, no_model_loads):
    table = commands(runs)
    tried, unclean = 0, []
    for (which, name), readers in READERS.items():
        path = runs[which] / name
        original = path.read_bytes()
        for how, data in corruptions(path.name, original).items():
            path.write_bytes(data)
            for command in readers:
                main, argv, output = table[command]
                before = _stat(runs[which])
                try:
                    code = main(list(argv))
                except BaseException as raised:  # noqa: BLE001 (an escaped exception is unclean, reported)
                    code = f"raised {type(raised).__name__}: {raised}"[:200]
                err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
                problems = [what for what, bad in (
                    (f"exit {code}", code != 2),
                    ("traceback", any("Traceback" in line for line in err)),
                    (f"{len(err)} stderr lines", len(err) > 3),
                    ("file not named", not any(path.name in line for line in err)),
                    ("run directory changed", _stat(runs[which]) != before),
                    ("output left behind", output is not None and output.exists()),
                ) if bad]
                if problems:
                    unclean.append(f"{command} with {which}/{name} = {how}: {', '.join(problems)}: {err[-3:]}")
                tried += 1
            path.write_bytes(original)
            # restoring the bytes changes the mtime: the next command compares against the new stat
    with capsys.disabled():
        print(f"\nfuzzer: {tried} combinations of corrupt file x command, {len(unclean)} unclean")
    assert tried >= 200
    assert not unclean, "\n".join(unclean)
