import os

import pytest

from vlm_recipes.data.objects import MAX_PIXELS, MIN_PIXELS
from vlm_recipes.families import get_family
from vlm_recipes.models.tiny import build_tiny, save_checkpoint


@pytest.fixture(scope="session", autouse=True)
def dataset_cache(tmp_path_factory):
    """Generated datasets are cached in a directory of this session (CLI subprocesses and notebook
    kernels inherit it), never in the user's ~/.cache."""
    path = tmp_path_factory.mktemp("dataset-cache")
    previous = os.environ.get("VLM_RECIPES_CACHE")
    os.environ["VLM_RECIPES_CACHE"] = str(path)
    yield path
    if previous is None:
        del os.environ["VLM_RECIPES_CACHE"]
    else:
        os.environ["VLM_RECIPES_CACHE"] = previous


@pytest.fixture(scope="session")
def random_tiny_dirs(tmp_path_factory):
    """Randomly initialised tiny checkpoints of each family (for structure tests, not learning)."""
    dirs = {}
    for name in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
        model, processor = build_tiny(get_family(name), MIN_PIXELS, MAX_PIXELS, seed=0)
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        save_checkpoint(model, processor, path)
        dirs[name] = path
    return dirs


@pytest.fixture(scope="session")
def short_r4_run(tmp_path_factory):
    """One short r4-joint run through the real CLI, finished once and read by every test that needs a
    run directory (test_use_model: predict/evaluate/export reproduce it; test_validation: its
    validation history, best step and curve), instead of each file training its own.

    6 steps of batch 4 on 16 generated rows, one of which is carved for validation (a tenth) and
    validated every 3 steps (steps 3 and 6); 6 test rows. Validation runs in eval mode with greedy
    generation and draws no random numbers, so the weights and predictions are those of the same run
    validated only at its end."""
    from vlm_recipes.cli.train import main as train

    run_dir = tmp_path_factory.mktemp("use") / "run"
    assert train(["--recipe", "r4-joint", "--max-steps", "6", "--set", "data.num_train=16", "--set", "data.num_test=6",
                  "--set", "train.per_device_train_batch_size=4", "--set", "train.eval_steps=3", "--no-wandb",
                  "--output-dir", str(run_dir)]) == 0
    return run_dir


class ModelLoaded(BaseException):
    """Raised by `no_model_loads` when weights start loading: a BaseException, so that no handler
    of the package takes it for bad input."""


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every load of weights (transformers' from_pretrained of any model class) raises ModelLoaded:
    a check that must fire before any model loads is proven to, and a missed one costs no minutes."""
    from transformers import PreTrainedModel

    def refuse(cls, *args, **kwargs):
        raise ModelLoaded(f"{cls.__name__}.from_pretrained({args[0] if args else ''})")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    return ModelLoaded
