"""Grounding beyond one box through the real CLI (issue 29): a short r4-joint run on synthetic-multi is
scored with set metrics, validated on F1, reported in the set table, and `predict` reproduces its
answers box for box (every box, drawn with --draw). Conversations whose answers are boxes are scored
with the same set metrics instead of exact match."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from PIL import Image

from vlm_recipes.cli import predict as predict_cli
from vlm_recipes.config import RecipeConfig, from_dict, load_recipe
from vlm_recipes.data.messages import ChatSample
from vlm_recipes.evaluation.answers import score_answers
from vlm_recipes.evaluation.leaderboard import leaderboard_for, to_markdown
from vlm_recipes.families import get_family
from vlm_recipes.models.loading import open_base
from vlm_recipes.objectives import build_objective
from vlm_recipes.objectives.grounding import answer_for

SET_KEYS = {"precision", "recall", "f1", "matched_iou", "count_error", "map", "map50", "per_category", "n"}


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    from vlm_recipes.cli.train import main as train

    run_dir = tmp_path_factory.mktemp("multi") / "run"
    assert train(["--recipe", "r4-joint", "--dataset", "synthetic-multi", "--max-steps", "4",
                  "--set", "data.num_train=20", "--set", "data.num_test=8", "--set", "train.per_device_train_batch_size=4",
                  "--set", "eval.max_new_tokens=96", "--no-wandb", "--output-dir", str(run_dir)]) == 0
    return run_dir


def test_short_multi_run_reports_set_metrics_and_validates_on_f1(multi_run):
    metrics = json.loads((multi_run / "metrics.json").read_text())
    predictions = json.loads((multi_run / "predictions.json").read_text())["finetuned"]
    for which in ("base", "finetuned"):
        assert SET_KEYS <= set(metrics[which]) and "mean_iou" not in metrics[which]
        assert all(0 <= metrics[which][k] <= 1 for k in ("precision", "recall", "f1", "map50"))
    # the metrics are those of the predictions written beside them: count error recomputed from the rows
    count_error = sum(abs(len(p["predicted"]) - len(p["target"])) for p in predictions) / len(predictions)
    assert metrics["finetuned"]["count_error"] == pytest.approx(count_error)
    assert metrics["finetuned"]["n_negative"] == sum(not p["target"] for p in predictions)
    history = json.loads((multi_run / "eval_history.json").read_text())  # validation picks by F1 (DATASET_METRIC)
    assert history and all(math.isfinite(entry["metrics"]["f1"]) for entry in history)
    results = (multi_run / "results.md").read_text()
    assert "F1@0.5" in results and "AP per category" in results
    board = to_markdown(leaderboard_for([multi_run]))
    assert "Grounding: sets of boxes" in board and "F1@0.5" in board


def test_predict_writes_and_draws_every_box_of_the_runs_answers(multi_run, tmp_path):
    recipe = from_dict(RecipeConfig, yaml.safe_load((multi_run / "config.yaml").read_text()), "")
    base = open_base(recipe.model)
    samples = build_objective(recipe, base.processor, base.family).load_data()["test"]
    reference = {r["image_id"]: r for r in json.loads((multi_run / "predictions.json").read_text())["finetuned"]}
    prompt = samples[0].prompt
    asked = [s for s in samples if s.prompt == prompt]  # predict asks one question of every image
    paths = []
    for s in asked:
        s.image.save(tmp_path / f"{s.image_id}.png")
        paths.append(tmp_path / f"{s.image_id}.png")
    out = tmp_path / "out"
    assert predict_cli.main(["--model", str(multi_run / "model"), "--images", *map(str, paths), "--prompt", prompt,
                             "--out", str(out), "--draw"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    drawn_boxes = 0
    for row, s in zip(rows, asked):
        want = reference[s.image_id]
        assert row["answer"] == want["text"]
        assert [b["box"] for b in row["boxes"]] == [box for _, box in want["predicted"]]
        drawn = Image.open(out / "drawn" / f"{s.image_id}.png").convert("RGB")
        for found in row["boxes"]:  # the left edge's midpoint of every box is drawn in red
            x1, y1, _, y2 = found["box"]
            assert drawn.getpixel((min(round(x1), drawn.width - 1), round((y1 + y2) / 2))) == (230, 30, 30)
            drawn_boxes += 1
    assert drawn_boxes > 0


def test_conversations_whose_answers_are_boxes_get_set_metrics():
    family = get_family("qwen3_vl")
    processor = open_base(load_recipe("r4-joint").model).processor
    image = Image.new("RGB", (200, 100))
    two = '[{"bbox_2d": [100, 100, 300, 500], "label": "t"}, {"bbox_2d": [500, 100, 700, 500], "label": "t"}]'
    samples = [ChatSample([image], [], two, "a"), ChatSample([image], [], "[]", "b")]
    result = score_answers(samples, [two, "[]"], [1.0, 1.0], family, processor)
    assert result.metrics["f1"] == pytest.approx(1.0) and result.metrics["negative_empty"] == 1.0
    assert "exact_match" not in result.metrics


def test_the_training_data_decides_how_every_split_is_scored():
    """A validation split of a few synthetic-multi rows may hold one box each by chance; it is still
    scored (and metric_for_best checked) by set metrics, because the training rows it was carved
    from are sets. The default nutrition-table data keeps single-box metrics."""
    kinds = {}
    for dataset in ("synthetic-multi", "synthetic"):
        recipe = load_recipe("r4-joint", [f"data.dataset={dataset}", "data.num_train=30", "data.num_test=4"])
        tiny = open_base(recipe.model)
        objective = build_objective(recipe, tiny.processor, tiny.family)
        data = objective.load_data()
        one_box = [s for s in data["train"] if s.single_box][:2]
        assert len(one_box) == 2
        texts = [answer_for(s, tiny.family, None, tiny.processor) for s in one_box]
        kinds[dataset] = set(score_answers(one_box, texts, [1.0, 1.0], tiny.family, tiny.processor,
                                           objective.set_data).metrics)
    assert "f1" in kinds["synthetic-multi"] and "mean_iou" not in kinds["synthetic-multi"]
    assert "mean_iou" in kinds["synthetic"] and "f1" not in kinds["synthetic"]
