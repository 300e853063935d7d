"""The mrl recipe: loss maths, GradCache and cross-process invariances, pooling, metrics, data.

Fast tests use random embeddings or a randomly initialised tiny model; the end-to-end test
(slow) trains the shipped tiny base through the real CLI and asserts learning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import socket

import pytest
import torch
import torch.nn.functional as F

from grad_checks import assert_same_gradients, cached_loss, grads
from vlm_recipes.config import MRLOptions, ObjectiveConfig, load_recipe
from vlm_recipes.data.retrieval import (
    Scene,
    SyntheticRetrieval,
    load_retrieval_splits,
    one_attribute_change,
    random_scene,
    synthetic_gallery,
)
from vlm_recipes.errors import InputError
from vlm_recipes.evaluation.retrieval import retrieval_metrics
from vlm_recipes.models.embedding import EncodeSettings, default_dims, embed, pool, tokenize, truncate
from vlm_recipes.objectives import build_objective, grad_cache
from vlm_recipes.objectives.grad_cache import split_rows
from vlm_recipes.objectives.mrl import matryoshka_info_nce


def mrl_objective(processor, options: MRLOptions = MRLOptions()):
    """The mrl objective as a run builds it, with `options`."""
    recipe = dataclasses.replace(load_recipe("mrl"), objective=ObjectiveConfig("mrl", options))
    return build_objective(recipe, processor, family=None)


# --- loss -----------------------------------------------------------------------------------

def reference_loss(queries, targets, dims, weights, scale):
    """The same loss written out one query at a time in float64, without the batched code."""
    batch = len(queries)
    total = 0.0
    for dim, weight in zip(dims, weights):
        def unit(v, dim=dim):
            v = v[:dim].double()
            return v / v.norm()
        t2i = i2t = 0.0
        for i in range(batch):
            logits = torch.stack([scale * unit(queries[i]) @ unit(t) for t in targets])
            t2i -= (logits[i] - torch.logsumexp(logits, 0)).item()
            logits = torch.stack([scale * unit(targets[i]) @ unit(q) for q in queries])
            i2t -= (logits[i] - torch.logsumexp(logits, 0)).item()
        total += weight * (t2i + i2t) / (2 * batch)
    return total


def test_loss_equals_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    queries, targets = torch.randn(4, 16, generator=gen), torch.randn(12, 16, generator=gen)  # 2 negatives each
    dims, weights = (4, 8, 16), (0.5, 1.0, 2.0)
    got = matryoshka_info_nce(queries, targets, dims, weights, 20.0)
    assert got.item() == pytest.approx(reference_loss(queries, targets, dims, weights, 20.0), rel=1e-5)
    # the layout matters: [all positives, then all negatives]; interleaving gives another loss
    interleaved = torch.cat([targets[[i, 4 + 2 * i, 5 + 2 * i]] for i in range(4)])
    assert matryoshka_info_nce(queries, interleaved, dims, weights, 20.0).item() != pytest.approx(got.item())
    # a single dim, no negatives, learnable (tensor) scale
    scale = torch.tensor(7.0, requires_grad=True)
    got = matryoshka_info_nce(queries, targets[:4], (16,), (1.0,), scale)
    got.backward()
    assert got.item() == pytest.approx(reference_loss(queries, targets[:4], (16,), (1.0,), 7.0), rel=1e-5)
    assert scale.grad is not None and scale.grad.item() != 0


def test_truncation_renormalises():
    x = torch.tensor([[3.0, 4.0, 12.0], [0.0, 2.0, 0.0]])
    assert torch.allclose(truncate(x, 2), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    assert torch.allclose(truncate(F.normalize(x, dim=-1), 2), truncate(x, 2))  # same from a unit vector
    assert torch.allclose(truncate(x, 3).norm(dim=-1), torch.ones(2))
    # the loss sees re-normalised prefixes: scaling a prefix does not change it
    q, t = torch.randn(3, 8), torch.randn(3, 8)
    t_scaled = t.clone()
    t_scaled[:, :4] *= 5
    assert matryoshka_info_nce(q, t, (4,), (1.0,), 10.0).item() == pytest.approx(
        matryoshka_info_nce(q, t_scaled, (4,), (1.0,), 10.0).item(), rel=1e-5)


def test_default_dims():
    assert default_dims(128) == (16, 32, 64, 128)
    assert default_dims(1536) == (256, 512, 1024, 1536)
    assert default_dims(2048) == (256, 512, 1024, 2048)
    assert default_dims(3584) == (256, 512, 1024, 2048, 3584)


def test_options_are_checked_at_load():
    with pytest.raises(InputError, match="dim_weights"):
        load_recipe("mrl", ["objective.options.dims=[8,16]", "objective.options.dim_weights=[1.0]"])
    with pytest.raises(InputError, match="objective.options.nope"):
        load_recipe("mrl", ["objective.options.nope=1"])
    assert load_recipe("mrl").objective.name == "mrl"


# --- cross-process gather -----------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_worker(rank: int, world: int, port: int, queries, targets, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    batch = len(queries) // world
    rows = slice(rank * batch, (rank + 1) * batch)
    negatives = targets[len(queries):]
    q = queries[rows].clone().requires_grad_()
    t = torch.cat([targets[:len(queries)][rows], negatives[rows]]).clone().requires_grad_()  # [pos, neg] local
    loss = matryoshka_info_nce(q, t, (4, 16), (1.0, 0.5), 20.0)
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    out.put((rank, (mean / world).item(), (q.grad / world).tolist(), (t.grad / world).tolist()))  # DDP averages over processes
    dist.destroy_process_group()


def test_cross_process_gather_equals_one_process():
    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(1)
    queries, targets = torch.randn(8, 16, generator=gen), torch.randn(16, 16, generator=gen)  # 1 negative each
    q, t = queries.clone().requires_grad_(), targets.clone().requires_grad_()
    single = matryoshka_info_nce(q, t, (4, 16), (1.0, 0.5), 20.0)
    single.backward()

    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(_gather_worker, args=(2, _free_port(), queries, targets, out), nprocs=2, join=True,
                       start_method="spawn")
    results = sorted(out.get() for _ in range(2))
    for rank, loss, q_grad, t_grad in results:
        q_grad, t_grad = torch.tensor(q_grad), torch.tensor(t_grad)
        assert loss == pytest.approx(single.item(), rel=1e-5)
        rows = slice(rank * 4, (rank + 1) * 4)
        assert torch.allclose(q_grad, q.grad[rows], atol=1e-6)
        assert torch.allclose(t_grad[:4], t.grad[:8][rows], atol=1e-6)  # positives
        assert torch.allclose(t_grad[4:], t.grad[8:][rows], atol=1e-6)  # hard negatives


# --- the model as an embedder ---------------------------------------------------------------

def test_last_token_pooling_under_left_and_right_padding():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1)  # value = position (+4 for row 1)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").flatten().tolist() == [2.0, 7.0]
    assert pool(hidden, left, "last").flatten().tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").flatten().tolist() == [1.0, 5.5]
    assert pool(hidden, left, "mean").flatten().tolist() == [2.0, 5.5]


@pytest.fixture(scope="module")
def tiny(random_tiny_dirs):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = random_tiny_dirs["qwen3_vl"]
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_real_model_embeddings_do_not_depend_on_padding_side(random_tiny_dirs, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(random_tiny_dirs[family]).eval()
    processor = AutoProcessor.from_pretrained(random_tiny_dirs[family])
    samples = synthetic_gallery(3, seed=0)
    texts = ["a red star", samples[0].query, "two blue squares on the left and a red cross on the right"]
    images = [None, samples[1].target.image, None]
    batches = {side: tokenize(processor, texts, images, "Find it.", 512, side) for side in ("left", "right")}
    assert batches["left"]["attention_mask"][0, 0] == 0 and batches["right"]["attention_mask"][0, -1] == 0
    with torch.no_grad():
        out = {side: embed(model, batch, "last") for side, batch in batches.items()}
        alone = embed(model, tokenize(processor, texts[:1], images[:1], "Find it.", 512), "last")
    assert torch.allclose(out["left"], out["right"], atol=1e-5)
    assert torch.allclose(out["left"][:1], alone, atol=1e-5)  # padding does not leak into a row
    assert torch.allclose(out["left"].norm(dim=-1), torch.ones(3))


def test_mixed_image_and_text_targets_keep_their_order(tiny):
    from vlm_recipes.data.retrieval import Target
    from vlm_recipes.evaluation.retrieval import encode_targets

    model, processor = tiny
    image = synthetic_gallery(1, seed=0)[0].target.image
    targets = [Target(text="a red star", key="a"), Target(image=image, key="b"), Target(text="two crosses", key="c")]
    settings = EncodeSettings.from_options(MRLOptions(), 4)
    with torch.no_grad():
        together = encode_targets(model, processor, targets, settings)
        alone = torch.cat([encode_targets(model, processor, [t], settings) for t in targets])
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[2], atol=1e-3)  # the rows really differ


def _batch(processor, num_samples: int, negatives: int):
    """A collated batch and the objective that built it."""
    objective = mrl_objective(processor, MRLOptions(num_hard_negatives=negatives))
    data = SyntheticRetrieval(num_samples, "train", seed=3, num_hard_negatives=negatives)
    return objective.collate([data[i] for i in range(num_samples)]), objective


def test_collator_layout_and_row_split(tiny):
    _, processor = tiny
    batch, _ = _batch(processor, 3, negatives=2)
    assert batch["query_input_ids"].shape[0] == 3 and batch["target_input_ids"].shape[0] == 9
    assert "query_pixel_values" not in batch and batch["target_images_per_row"].tolist() == [1] * 9
    # mixed text/image rows: chunks take exactly their own images' patches
    images = [None, synthetic_gallery(2, 0)[0].target.image, None, synthetic_gallery(2, 0)[1].target.image.resize((64, 200))]
    texts = ["a", None, "b c d", "e"]
    encoded = tokenize(processor, texts, images, "x", 512)
    per_row = torch.tensor([int(i is not None) for i in images])
    chunks = split_rows(encoded, per_row, 2)
    assert [c["input_ids"].shape[0] for c in chunks] == [2, 2]
    assert torch.equal(torch.cat([c["pixel_values"] for c in chunks]), encoded["pixel_values"])
    for chunk in chunks:
        assert chunk["pixel_values"].shape[0] == int(chunk["image_grid_thw"].prod(-1).sum())
        assert bool(chunk["attention_mask"][:, -1].any())  # all-padding columns dropped


def test_grad_cache_matches_plain_backward(tiny):
    model, processor = tiny
    model.train()
    batch, objective = _batch(processor, 6, negatives=1)
    model.zero_grad()
    plain = objective.compute_loss(model, batch)
    plain.backward()
    plain_grads = grads(model)
    model.zero_grad()
    # queries in 4+2 rows, targets in 4+4+4
    cached = cached_loss(model, batch, lambda q, t: objective.loss(model, q, t), chunk=4)
    cached_grads = grads(model)
    model.zero_grad()
    model.eval()
    assert len(plain_grads) > 50
    assert_same_gradients(plain, cached, plain_grads, cached_grads)


def test_grad_cache_replays_dropout_masks(random_tiny_dirs, tiny, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from vlm_recipes.models.loading import peft_quietly

    _, processor = tiny
    base = AutoModelForImageTextToText.from_pretrained(random_tiny_dirs["qwen3_vl"])
    with peft_quietly():
        model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5,
                                                target_modules=["q_proj", "v_proj"]))
    for name, param in model.named_parameters():  # start LoRA B away from zero so dropout matters
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    model.train()
    batch, objective = _batch(processor, 4, negatives=0)

    def run(cached: bool):
        model.zero_grad()
        torch.manual_seed(11)
        if cached:
            loss = cached_loss(model, batch, lambda q, t: objective.loss(model, q, t), chunk=4)
        else:
            loss = objective.compute_loss(model, batch)
            loss.backward()
        return loss.item(), grads(model)

    plain_loss, plain = run(cached=False)
    replayed_loss, cached = run(cached=True)
    assert replayed_loss == pytest.approx(plain_loss, rel=1e-5)
    assert all(torch.allclose(cached[n], g, rtol=1e-3, atol=1e-6) for n, g in plain.items())
    # control: without replaying the RNG the dropout masks differ and so do the gradients
    monkeypatch.setattr(grad_cache.RngState, "replay", lambda self: contextlib.nullcontext())
    _, unreplayed = run(cached=True)
    assert not all(torch.allclose(unreplayed[n], g, rtol=1e-3, atol=1e-6) for n, g in plain.items())


def test_trainer_runs_grad_cache_learned_temperature_and_ema(random_tiny_dirs, tmp_path):
    """The shared Trainer drives the objective's own step; training-only extras are gone after."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_recipes.config import FreezeConfig, StageConfig, TrainConfig
    from vlm_recipes.objectives.mrl import SCALE_PARAM
    from vlm_recipes.training.trainer import train_stage

    path = random_tiny_dirs["qwen2_vl"]
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    options = MRLOptions(num_hard_negatives=1, grad_cache_chunk=3, learn_temperature=True, ema_decay=0.5)
    stage = StageConfig(freeze=FreezeConfig(llm=False), train=TrainConfig(max_steps=3, per_device_train_batch_size=4,
                                                                          logging_steps=1, learning_rate=1e-3))
    before = model.model.language_model.layers[0].mlp.up_proj.weight.detach().clone()
    log = train_stage(model, stage, mrl_objective(processor, options), SyntheticRetrieval(12, "train", 0, 1),
                      tmp_path, seed=0, bf16=False, use_cpu=True, report_to=[])
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    temperature = next(entry["learned_temperature"] for entry in log if "learned_temperature" in entry)
    assert temperature != pytest.approx(options.temperature)  # it was trained
    assert not hasattr(model, SCALE_PARAM)  # removed before saving
    assert not torch.equal(before, model.model.language_model.layers[0].mlp.up_proj.weight)


# --- mined hard negatives -------------------------------------------------------------------

def _targets(n):
    from vlm_recipes.data.retrieval import RetrievalSample, Target

    return [RetrievalSample(f"q{i}", Target(text=f"t{i}", key=f"t{i}")) for i in range(n)]


def test_mining_picks_top_ranked_non_positives_below_the_margin(monkeypatch):
    from vlm_recipes.objectives import mrl

    samples = _targets(4)
    # score[q][t]: q0's positive t0 scores 1.0; t1 (0.99) is within the 0.95 margin (a likely
    # unlabelled positive), so t3 (0.9) then t2 (0.5) are its negatives
    scores = torch.tensor([[1.0, 0.99, 0.5, 0.9], [0.1, 0.8, 0.3, 0.2], [0.0, 0.2, 0.7, 0.1], [0.4, 0.3, 0.2, 0.6]])
    monkeypatch.setattr(mrl, "encode_queries_and_gallery", lambda *a, **k: (scores, torch.eye(4)))
    options = MRLOptions(num_hard_negatives=2, hard_negatives="mined", mining_margin=0.95)
    mined = mrl.mine_hard_negatives(None, None, samples, options, 32)
    assert [[t.key for t in s.hard_negatives] for s in mined] == [["t3", "t2"], ["t2", "t3"], ["t1", "t3"],
                                                                   ["t0", "t1"]]
    scores[2, 2] = -0.5  # a negative positive: the ceiling stays below it (-0.525), nothing is left
    with pytest.raises(InputError, match="mining_margin"):
        mrl.mine_hard_negatives(None, None, samples, MRLOptions(num_hard_negatives=1, hard_negatives="mined",
                                                                 mining_margin=0.95), 32)
    monkeypatch.setattr(mrl, "encode_queries_and_gallery", lambda *a, **k: (scores[:2], torch.eye(4)))
    with pytest.raises(InputError, match="num_hard_negatives"):
        mrl.mine_hard_negatives(None, None, samples[:2], MRLOptions(num_hard_negatives=2, hard_negatives="mined"), 32)


def test_mined_options_are_checked():
    with pytest.raises(InputError, match="num_hard_negatives >= 1"):
        load_recipe("mrl", ["objective.options.hard_negatives=mined", "objective.options.num_hard_negatives=0"])
    with pytest.raises(InputError, match="must be one of data, mined"):
        load_recipe("mrl", ["objective.options.hard_negatives=random"])
    with pytest.raises(InputError, match="mining_margin"):
        load_recipe("mrl", ["objective.options.mining_margin=1.5"])
    assert load_recipe("mrl", ["objective.options.mining_margin=0.95"]).objective.options.mining_margin == 0.95


def test_trainer_mines_negatives_with_the_model_it_trains(random_tiny_dirs, tmp_path):
    """Mining runs when the Trainer is built: every sample then carries k negatives that the
    model itself ranks highest among the other training targets."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlm_recipes.config import FreezeConfig, StageConfig, TrainConfig
    from vlm_recipes.evaluation.retrieval import encode_targets, unique_targets
    from vlm_recipes.models.embedding import encode_texts
    from vlm_recipes.training.trainer import RecipeTrainer, training_arguments

    path = random_tiny_dirs["qwen2_vl"]
    model, processor = AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    options = MRLOptions(num_hard_negatives=2, hard_negatives="mined")  # no margin: a random model ranks nothing
    objective = mrl_objective(processor, options)
    train = [s for s in SyntheticRetrieval(6, "train", 0, 0)]
    stage = StageConfig(freeze=FreezeConfig(llm=False), train=TrainConfig(max_steps=1, per_device_train_batch_size=3))
    trainer = RecipeTrainer(model=model, args=training_arguments(stage.train, tmp_path, 0, False, True, []),
                            train_dataset=train, data_collator=objective.collate, objective=objective)
    settings = EncodeSettings.from_options(options, 8)
    scores = encode_texts(model, processor, [s.query for s in train], settings) \
        @ encode_targets(model, processor, unique_targets(train), settings).T
    for i, sample in enumerate(trainer.train_dataset):
        ranked = [f"train-{j:05d}" for j in scores[i].argsort(descending=True).tolist() if j != i]
        assert [t.key for t in sample.hard_negatives] == ranked[:2]
    trainer.train()  # the collator takes the mined negatives
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


# --- metrics --------------------------------------------------------------------------------

def test_metrics_against_hand_computed_rankings():
    # gallery of 12; scores fix each query's ranking
    scores = torch.zeros(3, 12)
    scores[0] = torch.linspace(1, 0, 12)  # ranking 0, 1, 2, ...
    scores[1] = torch.linspace(0, 1, 12)  # ranking 11, 10, 9, ...
    scores[2] = torch.linspace(1, 0, 12)
    relevant = torch.zeros(3, 12, dtype=torch.bool)
    relevant[0, 0] = True  # rank 1
    relevant[1, 9] = True  # rank 3
    relevant[2, [1, 11]] = True  # ranks 2 and 12 (outside the top 10)
    got = retrieval_metrics(scores, relevant)
    assert got["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert got["recall@5"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert got["recall@10"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert got["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    ideal_two = 1 + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4) + (1 / math.log2(3)) / ideal_two) / 3)


def test_metrics_match_torchmetrics():
    from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalRecall

    gen = torch.Generator().manual_seed(2)
    scores = torch.rand(30, 40, generator=gen)
    relevant = torch.rand(30, 40, generator=gen) < 0.08
    relevant[torch.arange(30), torch.randint(0, 40, (30,), generator=gen)] = True
    got = retrieval_metrics(scores, relevant)
    indexes = torch.arange(30).unsqueeze(1).expand(30, 40).flatten()
    flat = (scores.flatten(), relevant.flatten(), indexes)
    for k in (1, 5, 10):
        assert got[f"recall@{k}"] == pytest.approx(RetrievalRecall(top_k=k)(*flat).item(), abs=1e-6)
    assert got["mrr@10"] == pytest.approx(RetrievalMRR(top_k=10)(*flat).item(), abs=1e-6)
    assert got["ndcg@10"] == pytest.approx(RetrievalNormalizedDCG(top_k=10)(*flat).item(), abs=1e-6)


# --- data -----------------------------------------------------------------------------------

def test_synthetic_data_is_deterministic_and_compositional():
    a, b = SyntheticRetrieval(5, "train", 0, 2)[4], SyntheticRetrieval(99, "train", 0, 2)[4]
    assert a.query == b.query and a.target.image.tobytes() == b.target.image.tobytes()
    assert len(a.hard_negatives) == 2
    rng = random.Random(0)
    for _ in range(200):
        scene = random_scene(rng)
        other = one_attribute_change(rng, scene)
        assert other != scene
        swapped = Scene(scene.second, scene.first, scene.layout)
        changed = sum(x != y for g, h in ((scene.first, other.first), (scene.second, other.second))
                      for x, y in zip((g.count, g.colour, g.shape), (h.count, h.colour, h.shape)))
        assert other == swapped or changed == 1
    gallery = synthetic_gallery(500, seed=0)
    assert len({s.target.key for s in gallery}) == 500
    assert len({(s.query.split(" and ")[0], s.query.split(" and ")[-1]) for s in gallery}) == 500


def test_jsonl_rows(tmp_path):
    gallery = synthetic_gallery(2, 0)
    gallery[0].target.image.save(tmp_path / "a.png")
    gallery[1].target.image.save(tmp_path / "b.png")
    rows = [{"query": "first", "target": "a.png", "hard_negatives": ["b.png", "some text"]},
            {"query": "second", "target": "a text target", "target_text": None},
            {"query": "third", "target": "b.png"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps(rows[2]))
    splits = load_retrieval_splits(str(tmp_path), 10, 1, 0, num_hard_negatives=0)
    first = splits["train"][0]
    assert first.target.image.size == gallery[0].target.image.size and first.target.text is None
    assert first.hard_negatives[1].image is None and first.hard_negatives[1].text == "some text"
    assert splits["train"][1].target.text == "a text target"
    assert [s.query for s in splits["test"]] == ["third"]
    with pytest.raises(InputError, match="hard negative"):
        load_retrieval_splits(str(tmp_path), 10, 1, 0, num_hard_negatives=1)
    (tmp_path / "train.jsonl").write_text(json.dumps({"query": "q", "target": "missing.png"}))
    with pytest.raises(InputError, match="missing.png"):
        load_retrieval_splits(str(tmp_path), 10, 1, 0, num_hard_negatives=0)


# --- end to end -------------------------------------------------------------------------------

@pytest.mark.slow
def test_mrl_recipe_learns_retrieval(tmp_path):
    from vlm_recipes.cli.train import main
    from vlm_recipes.families import get_family
    from vlm_recipes.models.loading import tiny_base_path

    assert (tiny_base_path(get_family("qwen3_vl")) / "config.json").is_file(), "shipped tiny base missing"
    run_dir = tmp_path / "mrl"
    code = main(["--recipe", "mrl", "--output-dir", str(run_dir), "--no-wandb", "--max-steps", "100",
                 "--set", "data.num_test=200"])
    assert code == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dims"] == [16, 32, 64, 128]
    base, tuned = metrics["base"]["t2i"]["128"], metrics["finetuned"]["t2i"]["128"]
    print("t2i @128 base", base, "fine-tuned", tuned)
    # measured 2026-12-03 with these 100 steps on the shipped base (200-image gallery, 2 cores):
    # recall@1 0.005 -> 0.300, recall@10 0.050 -> 0.910, loss 15.14 -> 5.28 (x0.35); 250 steps
    # reached 0.540 / 1.000 (the full recipe, 750 steps on 500 images: 0.004 -> 0.590; DECISIONS
    # D14, D16). The bounds sit well below: recall@1 >= 0.155 (29 of 200 queries under the
    # measured 60), recall@10 >= 0.55, loss x0.8.
    assert tuned["recall@1"] >= max(3 * base["recall@1"], base["recall@1"] + 0.15)
    assert tuned["recall@10"] >= base["recall@10"] + 0.5
    losses = [e["loss"] for e in json.loads((run_dir / "train_log.json").read_text()) if "loss" in e]
    assert losses[-1] <= 0.8 * losses[0]
    assert set(metrics["finetuned"]["i2t"]["16"]) == {"recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"}
    for name in ("results.md", "recall_vs_dim.png", "retrievals.png", "loss.png"):
        assert (run_dir / name).is_file(), name
