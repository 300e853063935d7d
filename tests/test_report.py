"""report.html, compare --html and predictions with boxes in TensorBoard / W&B (issue 34).

Error analysis (failure kinds from lists of true and predicted objects) is tested on hand-made
rows in milliseconds. Two short runs through the real CLI, each with 100 test images (a 2-step
r4-joint logging to TensorBoard and to W&B offline, and a 1-step mrl), give the run directories
that the timing, TensorBoard, W&B and browser tests read.
"""

import io
import json
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from headless_chromium import Browser, chromium_path
from vlm_recipes.cli.compare import main as compare
from vlm_recipes.cli.main import main as cli
from vlm_recipes.cli.train import main as train
from vlm_recipes.evaluation import gallery, matching
from vlm_recipes.evaluation.detection import box_iou
from vlm_recipes.evaluation.report import PAGE_SIZE, write_report

BOX_RED = (255, 23, 68)  # the fine-tuned / run B boxes (report.STYLES)
TEST_IMAGES = 100


def _objects(*pairs):
    return [gallery.Object(label, list(box)) for label, box in pairs]


# --- error analysis, by hand ----------------------------------------------------------------------

def test_failure_kinds_of_single_box_rows():
    truth = _objects(("nutrition table", (10, 10, 50, 50)))
    assert gallery.analyse(truth, []).kinds == ["no_parse"]
    right = gallery.analyse(truth, _objects(("Nutrition Table", (10, 10, 50, 50))))
    assert right.correct and right.score == 1.0
    assert gallery.analyse(truth, _objects(("barcode", (10, 10, 50, 50)))).kinds == ["wrong_label"]
    assert gallery.analyse(truth, _objects(("barcode", (10, 10, 50, 50)))).score == 0.0
    off = gallery.analyse(truth, _objects(("nutrition table", (30, 30, 70, 70))))
    assert off.kinds == ["iou_below_0.5"] and off.score == pytest.approx(400 / 2800)
    assert gallery.analyse(truth, _objects((None, (10, 10, 50, 50)))).correct  # label unknown: not judged


def test_failure_kinds_that_need_several_objects_or_negatives():
    a, b = ("table", (0, 0, 10, 10)), ("table", (20, 20, 40, 40))
    assert gallery.analyse([], _objects(a)).kinds == ["false_positive_on_negative"]
    assert gallery.analyse([], []).correct and gallery.analyse([], []).score == 1.0
    missed = gallery.analyse(_objects(a, b), _objects(b))
    assert missed.kinds == ["missed_object"] and missed.ious == [0.0, 1.0] and missed.score == 0.5
    extra = gallery.analyse(_objects(a), _objects(b, a))  # matched to the right one, not by position
    assert extra.kinds == ["extra_box"] and extra.ious == [1.0]


def test_rows_of_every_saved_shape_read_as_object_lists():
    single = {"image_id": "1", "target": [0, 0, 10, 10], "predicted": None, "predicted_label": None}
    assert gallery.true_objects(single, "table")[0].label == "table" and gallery.predicted_objects(single) == []
    multi = {"image_id": "2", "objects": [{"label": "a", "box": [0, 0, 1, 1]}, ["b", [1, 1, 2, 2]]],
             "predicted_objects": [{"label": "a", "bbox": [0, 0, 1, 1]}]}
    assert [o.label for o in gallery.true_objects(multi, None)] == ["a", "b"]
    assert gallery.predicted_objects(multi)[0].box == [0.0, 0.0, 1.0, 1.0]
    assert gallery.true_objects({"image_id": "3", "objects": []}, "x") == []


def test_pairwise_iou_equals_box_iou():
    rng = np.random.default_rng(0)
    a = np.sort(rng.uniform(0, 100, (6, 2, 2)), axis=1).transpose(0, 2, 1).reshape(6, 4)[:, [0, 2, 1, 3]]
    b = np.concatenate([a[:2], [[5, 5, 5, 9]]])  # a degenerate box scores 0
    expected = [[box_iou(list(x), list(y)) for y in b] for x in a]
    assert np.allclose(matching.pairwise_iou(a, b), expected)


def test_different_test_sets_are_named():
    rows = [{"image_id": "a", "target": [0, 0, 1, 1]}, {"image_id": "b", "target": [0, 0, 2, 2]}]
    assert gallery.different_test_sets(rows, list(reversed(rows))) is None
    assert "2 test items against 1" in gallery.different_test_sets(rows, rows[:1])
    moved = [rows[0], {"image_id": "b", "target": [0, 0, 3, 3]}]
    assert "other targets" in gallery.different_test_sets(rows, moved)


def test_report_of_text_answers(tmp_path):
    """Diffusion on conversation data scores answers by exact match: the report lists them too."""
    rows = [{"image_id": "s0", "target": "a cat", "text": "a cat"}, {"image_id": "s1", "target": "a dog", "text": "a"}]
    (tmp_path / "metrics.json").write_text(json.dumps({"recipe": "diffusion", "base": {"exact_match": 0.0},
                                                       "finetuned": {"exact_match": 0.5}}))
    (tmp_path / "predictions.json").write_text(json.dumps({"base": rows[1:] * 2, "finetuned": rows}))
    page = write_report(tmp_path).read_text()
    data = json.loads(page.split('id="report-data">')[1].split("</script>")[0])
    assert data["kind"] == "text" and [r["m"]["finetuned"]["kinds"] for r in data["rows"]] == [[], ["wrong_answer"]]
    assert [r["tags"][-1] for r in data["rows"]] == ["b_wins", "both_wrong"]


def test_per_category_metrics_become_tables():
    from vlm_recipes.evaluation.report import category_tables

    metrics = {"base": {"mean_iou": 0.3}, "finetuned": {"mean_iou": 0.6, "per_category": {
        "table": {"f1@0.5": 0.75, "n": 4}, "barcode": {"f1@0.5": 0.5, "n": 2}}}}
    html = category_tables(metrics)
    assert "<h3>per_category, finetuned</h3>" in html and "<td>barcode</td><td>0.500</td><td>2</td>" in html
    assert "base</h3>" not in html


# --- real runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    """r4-joint, 2 steps validated after each, 100 test images, TensorBoard and W&B (offline)."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as env:
        for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true"}.items():
            env.setenv(key, value)
        assert train(["--recipe", "r4-joint", "--max-steps", "2", "--set", "data.num_train=16",
                      "--set", f"data.num_test={TEST_IMAGES}", "--set", "train.eval_steps=1",
                      "--set", "train.per_device_train_batch_size=4", "--output-dir", str(root / "r4")]) == 0
        import wandb

        wandb.finish()  # the CLI's process would end here; in the test session the run stays open
    return root / "r4"


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report-mrl") / "mrl"
    assert train(["--recipe", "mrl", "--max-steps", "1", "--set", "data.num_train=32", "--set",
                  f"data.num_test={TEST_IMAGES}", "--no-wandb", "--output-dir", str(run_dir)]) == 0
    return run_dir


@pytest.fixture(scope="module")
def base_as_run(detection_run, tmp_path_factory):
    """A second run on the same test images for compare --html: the detection run's directory with
    its base model's (real) answers as the fine-tuned ones, i.e. the run of zero training steps."""
    other = tmp_path_factory.mktemp("report-pair") / "r4-zero-steps"
    shutil.copytree(detection_run, other, ignore=shutil.ignore_patterns("model", "trainer"))
    predictions = json.loads((other / "predictions.json").read_text())
    (other / "predictions.json").write_text(json.dumps({**predictions, "finetuned": predictions["base"]}))
    return other


@pytest.mark.parametrize("which", ["detection_run", "retrieval_run"])
def test_report_of_100_test_images_is_written_in_under_5_seconds(which, request):
    run_dir = request.getfixturevalue(which)
    assert (run_dir / "report.html").is_file()  # written by the run itself
    start = time.perf_counter()
    write_report(run_dir)
    seconds = time.perf_counter() - start
    page = (run_dir / "report.html").read_text()
    data = json.loads(page.split('id="report-data">')[1].split("</script>")[0])
    print(f"{which}: report.html of {len(data['rows'])} test items in {seconds:.2f} s, {len(page) / 1e6:.1f} MB")
    assert len(data["rows"]) == TEST_IMAGES and data["page_size"] == PAGE_SIZE
    assert len(data["images"]) == TEST_IMAGES
    assert all(image["src"].startswith("data:image/") for image in data["images"].values())
    assert "http://" not in page and "https://" not in page  # nothing loaded from the network
    assert seconds < 5


def test_report_subcommand_and_refusals(detection_run, tmp_path, capsys):
    (detection_run / "report.html").unlink()
    assert cli(["report", str(detection_run)]) == 0 and (detection_run / "report.html").is_file()
    (tmp_path / "status.json").write_text('{"state": "running"}')
    assert cli(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run state: running" in err and "Traceback" not in err


def _tensorboard_images(folder) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={IMAGES: 0}).Reload()
    return {tag: [event.step for event in events.Images(tag)] for tag in events.Tags()["images"]}


def test_tensorboard_holds_the_sample_with_boxes_at_every_evaluation(detection_run):
    during = _tensorboard_images(detection_run / "trainer" / "joint-lora" / "predictions")
    history = json.loads((detection_run / "eval_history.json").read_text())
    assert len(during) == 8 and all(steps == [row["step"] for row in history] for steps in during.values())
    final = _tensorboard_images(detection_run / "trainer" / "evaluation")
    assert {tag.split("/")[1] for tag in final} == {"base", "finetuned"} and len(final) == 16
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    events = EventAccumulator(str(detection_run / "trainer" / "evaluation"), size_guidance={IMAGES: 0}).Reload()
    image = events.Images(sorted(final)[0])[0]
    pixels = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    assert (np.abs(pixels.astype(int) - (255, 23, 68)).sum(-1) < 30).sum() > 20  # a predicted box drawn


def test_wandb_offline_run_holds_the_logged_images_with_boxes(detection_run):
    runs = list((detection_run.parent / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media"
    images, boxes = list((media / "images").rglob("*.png")), list((media / "metadata" / "boxes2D").rglob("*.json"))
    # 8 sample images at each of 2 validations, then base and fine-tuned at the end; each with 2 box groups
    assert len(images) >= 8 * 4 and len(boxes) >= 2 * 8 * 4


# --- the browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:  # make test installs it (Makefile); a bare pytest run may lack it
        if os.environ.get("VLM_RECIPES_REQUIRE_BROWSER"):  # make test: a missing browser is a failure, not a skip
            pytest.fail("chromium is not installed and make browser could not install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (make test installs it with apt-get)")
    opened = Browser()
    yield opened
    opened.close()


def _box_pixels(png, colour=BOX_RED) -> int:
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(pixels - colour).sum(-1) < 30).sum())


def _shown_ids(browser) -> list[str]:
    return browser.evaluate("[...document.querySelectorAll('#gallery .card')].map(c => c.dataset.id)")


def _select(browser, element: str, value: str) -> None:
    browser.evaluate(f"(() => {{ const s = document.getElementById('{element}'); s.value = '{value}'; "
                     "s.dispatchEvent(new Event('change')); })()")


def _assert_page_is_whole(browser) -> None:
    assert browser.errors() == []
    images = browser.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert images and all(images), "broken images"


def test_report_in_a_browser(detection_run, browser, tmp_path):
    browser.open(detection_run / "report.html")
    _assert_page_is_whole(browser)
    worst = _shown_ids(browser)
    assert len(worst) == PAGE_SIZE
    scores = browser.evaluate("orderedRows().map(r => r.m.finetuned.score)")
    assert scores == sorted(scores)  # worst first by default
    browser.evaluate("document.getElementById('gallery-title').scrollIntoView()")
    shot = browser.screenshot(tmp_path / "report.png")
    shutil.copy(shot, detection_run.parent / "report-screenshot.png")  # README's picture comes from here
    with_boxes = _box_pixels(shot)
    browser.evaluate("document.getElementById('boxes').click()")
    without = _box_pixels(browser.screenshot(tmp_path / "no-boxes.png"))
    # the boxes add pixels of their colour (the thumbnails hold some red of their own)
    assert with_boxes > 2 * without and with_boxes - without > 2000, (with_boxes, without)
    browser.evaluate("document.getElementById('boxes').click()")

    _select(browser, "sort", "index")
    in_order = _shown_ids(browser)
    assert in_order != worst and in_order[:3] == ["synthetic-0-test-00000", "synthetic-0-test-00001",
                                                  "synthetic-0-test-00002"]
    _select(browser, "sort", "worst")
    _select(browser, "filter", "finetuned:iou_below_0.5")
    filtered = browser.evaluate("orderedRows().length")
    data = json.loads((detection_run / "report.html").read_text().split('id="report-data">')[1].split("</script>")[0])
    expected = sum("iou_below_0.5" in row["m"]["finetuned"]["kinds"] for row in data["rows"])
    assert filtered == expected and 0 < expected < TEST_IMAGES
    assert all("iou below 0.5" in text for text in browser.evaluate(
        "[...document.querySelectorAll('#gallery .card')].map(c => c.textContent)"))
    _assert_page_is_whole(browser)


def test_retrieval_report_in_a_browser(retrieval_run, browser, tmp_path):
    browser.open(retrieval_run / "report.html")
    _assert_page_is_whole(browser)
    assert len(_shown_ids(browser)) == PAGE_SIZE
    positives = browser.evaluate("document.querySelectorAll('#gallery .hit.positive').length")
    assert positives >= PAGE_SIZE  # each query's positive shown (and marked where it was retrieved)
    browser.screenshot(tmp_path / "mrl-report.png")


def test_compare_html_in_a_browser(detection_run, base_as_run, retrieval_run, tmp_path, browser, capsys):
    out = tmp_path / "board"
    assert compare([str(detection_run), str(base_as_run), "--out-dir", str(out), "--html"]) == 0
    browser.open(out / "compare.html")
    _assert_page_is_whole(browser)
    text = browser.evaluate("document.body.textContent")
    assert "A: r4 against B: r4-zero-steps, image by image" in text and "mean IoU" in text
    counts = {o["value"]: o["count"] for o in browser.evaluate("DATA.filters[DATA.filters.length - 1].options")}
    assert sum(counts.values()) == TEST_IMAGES and counts["a_wins"] + counts["b_wins"] > 0
    _select(browser, "filter", "a_wins")
    assert len(_shown_ids(browser)) == min(counts["a_wins"], PAGE_SIZE)
    browser.evaluate("document.getElementById('gallery-title').scrollIntoView()")
    shot = browser.screenshot(tmp_path / "compare.png")
    assert _box_pixels(shot) > 2000 and _box_pixels(shot, (41, 98, 255)) > 1000  # B red, A blue
    # a pair of another task is refused, naming why, before any file is written; without --pair the
    # first two runs that share a test set are compared
    refused = tmp_path / "refused"
    assert compare([str(retrieval_run), str(detection_run), "--out-dir", str(refused), "--html",
                    "--pair", str(detection_run), str(retrieval_run)]) == 2
    assert not refused.exists() and "same task" in capsys.readouterr().err
    assert compare([str(retrieval_run), str(detection_run), str(base_as_run), "--out-dir", str(refused), "--html"]) == 0
    assert "A: r4 against B: r4-zero-steps" in (refused / "compare.html").read_text()


def test_compare_html_refuses_runs_on_different_test_sets(detection_run, short_r4_run, tmp_path, capsys):
    assert compare([str(detection_run), str(short_r4_run), "--out-dir", str(tmp_path), "--html",
                    "--pair", str(detection_run), str(short_r4_run)]) == 2
    err = capsys.readouterr().err
    assert "not tested on the same test set (100 test items against 6)" in err and err.count("\n") == 1
    assert not (tmp_path / "compare.html").exists()
