"""The leaderboard: rows, ordering, base rows, retrieval table, missing and partial runs, files."""

from __future__ import annotations

import csv
import json

import pytest

from vlm_recipes.cli.compare import main
from vlm_recipes.evaluation.leaderboard import expand_run_dirs, leaderboard_for, to_markdown


def _det(mean, n=10):
    return {"mean_iou": mean, "median_iou": mean + 0.01, "detection_rate": 1.0, "iou_gt_0.5": mean / 2,
            "iou_gt_0.7": mean / 4, "ap": mean / 3, "ap50": mean / 2, "n": n}


BASE_FULL, BASE_4BIT = _det(0.10), _det(0.08)


def _run(root, name, finetuned, base=BASE_FULL, four_bit=False, state="complete", error=None, **extra):
    path = root / name
    path.mkdir(parents=True)
    status = {"state": state, **({"error": error} if error else {})}
    (path / "status.json").write_text(json.dumps(status))
    if finetuned is not None:
        metrics = {"recipe": name, "objective": "sft", "family": "qwen3_vl", "base_model": "/x/tiny-qwen3-vl",
                   "base": base, "finetuned": finetuned, "train_seconds": 12.5, "trainable_params": 1234,
                   "stages": [{"name": "s", "quantized": {"llm": 100 if four_bit else 0}}], **extra}
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def _retrieval(r1_by_dim):
    def block(r1):
        return {str(d): {"recall@1": v, "recall@5": v, "recall@10": v, "mrr@10": v + 0.01, "ndcg@10": v}
                for d, v in zip((16, 32, 64, 128), r1)}
    return {"t2i": block(r1_by_dim), "i2t": block([v / 2 for v in r1_by_dim])}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    _run(root, "r1-llm-only", _det(0.40), BASE_4BIT, four_bit=True)
    _run(root, "r2-vision-only", _det(0.60))
    _run(root, "r4-joint", _det(0.70), BASE_4BIT, four_bit=True)
    _run(root, "r3-two-stage", None, state="failed", error="TrainingDiverged: loss became nan")
    _run(root, "mdlm-cut", _det(0.3), state="running")  # metrics.json present but not complete: partial
    (root / "r3-two-stage.log").write_text("log files are not runs")
    mrl = _run(root, "mrl", None)
    (mrl / "metrics.json").write_text(json.dumps({
        "recipe": "mrl", "dims": [16, 32, 64, 128], "objective": "mrl", "base_model": "/x/tiny-qwen3-vl",
        "base": _retrieval([0.1, 0.12, 0.13, 0.14]), "finetuned": _retrieval([0.3, 0.5, 0.6, 0.65]),
        "train_seconds": 30.0, "trainable_params": 999, "stages": [{"quantized": {}}]}))
    return root


def test_rows_ordering_and_base_rows(sweep):
    board = leaderboard_for([sweep])
    names = [r["model"] for r in board.detection]
    # sorted by mean IoU; one base row per distinct base evaluation, labelled by what differs
    assert names == ["r4-joint", "r2-vision-only", "r1-llm-only", "base (full precision)", "base (4-bit)"]
    assert [r["mean_iou"] for r in board.detection] == [0.70, 0.60, 0.40, 0.10, 0.08]
    r4 = board.detection[0]
    assert (r4["recipe"], r4["median_iou"], r4["iou_gt_0.5"], r4["ap"], r4["train_seconds"],
            r4["trainable_params"]) == ("r4-joint", 0.71, 0.35, pytest.approx(0.7 / 3), 12.5, 1234)
    assert board.detection[3]["train_seconds"] is None and board.detection[3]["recipe"] == ""


def test_retrieval_runs_get_their_own_table(sweep):
    board = leaderboard_for([sweep])
    assert [r["model"] for r in board.retrieval] == ["mrl", "base"]
    tuned = board.retrieval[0]
    assert [tuned[f"t2i_r1@{d}"] for d in (16, 32, 64, 128)] == [0.3, 0.5, 0.6, 0.65]
    assert (tuned["i2t_r1"], tuned["t2i_mrr10"]) == (0.325, 0.66)
    assert "mrl" not in [r["model"] for r in board.detection]


def test_missing_failed_and_partial_runs_are_reported(sweep, tmp_path):
    board = leaderboard_for([sweep, tmp_path / "never-started"])
    skipped = dict(board.skipped)
    assert set(skipped) == {str(sweep / "r3-two-stage"), str(sweep / "mdlm-cut"), str(tmp_path / "never-started")}
    assert "'failed'" in skipped[str(sweep / "r3-two-stage")] and "loss became nan" in skipped[str(sweep / "r3-two-stage")]
    assert "partial metrics.json" in skipped[str(sweep / "mdlm-cut")]
    assert "no such run directory" in skipped[str(tmp_path / "never-started")]
    text = to_markdown(board)
    assert "## Runs not in the tables" in text and "r3-two-stage" in text and "never-started" in text


def test_one_base_row_when_all_runs_share_the_base(tmp_path):
    _run(tmp_path, "a", _det(0.5))
    _run(tmp_path, "b", _det(0.2))
    board = leaderboard_for([tmp_path / "a", tmp_path / "b"])
    assert [r["model"] for r in board.detection] == ["a", "b", "base"]
    assert board.skipped == []


def test_same_numbers_from_another_precision_are_another_base_row(tmp_path):
    _run(tmp_path, "a", _det(0.5), base=_det(0.0))
    _run(tmp_path, "b", _det(0.4), base=_det(0.0), four_bit=True)
    names = [r["model"] for r in leaderboard_for([tmp_path]).detection]
    assert names == ["a", "b", "base (4-bit)", "base (full precision)"]


def test_indistinguishable_bases_are_labelled_by_their_runs(tmp_path):
    _run(tmp_path, "a", _det(0.5), base=_det(0.1))
    _run(tmp_path, "b", _det(0.4), base=_det(0.2))  # same traits, other numbers (e.g. another seed)
    names = [r["model"] for r in leaderboard_for([tmp_path]).detection]
    assert names == ["a", "b", "base (runs b)", "base (runs a)"]


def test_expand_keeps_explicit_runs_and_expands_sweeps(sweep):
    assert expand_run_dirs([sweep / "r2-vision-only"]) == [sweep / "r2-vision-only"]
    assert [p.name for p in expand_run_dirs([sweep])] == ["mdlm-cut", "mrl", "r1-llm-only", "r2-vision-only",
                                                         "r3-two-stage", "r4-joint"]


def test_cli_writes_markdown_csv_and_chart(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(sweep), "--out-dir", str(out), "--csv", str(tmp_path / "custom.csv")])
    assert code == 1  # some runs are not complete: listed, and the exit says so
    printed = capsys.readouterr().out
    assert printed.index("| 1 | r4-joint |") < printed.index("| 2 | r2-vision-only |")
    with open(tmp_path / "custom.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["model"] for r in rows][:2] == ["r4-joint", "r2-vision-only"]
    assert rows[0]["mean_iou"] == "0.7" and rows[0]["run"] == str(sweep / "r4-joint")
    assert (out / "leaderboard.md").read_text().startswith("## Detection")
    assert (out / "leaderboard_retrieval.csv").is_file()
    assert (out / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_exit_zero_when_complete_and_default_out_dir(tmp_path):
    _run(tmp_path / "s", "a", _det(0.5))
    assert main([str(tmp_path / "s" / "a")]) == 0
    assert (tmp_path / "s" / "leaderboard.md").is_file()  # the runs' common parent
    assert main([str(tmp_path / "s"), "--no-files", "--plot", "x.png"]) == 2
