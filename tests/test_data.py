import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image

from vlm_recipes.config import DataConfig
from vlm_recipes.data import load_splits
from vlm_recipes.data.detection import load_detection_splits
from vlm_recipes.data.messages import open_messages_source
from vlm_recipes.data.retrieval import synthetic_gallery
from vlm_recipes.data.sources import TEST_FALLBACKS, decode_image, resolve_split
from vlm_recipes.data.synthetic import make_nutrition_dataset, render_nutrition_example
from vlm_recipes.errors import InputError

FIXTURE = Path(__file__).parent / "fixtures" / "off_mini"
TRAIN_FILE = FIXTURE / "train-00000-of-00001.parquet"

# Worked out by hand from tests/fixtures/make_off_mini.py: bbox (y_min, x_min, y_max, x_max)
# normalised; the canonical box is (x_min*W, y_min*H, x_max*W, y_max*H).
OFF_MINI = {
    "train": [((300, 200), (60, 20, 270, 120)),    # [0.1, 0.2, 0.6, 0.9]
              ((200, 300), (20, 75, 100, 225)),    # [0.25, 0.1, 0.75, 0.5]
              ((240, 160), (120, 80, 240, 160)),   # 2nd object; the 1st is a "logo"
              ((160, 240), (40, 0, 120, 120))],    # [0.0, 0.25, 0.5, 0.75], greyscale
    "test": [((320, 180), (32, 36, 128, 144)),     # [0.2, 0.1, 0.8, 0.4], from "val"
             ((180, 320), (90, 32, 162, 96))],      # [0.1, 0.5, 0.3, 0.9]
}

# The schema of openfoodfacts/nutrition-table-detection, written out independently.
OFF_FEATURES = Features({
    "image_id": Value("string"),
    "image": ImageFeature(),
    "width": Value("int64"),
    "height": Value("int64"),
    "meta": {"barcode": Value("string"), "off_image_id": Value("string"), "image_url": Value("string")},
    "objects": {"bbox": List(List(Value("float32"))), "category_id": List(Value("int64")),
                "category_name": List(Value("string"))},
})


# --- synthetic images -----------------------------------------------------------------

def test_nutrition_example_is_deterministic_by_seed():
    a_img, a_box = render_nutrition_example(random.Random(5))
    b_img, b_box = render_nutrition_example(random.Random(5))
    c_img, c_box = render_nutrition_example(random.Random(6))
    assert a_box == b_box and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    assert (a_box, a_img.size) != (c_box, c_img.size)


def test_nutrition_box_is_inside_and_outlined_by_the_dark_border():
    for seed in range(40):
        img, (x1, y1, x2, y2) = render_nutrition_example(random.Random(seed))
        w, h = img.size
        assert 160 <= w <= 256 and 160 <= h <= 256 and img.mode == "RGB"
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert 0.19 * w <= x2 - x1 <= 0.61 * w and 0.19 * h <= y2 - y1 <= 0.61 * h
        a = np.asarray(img).astype(int)
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        edges = np.concatenate([a[y1, x1:x2], a[y2 - 1, x1:x2], a[y1:y2, x1], a[y1:y2, x2 - 1]])
        assert (edges == edges[0]).all(), f"seed {seed}: border is not one colour"
        assert edges[0].max() <= 60, f"seed {seed}: border is not dark"


def test_nutrition_dataset_has_the_openfoodfacts_schema():
    dd = make_nutrition_dataset(n_train=3, n_test=2, seed=0)
    assert set(dd) == {"train", "test"} and (dd["train"].num_rows, dd["test"].num_rows) == (3, 2)
    for ds in dd.values():
        assert ds.features == OFF_FEATURES
        assert list(ds.features) == list(OFF_FEATURES)
    row = dd["train"][0]
    assert row["image"].size == (row["width"], row["height"])
    assert row["objects"]["category_name"] == ["nutrition-table"]
    (y0, x0, y1, x1), = row["objects"]["bbox"]
    assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
    assert not set(dd["train"]["image_id"]) & set(dd["test"]["image_id"])


def test_nutrition_dataset_split_is_fixed_by_the_seed():
    def pixels(dd, split, i):
        return np.asarray(dd[split][i]["image"])
    a, b = make_nutrition_dataset(2, 1, seed=7), make_nutrition_dataset(3, 1, seed=7)
    assert np.array_equal(pixels(a, "train", 1), pixels(b, "train", 1))  # row i ignores the count
    assert np.array_equal(pixels(a, "test", 0), pixels(b, "test", 0))
    c = make_nutrition_dataset(2, 1, seed=8)
    assert not np.array_equal(pixels(a, "train", 0), pixels(c, "train", 0))
    with pytest.raises(InputError, match="cannot be negative"):
        make_nutrition_dataset(-1, 1)


# --- loader on the real schema ----------------------------------------------------------

def test_loader_reads_fixture_with_y_x_order_and_val_as_test():
    splits = load_detection_splits(str(FIXTURE))
    for split, expected in OFF_MINI.items():
        assert len(splits[split]) == len(expected)
        for sample, (size, box) in zip(splits[split], expected):
            assert sample.image.mode == "RGB"
            assert sample.image.size == size == (sample.width, sample.height)
            assert sample.box == pytest.approx(box, abs=1e-3)
    assert splits["train"][0].image_id.endswith("_1")
    # the drawn table really is where the box says: its top-left corner is the black border
    s = splits["train"][0]
    assert s.image.getpixel((int(s.box[0]), int(s.box[1]))) == (0, 0, 0)


def test_loader_subsets_by_seed_and_downscales_big_images():
    a = load_detection_splits(str(FIXTURE), max_train=2, max_test=1, seed=1)
    b = load_detection_splits(str(FIXTURE), max_train=2, max_test=1, seed=1)
    assert [s.image_id for s in a["train"]] == [s.image_id for s in b["train"]]
    assert len(a["train"]) == 2 and len(a["test"]) == 1
    small = load_detection_splits(str(FIXTURE), max_side=150)["train"][0]
    assert small.image.size == (150, 100) and small.box == pytest.approx((30, 10, 135, 60), abs=1e-3)


def test_loader_single_parquet_file_and_save_to_disk(tmp_path):
    one = load_detection_splits(str(TRAIN_FILE), test_split="train")
    assert one["test"][1].box == pytest.approx(OFF_MINI["train"][1][1], abs=1e-3)
    with pytest.raises(InputError, match=r"has no split 'test' \(it has: train\)"):
        load_detection_splits(str(TRAIN_FILE))
    make_nutrition_dataset(3, 2, seed=4).save_to_disk(str(tmp_path / "saved"))
    saved = load_detection_splits(str(tmp_path / "saved"), seed=4)
    synth = load_detection_splits("synthetic", num_train=3, num_test=2, seed=4)
    assert [s.box for s in saved["test"]] == [s.box for s in synth["test"]]
    assert np.array_equal(np.asarray(saved["train"][2].image), np.asarray(synth["train"][2].image))
    img, box = render_nutrition_example(random.Random("nutrition:4:train:2"))
    assert synth["train"][2].box == pytest.approx(box, abs=1e-3)


# --- bad inputs -----------------------------------------------------------------------

def _broken(tmp_path, row: int, **changes) -> str:
    """A copy of the fixture with `changes` applied to train row `row`."""
    table = pq.read_table(TRAIN_FILE)
    rows = table.to_pylist()
    for key, value in changes.items():
        if key == "bbox":
            rows[row]["objects"]["bbox"] = [value]
            rows[row]["objects"]["category_name"] = ["nutrition-table"]
            rows[row]["objects"]["category_id"] = [0]
        elif key == "image_bytes":
            rows[row]["image"]["bytes"] = value
        else:
            rows[row][key] = value
    out = tmp_path / "broken"
    out.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / "train-00000-of-00001.parquet")
    pq.write_table(pq.read_table(FIXTURE / "val-00000-of-00001.parquet"), out / "val-00000-of-00001.parquet")
    return str(out)


@pytest.mark.parametrize("changes, message", [
    (dict(image_bytes=b"not a png"), "unreadable image in row 1 of split 'train' of dataset"),
    (dict(bbox=[0.1, 0.1, 1.5, 0.5]), "row 1 of split 'train' of dataset .* lies outside its 200x300 image"),
    (dict(bbox=[0.5, 0.2, 0.5, 0.6]), "of row 1 of split 'train' .* zero or negative area"),
    (dict(bbox=[75, 20, 225, 100]), "looks like pixels"),
    (dict(bbox=[0.1, 0.2, 0.3]), "row 1 of split 'train' .* need 4 numbers"),
    (dict(width=999), "row 1 of split 'train' .* says its image is 999x300 but the image is 200x300"),
])
def test_bad_rows_name_the_row_and_the_fix(tmp_path, changes, message):
    with pytest.raises(InputError, match=message) as err:
        # annotations fail at load; the image itself (unreadable, other size) when its sample is used
        list(load_detection_splits(_broken(tmp_path, 1, **changes))["train"])
    assert "\n" not in str(err.value)
    assert any(fix in str(err.value) for fix in ("fix", "drop"))


def test_empty_or_missing_split(tmp_path):
    table = pq.read_table(TRAIN_FILE)
    pq.write_table(table, tmp_path / "train-0.parquet")
    pq.write_table(table.slice(0, 0), tmp_path / "val-0.parquet")
    with pytest.raises(InputError, match="has no rows in split 'val'"):
        load_detection_splits(str(tmp_path))
    with pytest.raises(InputError, match=r"has no split 'dev' \(it has: train, val\)"):
        load_detection_splits(str(tmp_path), train_split="dev")


def test_rows_without_boxes_are_skipped_but_not_all(tmp_path):
    table = pq.read_table(TRAIN_FILE)
    rows = table.to_pylist()
    rows[0]["objects"] = {"bbox": [], "category_id": [], "category_name": []}
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tmp_path / "train-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1], schema=table.schema), tmp_path / "test-0.parquet")
    with pytest.raises(InputError, match="no rows with a box in split 'test'"):
        load_detection_splits(str(tmp_path))
    assert len(load_detection_splits(str(tmp_path), test_split="train")["train"]) == 3


@pytest.mark.parametrize("source", ["/no/such/dir", "./missing.parquet", "data/a/b"])
def test_missing_path(source):
    with pytest.raises(InputError, match=f"dataset path {source} does not exist: pass 'synthetic'"):
        load_detection_splits(source)


def test_directory_without_data(tmp_path):
    with pytest.raises(InputError, match="neither a saved DatasetDict nor .parquet files"):
        load_detection_splits(str(tmp_path))


def test_hub_failure_says_to_pass_a_local_path(monkeypatch):
    """The hub answers but the load fails (offline, the fast check of D19 answers first: tests/test_resilience.py)."""
    import datasets

    from vlm_recipes.data import hub, sources

    monkeypatch.setattr(sources, "_hub_reachable", lambda endpoint: True)
    monkeypatch.setattr(hub, "_repo_bytes", lambda repo_id: None)  # its size is not asked of the network

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nsecond line")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError) as err:
        load_detection_splits("openfoodfacts/nutrition-table-detection")
    msg = str(err.value)
    assert "openfoodfacts/nutrition-table-detection could not be loaded" in msg
    assert "ConnectionError: Couldn't reach the hub" in msg and "local path" in msg and "\n" not in msg


def test_hub_dataset_too_large_to_download_is_refused_with_advice(monkeypatch):
    import datasets

    from vlm_recipes.data import hub, sources

    monkeypatch.setattr(sources, "_hub_reachable", lambda endpoint: True)
    monkeypatch.setattr(hub, "_repo_bytes", lambda repo_id: 27e9)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("downloaded anyway"))
    with pytest.raises(InputError) as err:
        load_detection_splits("someone/coco-2017")
    msg = str(err.value)
    assert "someone/coco-2017 is 27 GB to download" in msg and "hf download someone/coco-2017" in msg
    assert "\n" not in msg


# --- one source layer: slices, the test fallback, the image decoder, file formats --------------

def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _chat_row(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Find {i}."},
                         {"role": "assistant", "content": f"box {i}"}]}


@pytest.mark.parametrize("kind", ["detection", "retrieval", "chat"])
def test_slice_spec_limits_every_kind(kind):
    splits = load_splits(DataConfig(dataset="synthetic[train:8,test:2]"), kind, seed=3)
    assert (len(splits["train"]), len(splits["test"])) == (8, 2)


def test_slice_spec_equals_max_rows_and_overrides_them():
    sliced = load_splits(DataConfig(dataset=f"{FIXTURE}[train:2,test:1]", max_train=3), "detection", seed=1)
    plain = load_detection_splits(str(FIXTURE), max_train=2, max_test=1, seed=1)
    assert [s.image_id for s in sliced["train"] + sliced["test"]] == [s.image_id for s in plain["train"] + plain["test"]]
    chat = load_splits(DataConfig(dataset=str(FIXTURE)), "chat", seed=0)  # no messages column: detection rows
    assert [s.box for s in chat["test"]] == [s.box for s in load_detection_splits(str(FIXTURE))["test"]]
    with pytest.raises(InputError, match="bad slice"):
        load_splits(DataConfig(dataset="synthetic[dev:2]"), "retrieval", seed=0)


def test_the_one_test_fallback():
    assert resolve_split({"train": [], "val": [], "validation": []}, "test") == "val"
    assert resolve_split({"validation": [], "test": []}, "test") == "test"
    assert resolve_split({"validation": []}, "test") == "validation"
    assert resolve_split({"val": []}, "train") is None  # only "test" falls back
    assert TEST_FALLBACKS == ("test", "val", "validation")


def test_jsonl_directory_for_chat_and_retrieval(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [_chat_row(i) for i in range(3)])
    _jsonl(tmp_path / "validation.jsonl", [_chat_row(9)])
    chat = load_splits(DataConfig(dataset=f"{tmp_path}[train:2]"), "chat", seed=0)
    assert [s.answer for s in chat["train"]] == ["box 0", "box 1"] and chat["test"][0].image_id == "validation-0"
    assert chat["train"][0].messages == [{"role": "user", "content": [{"type": "text", "text": "Find 0."}]}]
    gallery = synthetic_gallery(1, 0)
    gallery[0].target.image.save(tmp_path / "a.png")
    rows = [{"query": "one", "target": "a.png"}, {"query": "two", "target": "some text"}]
    _jsonl(tmp_path / "pairs.jsonl", rows * 2)  # alone and not train.jsonl: the last num_test rows are the test
    splits = load_splits(DataConfig(dataset=str(tmp_path / "pairs.jsonl"), num_test=1), "retrieval", seed=0)
    assert [s.query for s in splits["train"]] == ["one", "two", "one"] and splits["test"][0].target.text == "some text"
    assert splits["train"][0].target.image.size == gallery[0].target.image.size


def test_json_list_file_and_bad_json_name_the_line(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([_chat_row(0), _chat_row(1)]))
    (tmp_path / "test.json").write_text(json.dumps([_chat_row(2)]))
    chat = load_splits(DataConfig(dataset=str(tmp_path / "train.json")), "chat", seed=0)  # brings test.json
    assert [s.answer for s in chat["train"] + chat["test"]] == ["box 0", "box 1", "box 2"]
    (tmp_path / "bad.jsonl").write_text('{"query": "q"}\n\n{"query": \n')
    with pytest.raises(InputError, match=r"bad.jsonl:3 is not valid JSON"):
        load_splits(DataConfig(dataset=str(tmp_path / "bad.jsonl")), "retrieval", seed=0)


def test_parquet_for_chat_and_retrieval(tmp_path):
    images = [{"bytes": _png((30 + i, 20)), "path": None} for i in range(3)]
    rows = [dict(_chat_row(i), image=images[i]) for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), tmp_path / "val-00000-of-00001.parquet")
    chat = load_splits(DataConfig(dataset=str(tmp_path)), "chat", seed=0)
    assert [s.images[0].size for s in chat["train"] + chat["test"]] == [(30, 20), (31, 20), (32, 20)]
    assert chat["train"][0].messages[0]["content"][0] == {"type": "image"}  # image part added
    assert open_messages_source(str(FIXTURE)) is None and open_messages_source("synthetic") is None
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    pq.write_table(pa.Table.from_pylist([{"query": "q", "target": images[0]}] * 2), pairs / "train-0.parquet")
    pq.write_table(pa.Table.from_pylist([{"query": "r", "target": "a text"}]), pairs / "test-0.parquet")
    splits = load_splits(DataConfig(dataset=str(pairs)), "retrieval", seed=0)
    first, second = splits["train"]
    assert first.target.image.size == (30, 20) and first.target.key != second.target.key  # one item per row
    assert splits["test"][0].target.text == "a text"


def _png(size, mode="RGB", orientation=None) -> bytes:
    buf = io.BytesIO()
    image = Image.new(mode, size)
    exif = image.getexif()
    if orientation:
        exif[0x0112] = orientation
    image.save(buf, "JPEG" if orientation else "PNG", exif=exif)
    return buf.getvalue()


def test_one_decoder_for_every_form(tmp_path):
    (tmp_path / "a.png").write_bytes(_png((7, 5), "L"))
    for value in (_png((7, 5)), {"bytes": _png((7, 5)), "path": None}, {"bytes": None, "path": str(tmp_path / "a.png")},
                  str(tmp_path / "a.png"), Image.new("P", (7, 5))):
        image = decode_image(value, "row 0")
        assert (image.mode, image.size) == ("RGB", (7, 5))
    rotated = _png((7, 5), orientation=6)  # EXIF: turn 90 degrees to see it upright
    assert decode_image({"bytes": rotated, "path": None}, "row 0").size == (5, 7)  # as datasets decodes it
    assert decode_image(rotated, "row 0").size == (7, 5)
    assert decode_image(rotated, "row 0", size=(5, 7)).size == (5, 7)  # the size columns decide
    assert decode_image(rotated, "row 0", size=(None, None)).size == (7, 5)


@pytest.mark.parametrize("value", [b"not an image", {"bytes": None, "path": None}, None, "/no/such.png"])
def test_decoder_error_is_one_line_naming_the_row(value):
    with pytest.raises(InputError, match=r"^unreadable image in row 4 of split 'x': .+; fix or drop the row$") as err:
        decode_image(value, "row 4 of split 'x'")
    assert "\n" not in str(err.value)


# --- grounding beyond one box (issue 29) --------------------------------------------------------

SYNTHETIC_DIGEST = "dd91ecff16897451e44dd1b197895ab61432c1d41e095a43f146f326789d0ebe"
"""sha256 of make_nutrition_dataset(3, 2, seed=0)'s PNG bytes and other columns, computed with main's
code before issue 29: the in-domain rows must not change by a byte."""


def test_in_domain_synthetic_rows_are_byte_identical():
    import hashlib

    dd = make_nutrition_dataset(n_train=3, n_test=2, seed=0)
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for row in dd[split].cast_column("image", ImageFeature(decode=False)):
            digest.update(row["image"]["bytes"])
            digest.update(json.dumps({k: v for k, v in row.items() if k != "image"}, sort_keys=True).encode())
    assert digest.hexdigest() == SYNTHETIC_DIGEST


def _with_objects(tmp_path, objects: list[dict]) -> str:
    """The fixture's first train rows with their `objects` replaced, one per entry (the val split as is)."""
    table = pq.read_table(TRAIN_FILE)
    rows = table.to_pylist()[:len(objects)]
    for row, obj in zip(rows, objects):
        row["objects"] = obj
    out = tmp_path / "objects"
    out.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / "train-00000-of-00001.parquet")
    pq.write_table(pq.read_table(FIXTURE / "val-00000-of-00001.parquet"), out / "val-00000-of-00001.parquet")
    return str(out)


TWO_TABLES = {"bbox": [[0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.4, 0.4], [0.1, 0.6, 0.2, 0.9]],
              "category_id": [0, 0, 1], "category_name": ["nutrition-table", "nutrition-table", "barcode"]}
ONLY_A_BARCODE = {"bbox": [[0.1, 0.6, 0.2, 0.9]], "category_id": [1], "category_name": ["barcode"]}
NOTHING = {"bbox": [], "category_id": [], "category_name": []}


def test_openfoodfacts_rows_keep_every_table_and_negatives_only_when_asked(tmp_path):
    source = _with_objects(tmp_path, [TWO_TABLES, ONLY_A_BARCODE, NOTHING])
    plain = load_detection_splits(source)["train"]
    assert len(plain) == 1 and len(plain[0].objects) == 2  # both tables, not the barcode
    assert {label for label, _ in plain[0].objects} == {DataConfig.label} and not plain[0].single_box
    kept = load_detection_splits(source, keep_negatives=True, prompt="Detect every nutrition table.")["train"]
    assert [len(s.objects) for s in kept] == [2, 0, 0]
    assert {s.prompt for s in kept} == {"Detect every nutrition table."}


def test_synthetic_multi_has_several_objects_categories_and_negatives():
    train = load_detection_splits("synthetic-multi", num_train=40, num_test=2, seed=0)["train"]
    counts = [len(s.objects) for s in train]
    assert 0 in counts and max(counts) >= 3
    assert {s.label for s in train} == {"nutrition table", "barcode", "star"}
    for s in train:
        assert s.label in s.prompt and s.task == "detect"
        assert all(label == s.label for label, _ in s.objects)
        assert all(0 <= x1 < x2 <= s.width and 0 <= y1 < y2 <= s.height for x1, y1, x2, y2 in s.boxes)


def test_synthetic_refer_singles_out_one_of_several():
    train = load_detection_splits("synthetic-refer", num_train=20, num_test=2, seed=0)["train"]
    assert all(s.task == "refer" and len(s.objects) == 1 for s in train)
    left = [s for s in train if "leftmost" in s.prompt]
    assert left and all(s.label == "nutrition table" for s in left)
    assert any(s.label == "star" for s in train)
    with pytest.raises(InputError, match="num_shifted"):
        load_detection_splits("synthetic-refer", num_train=2, num_test=2, num_shifted=2)
