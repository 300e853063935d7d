"""data/cache.py: a generated dataset is built once per (generator source, arguments), then read back."""

from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from vlm_recipes.data import cache
from vlm_recipes.data.detection import load_detection_splits


def builder(calls: list, value: int):
    def build():
        calls.append(value)
        return DatasetDict({"train": Dataset.from_list([{"x": value}, {"x": value + 1}])})
    return build


@pytest.fixture
def source(tmp_path) -> Path:
    path = tmp_path / "generator.py"
    path.write_text("VERSION = 1\n")
    return path


def test_second_call_reads_the_cache(tmp_path, source, monkeypatch):
    monkeypatch.setenv("VLM_RECIPES_CACHE", str(tmp_path / "c"))
    calls = []
    first = cache.cached_dataset("toy", source, {"n": 2}, builder(calls, 1))
    again = cache.cached_dataset("toy", source, {"n": 2}, builder(calls, 99))
    assert calls == [1] and again["train"]["x"] == first["train"]["x"] == [1, 2]


def test_new_arguments_or_generator_code_build_again(tmp_path, source, monkeypatch):
    monkeypatch.setenv("VLM_RECIPES_CACHE", str(tmp_path / "c"))
    calls = []
    cache.cached_dataset("toy", source, {"n": 2}, builder(calls, 1))
    assert cache.cached_dataset("toy", source, {"n": 3}, builder(calls, 2))["train"]["x"] == [2, 3]
    source.write_text("VERSION = 2\n")
    assert cache.cached_dataset("toy", source, {"n": 2}, builder(calls, 3))["train"]["x"] == [3, 4]
    assert calls == [1, 2, 3]


def test_off_never_writes(tmp_path, source, monkeypatch):
    monkeypatch.setenv("VLM_RECIPES_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    calls = []
    for _ in range(2):
        cache.cached_dataset("toy", source, {"n": 2}, builder(calls, 1))
    assert calls == [1, 1] and not (tmp_path / "xdg").exists()


def test_a_damaged_copy_is_rebuilt(tmp_path, source, monkeypatch):
    monkeypatch.setenv("VLM_RECIPES_CACHE", str(tmp_path / "c"))
    calls = []
    cache.cached_dataset("toy", source, {"n": 2}, builder(calls, 1))
    (saved,) = (tmp_path / "c").iterdir()
    for arrow in saved.rglob("*.arrow"):
        arrow.write_bytes(b"not arrow")
    assert cache.cached_dataset("toy", source, {"n": 2}, builder(calls, 5))["train"]["x"] == [5, 6]
    assert calls == [1, 5]


def test_an_unwritable_cache_costs_speed_not_the_run(tmp_path, source, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("VLM_RECIPES_CACHE", str(blocker / "below-a-file"))
    assert cache.cached_dataset("toy", source, {"n": 2}, builder([], 1))["train"]["x"] == [1, 2]


def test_cached_synthetic_rows_equal_generated_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_RECIPES_CACHE", str(tmp_path / "c"))
    cold = load_detection_splits("synthetic", num_train=3, num_test=2, seed=5)
    warm = load_detection_splits("synthetic", num_train=3, num_test=2, seed=5)
    monkeypatch.setenv("VLM_RECIPES_CACHE", "off")
    fresh = load_detection_splits("synthetic", num_train=3, num_test=2, seed=5)
    for split in ("train", "test"):
        for a, b, c in zip(cold[split], warm[split], fresh[split]):
            assert a.box == b.box == c.box and a.image_id == b.image_id == c.image_id
            assert a.image.tobytes() == b.image.tobytes() == c.image.tobytes()
