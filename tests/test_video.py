"""Video retrieval (mrl with video): frame sampling, the three families' video paths, video rows in
a batch beside image rows, GradCache with video rows, the order test, bad videos, synthetic-video.

Fast tests use randomly initialised tiny models and clips written here; the end-to-end test (slow)
trains the shipped tiny base on synthetic-video through the real CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from grad_checks import assert_same_gradients, cached_loss, grads
from vlm_recipes.config import MRLOptions, VideoConfig, load_recipe
from vlm_recipes.data.motion import ALL_MOTIONS, SyntheticMotion, motion_gallery
from vlm_recipes.data.retrieval import RetrievalSample, Target, load_retrieval_splits, synthetic_gallery
from vlm_recipes.data.video import Clip, read_video, sample_indices, write_video
from vlm_recipes.errors import InputError
from vlm_recipes.evaluation.retrieval import order_by_dim
from vlm_recipes.models.embedding import EncodeSettings, embed, tokenize
from vlm_recipes.objectives.grad_cache import split_rows
from vlm_recipes.objectives.mrl import MRLCollator, group_inputs, matryoshka_info_nce

FOUR = VideoConfig(num_frames=4, max_frames=8)


def _frames(count: int, size=(96, 96), seed: int = 0) -> list[Image.Image]:
    """Frames whose content says which frame they are (a bar at x = 4 * index on noise)."""
    rng = np.random.default_rng(seed)
    frames = []
    for index in range(count):
        pixels = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
        pixels[:, 4 * index:4 * index + 4] = 255
        frames.append(Image.fromarray(pixels))
    return frames


def _bar_position(frame: Image.Image) -> int:
    """Which frame of `_frames` this is, read back from its bright bar (survives lossy coding)."""
    columns = np.asarray(frame, np.float32).mean(axis=(0, 2))
    return int(np.argmax(columns.reshape(-1, 4).mean(1)))


# --- frame sampling --------------------------------------------------------------------------

def test_sample_indices_follow_the_config():
    assert sample_indices(16, 8.0, VideoConfig(num_frames=4)) == [0, 5, 10, 15]
    assert sample_indices(16, 8.0, VideoConfig(num_frames=8, max_frames=8)) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert sample_indices(16, 8.0, VideoConfig(fps=2.0)) == [0, 5, 10, 15]  # 2 s at 2 fps
    assert sample_indices(300, 30.0, VideoConfig(fps=1.0)) == [0, 33, 66, 100, 133, 166, 199, 233, 266, 299]
    assert len(sample_indices(3000, 30.0, VideoConfig(fps=2.0, max_frames=32))) == 32  # 100 s capped
    assert sample_indices(3, 8.0, VideoConfig(num_frames=8, max_frames=8)) == [0, 1, 2]  # shorter than asked
    assert sample_indices(1, 8.0, VideoConfig()) == [0]
    with pytest.raises(InputError, match="data.video.num_frames=9 > data.video.max_frames=8"):
        load_recipe("mrl-video", ["data.video.num_frames=9"])
    with pytest.raises(InputError, match="data.video.min_pixels"):
        load_recipe("mrl-video", ["data.video.min_pixels=20000"])
    with pytest.raises(InputError, match="data.video.fps"):
        load_recipe("mrl-video", ["data.video.fps=0"])


@pytest.mark.parametrize("suffix, codec", [(".mp4", "mpeg4"), (".webm", "libvpx")])
def test_files_and_frame_directories_are_sampled_as_configured(tmp_path, suffix, codec):
    frames = _frames(16)
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=8, codec=codec)
    clip = read_video(path, FOUR, "test")
    assert (clip.total, clip.fps, clip.indices) == (16, 8.0, (0, 5, 10, 15))
    assert [_bar_position(f) for f in clip.frames] == [0, 5, 10, 15]  # really those frames, in order
    (tmp_path / "frames").mkdir()
    for index, frame in enumerate(frames):
        frame.save(tmp_path / "frames" / f"{index:03d}.png")
    from_dir = read_video(tmp_path / "frames", VideoConfig(fps=1.0, default_fps=4.0), "test")
    assert from_dir.indices == (0, 5, 10, 15) and from_dir.fps == 4.0  # 16 frames at 4 fps: 4 s at 1 fps
    assert [_bar_position(f) for f in from_dir.frames] == [0, 5, 10, 15]


def test_training_evaluation_and_encode_sample_the_same_frames(tmp_path, random_tiny_dirs):
    """A video row read for training (a JSONL source), for the run's evaluation (same loader) and by
    `vlm-recipes encode` (the run's config.yaml) gives the same frames and the same processor tensors."""
    from transformers import AutoProcessor

    from vlm_recipes.cli.encode import settings_for

    write_video(tmp_path / "a.mp4", _frames(16), fps=8)
    write_video(tmp_path / "b.mp4", _frames(16, seed=1), fps=8)
    rows = [{"query": "first", "target": "a.mp4"}, {"query": "second", "target": "b.mp4"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps(rows[0]))
    video = VideoConfig(num_frames=6, max_frames=6, max_pixels=64 * 64)
    splits = load_retrieval_splits(str(tmp_path / "train.jsonl"), 10, 1, 0, 0, video=video)
    trained, evaluated = splits["train"][0].target.video, splits["test"][0].target.video
    # encode reads the sampling back from the run directory's config.yaml
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    recipe = load_recipe("mrl-video", ["data.video.num_frames=6", "data.video.max_frames=6",
                                       "data.video.max_pixels=4096"])
    (run / "config.yaml").write_text(yaml.safe_dump(__import__("dataclasses").asdict(recipe), sort_keys=False))
    settings = settings_for(run / "model", None, 4)
    assert settings.video == video
    encoded = read_video(tmp_path / "a.mp4", settings.video, "--videos")
    assert trained.indices == evaluated.indices == encoded.indices == (0, 3, 6, 9, 12, 15)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))
               for a, b, c in zip(trained.frames, evaluated.frames, encoded.frames))
    processor = AutoProcessor.from_pretrained(random_tiny_dirs["qwen3_vl"])
    batches = [tokenize(processor, [None], [clip], "Video.", 512, video=video) for clip in (trained, encoded)]
    assert batches[0]["video_grid_thw"].tolist() == [[3, 4, 4]]  # 6 frames -> 3 temporal patches of 64x64 px
    assert all(torch.equal(batches[0][k], batches[1][k]) for k in batches[0])


def test_a_datasets_video_column_is_read_by_path_or_bytes(tmp_path):
    from datasets import Dataset, DatasetDict, Features, Value, Video

    path = write_video(tmp_path / "a.mp4", _frames(16), fps=8)
    rows = {"query": ["by path", "by bytes"], "target": [str(path), {"bytes": path.read_bytes(), "path": None}]}
    train = Dataset.from_dict(rows, features=Features({"query": Value("string"), "target": Video()}))
    DatasetDict({"train": train, "test": train}).save_to_disk(str(tmp_path / "saved"))
    splits = load_retrieval_splits(str(tmp_path / "saved"), 10, 1, 0, 0, video=FOUR)
    by_path, by_bytes = (s.target.video for s in splits["train"])
    assert by_path.indices == by_bytes.indices == (0, 5, 10, 15)
    assert [_bar_position(f) for f in by_bytes.frames] == [0, 5, 10, 15]


# --- the three families' video paths ---------------------------------------------------------

@pytest.mark.parametrize("family, patch, seconds", [("qwen2_vl", 14, False), ("qwen2_5_vl", 14, True),
                                                    ("qwen3_vl", 16, False)])
def test_each_family_video_path_shapes_forward_and_backward(random_tiny_dirs, family, patch, seconds):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(random_tiny_dirs[family])
    model = AutoModelForImageTextToText.from_pretrained(random_tiny_dirs[family])
    clip = Clip(tuple(_frames(8)), 8.0, tuple(range(0, 16, 2)), 16)
    batch = tokenize(processor, ["a clip", None], [clip, None], "Video.", 1024, video=VideoConfig(max_pixels=96 * 96))
    t, h, w = batch["video_grid_thw"][0].tolist()
    side = 96 if patch == 16 else 84  # 96 px rounded to a multiple of patch x merge (32 or 28) within the budget
    assert (t, h, w) == (4, side // patch, side // patch)  # 8 frames -> 4 temporal patches
    assert batch["pixel_values_videos"].shape == (t * h * w, 3 * 2 * patch * patch)
    assert int((batch["input_ids"][0] == processor.video_token_id).sum()) == t * h * w // 4  # 2x2 merge
    assert "pixel_values" not in batch and int((batch["input_ids"][1] == processor.video_token_id).sum()) == 0
    assert ("second_per_grid_ts" in batch) == seconds  # Qwen2.5-VL's time-aware rotary positions
    if seconds:
        assert batch["second_per_grid_ts"].tolist() == [0.5]  # 2 frames a temporal patch at 4 sampled fps
    model.train()
    embeddings = embed(model, batch, "last")
    assert embeddings.shape == (2, 128) and torch.isfinite(embeddings).all()
    (embeddings[0] @ embeddings[1]).backward()
    patch_embed = model.model.visual.patch_embed.proj.weight.grad
    assert patch_embed is not None and patch_embed.abs().sum() > 0  # the gradient reaches the video frames


# --- video rows in a batch -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(random_tiny_dirs):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = random_tiny_dirs["qwen3_vl"]
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def _mixed_samples() -> list[RetrievalSample]:
    """Video, image and text targets; a video query; reversed clips and an image as hard negatives."""
    motion = SyntheticMotion(3, "train", seed=0, num_hard_negatives=1, video=FOUR)
    image = synthetic_gallery(1, seed=0)[0].target.image
    clips = [motion[i] for i in range(3)]
    return [clips[0],
            RetrievalSample("two red circles", Target(image=image, key="img"), [clips[1].hard_negatives[0]], "s1"),
            RetrievalSample("", Target(text="a text target", key="txt"), [Target(image=image, key="img")], "s2",
                            query_visual=clips[2].target.video)]


def test_a_video_row_and_an_image_row_share_a_batch(tiny):
    model, processor = tiny
    collate = MRLCollator(processor, MRLOptions(num_hard_negatives=1), FOUR)
    batch = collate(_mixed_samples())
    assert batch["target_videos_per_row"].tolist() == [1, 0, 0, 1, 1, 0]  # [3 positives, then 3 negatives]
    assert batch["target_images_per_row"].tolist() == [0, 1, 0, 0, 0, 1]
    assert batch["query_videos_per_row"].tolist() == [0, 0, 1] and "query_pixel_values" not in batch
    assert batch["target_video_grid_thw"].tolist() == [[2, 6, 6]] * 3  # in patches: 3x3 tokens a temporal patch
    assert batch["target_image_grid_thw"].shape == (2, 3)
    targets, counts = group_inputs(batch, "target")
    with torch.no_grad():
        together = embed(model, targets, "last")
        alone = torch.cat([embed(model, chunk, "last") for chunk in split_rows(targets, counts, 1)])
    assert torch.allclose(together, alone, atol=1e-5)  # each row sees only its own image or video
    # chunks of 4 + 2 rows take exactly their own patches of both kinds
    chunks = split_rows(targets, counts, 4)
    assert torch.equal(torch.cat([c["pixel_values_videos"] for c in chunks]), targets["pixel_values_videos"])
    assert torch.equal(torch.cat([c["pixel_values"] for c in chunks]), targets["pixel_values"])
    assert [c["video_grid_thw"].shape[0] for c in chunks] == [2, 1]
    assert [c["image_grid_thw"].shape[0] for c in chunks] == [1, 1]


def test_grad_cache_matches_plain_backward_with_video_rows(tiny):
    model, processor = tiny
    model.train()
    collate = MRLCollator(processor, MRLOptions(num_hard_negatives=1), FOUR)
    batch = collate(_mixed_samples())
    dims, weights = (16, 128), (1.0, 1.0)
    queries, _ = group_inputs(batch, "query")
    targets, _ = group_inputs(batch, "target")
    model.zero_grad()
    plain = matryoshka_info_nce(embed(model, queries, "last"), embed(model, targets, "last"), dims, weights, 10.0)
    plain.backward()
    plain_grads = grads(model)
    model.zero_grad()
    # video rows split in chunks of 2
    cached = cached_loss(model, batch, lambda q, t: matryoshka_info_nce(q, t, dims, weights, 10.0), chunk=2)
    cached_grads = grads(model)
    model.zero_grad()
    model.eval()
    assert "model.visual.patch_embed.proj.weight" in plain_grads  # the video frames' gradient is compared too
    assert_same_gradients(plain, cached, plain_grads, cached_grads)


def test_mining_ranks_video_targets(tiny):
    from vlm_recipes.objectives.mrl import mine_hard_negatives

    model, processor = tiny
    samples = [SyntheticMotion(6, "train", seed=2, num_hard_negatives=0, video=FOUR)[i] for i in range(6)]
    mined = mine_hard_negatives(model, processor, samples, MRLOptions(num_hard_negatives=2, hard_negatives="mined"),
                                batch_size=4, video=FOUR)
    keys = {s.target.key for s in samples}
    for sample, before in zip(mined, samples):
        assert len(sample.hard_negatives) == 2 and all(n.video is not None for n in sample.hard_negatives)
        assert {n.key for n in sample.hard_negatives} <= keys - {before.target.key}


# --- evaluation ------------------------------------------------------------------------------

def test_order_test_counts_own_clip_strictly_above_it_reversed():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    own = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    backwards = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    # full dim: query 1 wins, 2 loses, 3 ties (0.707 each: a tie is no win); dim 1 (prefixes
    # re-normalised): 1 wins, 2 ties (both 0), 3 wins
    assert order_by_dim(queries, own, backwards, (1, 2)) == {"1": pytest.approx(2 / 3), "2": pytest.approx(1 / 3)}


def test_evaluator_names_video_directions_and_runs_the_order_test(tiny):
    from vlm_recipes.evaluation.result import pick_metric
    from vlm_recipes.evaluation.retrieval import RetrievalEvaluator

    model, processor = tiny
    samples = motion_gallery(6, seed=0, video=FOUR)
    result = RetrievalEvaluator(processor, EncodeSettings(batch_size=4, video=FOUR), (16, 128)).evaluate(
        model, samples, "test")
    assert set(result.metrics) == {"t2v", "v2t", "order"} and set(result.metrics["order"]) == {"16", "128"}
    assert 0 <= pick_metric(result.metrics, "order") <= 1
    assert pick_metric(result.metrics, "t2v.recall@1") == result.metrics["t2v"]["128"]["recall@1"]
    with pytest.raises(InputError, match="metric_for_best='t2i.recall@1'.*t2v/v2t"):
        from vlm_recipes.objectives import build_objective

        recipe = load_recipe("mrl-video", ["train.metric_for_best=t2i.recall@1", "data.num_train=40",
                                           "data.num_val=4", "data.num_test=4"])
        build_objective(recipe, processor, family=None).load_data()


# --- synthetic-video -----------------------------------------------------------------------

def test_synthetic_video_needs_motion_and_is_deterministic():
    data = SyntheticMotion(4, "train", seed=1, num_hard_negatives=2, video=FOUR)
    sample, again = data[0], SyntheticMotion(4, "train", seed=1, num_hard_negatives=2, video=FOUR)[0]
    assert sample.query == again.query
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(sample.target.video.frames, again.target.video.frames))
    colour, shape, direction = sample.query.removeprefix("a ").split(" moving ")[0].split() + [sample.query.split()[-1]]
    assert direction in ("left", "right", "up", "down")
    reversed_ = sample.hard_negatives[0].video
    assert reversed_.frames == sample.target.video.frames[::-1] and reversed_.indices == sample.target.video.indices
    assert len(sample.target.video.frames) == 4 and sample.target.video.frames[0].size == (96, 96)
    # the shape crosses the frame: its centre moves by more than half the frame along the direction
    first, last = (np.asarray(f, np.int16) for f in (sample.target.video.frames[0], sample.target.video.frames[-1]))
    def centre(frame):
        ys, xs = np.nonzero(np.abs(frame - np.median(frame, axis=(0, 1))).sum(-1) > 80)
        return xs.mean(), ys.mean()
    (x0, y0), (x1, y1) = centre(first), centre(last)
    moved = {"right": x1 - x0, "left": x0 - x1, "down": y1 - y0, "up": y0 - y1}[direction]
    assert moved > 48
    gallery = motion_gallery(80, seed=0, video=FOUR)
    assert len({s.query for s in gallery}) == 80 == len(ALL_MOTIONS)
    with pytest.raises(InputError, match="data.num_test=81"):
        motion_gallery(81, seed=0, video=FOUR)


# --- bad input -----------------------------------------------------------------------------

def test_corrupt_video_is_one_line_and_exit_2(tmp_path, capsys, random_tiny_dirs):
    from vlm_recipes.cli.encode import main as encode
    from vlm_recipes.cli.train import main as train

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    assert encode(["--model", str(random_tiny_dirs["qwen3_vl"]), "--videos", str(bad), "--query", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unreadable video") and "broken.mp4" in err[0]
    (tmp_path / "train.jsonl").write_text(json.dumps({"query": "q", "target": "broken.mp4"}) + "\n"
                                          + json.dumps({"query": "r", "target": "text"}))
    (tmp_path / "test.jsonl").write_text(json.dumps({"query": "r", "target": "text"}))
    code = train(["--recipe", "mrl-video", "--dataset", str(tmp_path / "train.jsonl"), "--no-wandb",
                  "--output-dir", str(tmp_path / "run"), "--set", "objective.options.num_hard_negatives=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unreadable video" in err[0] and "row 0 of the train split" in err[0]
    assert not (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(InputError, match="video 'missing.webm' not found"):
        (tmp_path / "train.jsonl").write_text(json.dumps({"query": "q", "target": "missing.webm"}))
        load_retrieval_splits(str(tmp_path / "train.jsonl"), 10, 1, 0, 0)


# --- end to end ----------------------------------------------------------------------------

@pytest.mark.slow
def test_mrl_video_recipe_learns_retrieval_and_order(tmp_path):
    from vlm_recipes.cli.train import main

    run_dir = tmp_path / "mrl-video"
    code = main(["--recipe", "mrl-video", "--output-dir", str(run_dir), "--no-wandb", "--max-steps", "56",
                 "--set", "data.num_val=0", "--set", "data.num_test=40",
                 "--set", "train.extra.dataloader_num_workers=0"])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    base, tuned = metrics["base"], metrics["finetuned"]
    print("t2v@128", base["t2v"]["128"]["recall@1"], "->", tuned["t2v"]["128"]["recall@1"],
          "order", base["order"]["128"], "->", tuned["order"]["128"])
    # measured 2026-12-04 with these 56 steps (one thread, 40-clip gallery, 49 s): t2v recall@1 0.000 -> 0.325,
    # order test 0.425 -> 0.575 (the full recipe, 450 steps: 0.863 and 1.000; README). Bounds below
    # the measured: recall@1 >= 0.2 (8 of 40 queries, measured 13); the order test above the base's
    # (measured 6 queries above), loss x0.8.
    r1, order = tuned["t2v"]["128"]["recall@1"], tuned["order"]["128"]
    assert r1 >= 0.2 and r1 >= 3 * base["t2v"]["128"]["recall@1"]
    assert order > base["order"]["128"]
    losses = [e["loss"] for e in json.loads((run_dir / "train_log.json").read_text()) if "loss" in e]
    assert losses[-1] <= 0.8 * losses[0]
    assert set(metrics["finetuned"]) == {"t2v", "v2t", "order"} and set(metrics["finetuned"]["order"]) == {
        "16", "32", "64", "128"}
    for name in ("results.md", "recall_vs_dim.png", "retrievals.png", "loss.png"):
        assert (run_dir / name).is_file(), name
