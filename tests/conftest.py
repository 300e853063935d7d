import pytest

from vlm_recipes.families import get_family
from vlm_recipes.data.objects import MAX_PIXELS, MIN_PIXELS
from vlm_recipes.models.tiny import build_tiny, save_checkpoint


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
