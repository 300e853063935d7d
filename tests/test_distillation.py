"""mrl distillation: the loss against a hand computation, the cached teacher rows against the batch,
a frozen teacher, GradCache with a teacher, and teachers that cannot embed (one line, exit 2).

All fast: fixed embeddings, or the randomly initialised tiny checkpoints of conftest.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import yaml

from grad_checks import assert_same_gradients, cached_loss, grads
from vlm_recipes.config import MRLOptions, ObjectiveConfig, load_recipe
from vlm_recipes.data.retrieval import SyntheticRetrieval
from vlm_recipes.errors import InputError
from vlm_recipes.models.embedding import embed
from vlm_recipes.models.teacher import Teacher, TeacherBatch, TeacherCache, WithTeacher
from vlm_recipes.objectives import build_objective
from vlm_recipes.objectives.distillation import distillation_loss
from vlm_recipes.objectives.mrl import group_inputs, teacher_rows


def objective_with(processor, **options):
    recipe = load_recipe("mrl")
    merged = dataclasses.replace(recipe.objective.options, **options)
    return build_objective(dataclasses.replace(recipe, objective=ObjectiveConfig("mrl", merged)), processor, None)


# --- the loss ---------------------------------------------------------------------------------

def unit(v, dim=None):
    v = (v if dim is None else v[:dim]).double()
    return v / v.norm()


def reference(queries, targets, t_queries, t_targets, dims, weights, kind, tau):
    """The distillation term written out one row and one entry at a time, in float64."""
    batch = len(queries)
    total = 0.0
    for dim, weight in zip(dims, weights):
        directions = []
        for rows, cols, t_rows, t_cols in ((queries, targets, t_queries, t_targets),
                                           (targets[:batch], queries, t_targets[:batch], t_queries)):
            term = 0.0
            for i in range(batch):
                s = [(unit(rows[i], dim) @ unit(c, dim)).item() for c in cols]
                t = [(unit(t_rows[i]) @ unit(c)).item() for c in t_cols]  # the teacher at its own full dim
                if kind == "kl":
                    zs = math.log(sum(math.exp(x / tau) for x in s))
                    zt = math.log(sum(math.exp(x / tau) for x in t))
                    term += sum(math.exp(b / tau - zt) * ((b / tau - zt) - (a / tau - zs)) for a, b in zip(s, t))
                else:
                    term += sum((a - b) ** 2 for a, b in zip(s, t)) / len(s)
            directions.append(term / batch)
        total += weight * sum(directions) / 2
    return total


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_loss_equals_a_hand_computation(kind):
    gen = torch.Generator().manual_seed(0)
    queries, targets = torch.randn(4, 16, generator=gen), torch.randn(8, 16, generator=gen)  # 1 negative each
    t_queries, t_targets = torch.randn(4, 24, generator=gen), torch.randn(8, 24, generator=gen)  # another width
    teacher = TeacherBatch(torch.nn.functional.normalize(t_queries, dim=-1),
                           torch.nn.functional.normalize(t_targets, dim=-1))
    dims, weights = (4, 16), (0.5, 1.0)
    got = distillation_loss(queries, targets, teacher, dims, weights, kind, tau=0.1)
    assert got.item() == pytest.approx(reference(queries, targets, t_queries, t_targets, dims, weights, kind, 0.1),
                                       rel=1e-5)
    # a teacher that agrees with the student at every dim teaches nothing
    same = TeacherBatch(torch.nn.functional.normalize(queries, dim=-1), torch.nn.functional.normalize(targets, dim=-1))
    assert distillation_loss(queries, targets, same, (16,), (1.0,), kind, tau=0.1).item() == pytest.approx(0, abs=1e-6)


def test_mixed_loss_and_temperature_default():
    objective = objective_with(None, distillation_alpha=0.25)
    gen = torch.Generator().manual_seed(1)
    queries, targets = torch.randn(3, 128, generator=gen), torch.randn(6, 128, generator=gen)
    teacher = TeacherBatch(*(torch.nn.functional.normalize(torch.randn(n, 32, generator=gen), dim=-1) for n in (3, 6)))

    class Model(torch.nn.Module):
        config = type("C", (), {"hidden_size": 128})()

    plain = objective.loss(Model(), queries, targets)
    mixed = objective.loss(Model(), queries, targets, teacher)
    dims = (16, 32, 64, 128)
    kd = distillation_loss(queries, targets, teacher, dims, (1.0,) * 4, "kl", objective.options.temperature)
    assert objective.distillation_temperature == objective.options.temperature  # no teacher run: the student's
    assert mixed.item() == pytest.approx(0.75 * plain.item() + 0.25 * kd.item(), rel=1e-6)


def test_options_are_checked():
    for bad in ("objective.options.distillation_alpha=1.5", "objective.options.distillation_temperature=0",
                "objective.options.distillation_loss=l1", "objective.options.teacher_pooling=max"):
        with pytest.raises(InputError):
            load_recipe("mrl-distill", [bad])
    assert load_recipe("mrl-distill").objective.options.distillation_alpha > 0  # parses without a teacher


def _gather_worker(rank: int, world: int, port: int, tensors, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    queries, targets, t_queries, t_targets = tensors
    batch = len(queries) // world
    rows = slice(rank * batch, (rank + 1) * batch)

    def local(q, t):  # this process's [positives, negatives]
        return torch.cat([t[:len(q)][rows], t[len(q):][rows]])

    q = queries[rows].clone().requires_grad_()
    t = local(queries, targets).clone().requires_grad_()
    loss = distillation_loss(q, t, TeacherBatch(t_queries[rows], local(t_queries, t_targets)), (4, 16), (1.0, 0.5),
                             "kl", 0.1)
    loss.backward()
    mean = loss.detach().clone()
    dist.all_reduce(mean)
    out.put((rank, (mean / world).item(), (q.grad / world).tolist(), (t.grad / world).tolist()))  # DDP averages
    dist.destroy_process_group()


def test_teacher_rows_are_gathered_across_processes_like_the_students():
    """2 gloo processes of 4 queries each == 1 process of 8: loss and gradients (the teacher's
    candidates are gathered in the student's layout, [all positives, then all negatives])."""
    import socket

    import torch.multiprocessing as mp

    gen = torch.Generator().manual_seed(3)
    queries, targets = torch.randn(8, 16, generator=gen), torch.randn(16, 16, generator=gen)
    norm = torch.nn.functional.normalize
    t_queries, t_targets = norm(torch.randn(8, 24, generator=gen), dim=-1), norm(torch.randn(16, 24, generator=gen), dim=-1)
    q, t = queries.clone().requires_grad_(), targets.clone().requires_grad_()
    single = distillation_loss(q, t, TeacherBatch(t_queries, t_targets), (4, 16), (1.0, 0.5), "kl", 0.1)
    single.backward()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_gather_worker, args=(2, port, (queries, targets, t_queries, t_targets), out), nprocs=2,
                       join=True, start_method="spawn")
    for rank, loss, q_grad, t_grad in sorted(out.get() for _ in range(2)):
        q_grad, t_grad = torch.tensor(q_grad), torch.tensor(t_grad)
        rows = slice(rank * 4, (rank + 1) * 4)
        assert loss == pytest.approx(single.item(), rel=1e-5)
        assert torch.allclose(q_grad, q.grad[rows], atol=1e-6)
        assert torch.allclose(t_grad[:4], t.grad[:8][rows], atol=1e-6)  # positives
        assert torch.allclose(t_grad[4:], t.grad[8:][rows], atol=1e-6)  # hard negatives


# --- the teacher and its cache -----------------------------------------------------------------

@pytest.fixture(scope="module")
def student(random_tiny_dirs):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = random_tiny_dirs["qwen3_vl"]
    return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)


def cached_teacher(path, samples, k=1, **options):
    teacher = Teacher.resolve(MRLOptions(teacher=str(path), num_hard_negatives=k, **options), batch_size=4)
    cache = TeacherCache()
    cache.fill(teacher, samples, k, "cpu")
    return teacher, cache


def test_cached_rows_line_up_with_the_batch(random_tiny_dirs, student):
    """The teacher is the student's own checkpoint with the student's settings: its cached rows must
    equal the student's embeddings of the batch row for row (queries, positives, hard negatives)."""
    model, processor = student
    objective = objective_with(processor, num_hard_negatives=2)  # mrl's instructions: "Query.", "Image."
    data = SyntheticRetrieval(8, "train", seed=5, num_hard_negatives=2)
    samples = [data[i] for i in range(8)]
    _, cache = cached_teacher(random_tiny_dirs["qwen3_vl"], samples, k=2, query_instruction="Query.",
                              target_instruction="Image.")
    batch = WithTeacher(objective.collate, cache, 2)([samples[i] for i in (6, 1, 3)])  # any order
    rows = teacher_rows(batch)
    assert rows.queries.shape == (3, 128) and rows.targets.shape == (9, 128)
    model.eval()
    with torch.no_grad():
        queries = embed(model, group_inputs(batch, "query")[0], "last")
        targets = embed(model, group_inputs(batch, "target")[0], "last")
    assert torch.allclose(rows.queries, queries, atol=1e-4) and torch.allclose(rows.targets, targets, atol=1e-4)
    # and so the taught term is ~0: the teacher's matrix is the student's own
    assert distillation_loss(queries, targets, rows, (128,), (1.0,), "kl", 0.1).item() < 1e-6


def test_teacher_settings_come_from_its_run(random_tiny_dirs, tmp_path):
    run = fake_run(tmp_path / "teacher", random_tiny_dirs["qwen3_vl"], "mrl",
                   {"pooling": "mean", "query_instruction": "Q?", "target_instruction": "I?", "temperature": 0.07})
    for name in (run, run / "model"):
        teacher = Teacher.resolve(MRLOptions(teacher=str(name)), batch_size=8)
        assert (teacher.settings.pooling, teacher.settings.query_instruction, teacher.temperature) == ("mean", "Q?", 0.07)
        assert teacher.model_dir == str(run / "model")
    explicit = Teacher.resolve(MRLOptions(teacher=str(run), teacher_pooling="last"), batch_size=8)
    assert explicit.settings.pooling == "last" and explicit.settings.target_instruction == "I?"
    plain = Teacher.resolve(MRLOptions(teacher=str(random_tiny_dirs["qwen3_vl"]), pooling="mean"), batch_size=8)
    assert plain.settings.pooling == "mean" and plain.temperature is None  # a checkpoint: the student's


def test_the_teacher_gets_no_gradient_and_does_not_change(random_tiny_dirs, student):
    model, processor = student
    objective = objective_with(processor, distillation_alpha=0.5)
    data = SyntheticRetrieval(4, "train", seed=2, num_hard_negatives=1)
    samples = [data[i] for i in range(4)]
    teacher, cache = cached_teacher(random_tiny_dirs["qwen2_vl"], samples)
    teacher.load("cpu")
    before = {n: p.detach().clone() for n, p in teacher.model.named_parameters()}
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    objective.teacher = teacher
    batch = WithTeacher(objective.collate, cache, 1)(samples)
    model.train()
    model.zero_grad()
    loss = objective.compute_loss(model, batch)
    loss.backward()
    assert not batch["teacher_queries"].requires_grad and batch["teacher_queries"].grad is None
    assert all(p.grad is None for p in teacher.model.parameters())
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert all(torch.equal(p, before[n]) for n, p in teacher.model.named_parameters())
    model.zero_grad()
    model.eval()


def test_grad_cache_with_a_teacher_matches_plain_backward(random_tiny_dirs, student):
    model, processor = student
    objective = objective_with(processor, distillation_alpha=0.5, num_hard_negatives=1)
    data = SyntheticRetrieval(6, "train", seed=4, num_hard_negatives=1)
    samples = [data[i] for i in range(6)]
    objective.teacher, cache = cached_teacher(random_tiny_dirs["qwen2_vl"], samples)
    batch = WithTeacher(objective.collate, cache, 1)(samples)
    model.train()
    model.zero_grad()
    plain = objective.compute_loss(model, batch)
    plain.backward()
    plain_grads = grads(model)
    model.zero_grad()
    teacher = teacher_rows(batch)
    cached = cached_loss(model, batch, lambda q, t: objective.loss(model, q, t, teacher), chunk=4)
    cached_grads = grads(model)
    model.zero_grad()
    model.eval()
    assert len(plain_grads) > 50
    assert_same_gradients(plain, cached, plain_grads, cached_grads)


# --- teachers that cannot embed: one line, exit 2 ---------------------------------------------

def fake_run(run_dir, checkpoint, objective: str, options: dict, adapter: bool = False):
    """A finished run directory of `objective` whose model/ is `checkpoint` (or a LoRA adapter on it)."""
    import shutil

    model = run_dir / "model"
    if adapter:
        model.mkdir(parents=True)
        (model / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(checkpoint)}))
    else:
        shutil.copytree(checkpoint, model)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"objective": {"name": objective, "options": options}}))
    (run_dir / "status.json").write_text(json.dumps({"state": "complete"}))
    return run_dir


def train_cli(capsys, *sets):
    from vlm_recipes.cli.train import main

    argv = ["--recipe", "mrl-distill", "--no-wandb", "--max-steps", "1", "--set", "data.num_train=8",
            "--set", "data.num_test=4"]
    for item in sets:
        argv += ["--set", item]
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", ["unset", "missing", "detection-lora", "not-a-model"])
def test_a_teacher_that_cannot_embed_fails_in_one_line(case, tmp_path, capsys, monkeypatch, random_tiny_dirs):
    monkeypatch.chdir(tmp_path)
    teacher = {"unset": "", "missing": str(tmp_path / "runs" / "nowhere" / "model"),
               "detection-lora": str(fake_run(tmp_path / "r4", random_tiny_dirs["qwen3_vl"], "sft",
                                              {"loss_on": "answer"}, adapter=True) / "model"),
               "not-a-model": str(tmp_path)}[case]
    code, err = train_cli(capsys, f"objective.options.teacher={teacher}")
    expected = {"unset": "distils from a teacher", "missing": "no such directory",
                "detection-lora": "not an mrl embedder", "not-a-model": "holds no model"}[case]
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not list(tmp_path.glob("runs/mrl-distill*/config.yaml"))  # failed before the run started


def test_run_recipes_trains_the_teacher_first_and_passes_it_on(tmp_path):
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "run_recipes.sh"

    def commands(*args):
        out = subprocess.run(["bash", str(script), "--dry-run", "--out", str(tmp_path / "sweep"), *args],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                                              "RUN_RECIPES_GPU_COUNT": "0"})
        assert out.returncode == 0, out.stderr
        return [line.split(" > ")[0] for line in out.stdout.splitlines() if "train_recipe.py" in line]

    runs = commands("all", "cpu")
    names = [line.split("--recipe ")[1].split()[0] for line in runs]
    assert names.index("mrl") < names.index("mrl-distill")
    assert f"objective.options.teacher={tmp_path / 'sweep' / 'mrl' / 'model'}" in runs[names.index("mrl-distill")]
    named = commands("mrl-distill", "--", "--set", "objective.options.teacher=runs/t/model")
    assert named[0].count("objective.options.teacher=") == 1  # the user's own, nothing added


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_mrl_distill_reports_teacher_untaught_and_distilled(tmp_path):
    """A 3-step mrl teacher, then a 3-step distilled student through the real CLI (~30 s on 2 cores);
    the teacher run doubles as the untaught reference, which only has to be a finished mrl run."""
    from vlm_recipes.cli.train import main

    small = ["--no-wandb", "--max-steps", "3", "--set", "data.num_train=96", "--set", "data.num_test=20"]
    assert main(["--recipe", "mrl", "--output-dir", str(tmp_path / "teacher"), *small]) == 0
    student = tmp_path / "student"
    assert main(["--recipe", "mrl-distill", "--output-dir", str(student), *small,
                 "--set", f"objective.options.teacher={tmp_path / 'teacher'}",
                 "--set", f"objective.options.untaught_run={tmp_path / 'teacher'}"]) == 0
    metrics = json.loads((student / "metrics.json").read_text())
    teacher = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert metrics["teacher"]["t2i"]["128"]["recall@1"] == pytest.approx(  # the same model, reloaded: at most a
        teacher["finetuned"]["t2i"]["128"]["recall@1"], abs=0.051)       # near tie of 1 in 20 may flip
    assert metrics["untaught"] == teacher["finetuned"]
    assert set(metrics["finetuned"]["t2i"]) == set(metrics["teacher"]["t2i"]) == {"16", "32", "64", "128"}
    kd = metrics["distillation"]
    assert (kd["alpha"], kd["loss"], kd["temperature"]) == (0.5, "kl", 0.1)
    assert kd["teacher_cached_inputs"] > 0
    report = (student / "results.md").read_text()
    for row in ("| teacher | 16 |", "| untaught student | 128 |", "| distilled student | 16 |"):
        assert row in report, row


def test_a_4bit_teacher_encodes_frozen(random_tiny_dirs):
    data = SyntheticRetrieval(4, "train", seed=2, num_hard_negatives=1)
    teacher, cache = cached_teacher(random_tiny_dirs["qwen3_vl"], [data[i] for i in range(4)], teacher_4bit=True)
    layer = teacher.model.model.language_model.layers[0].mlp.up_proj
    assert type(layer).__name__ == "Linear4bit" and not teacher.model.training
    rows = cache.lookup([data[i] for i in range(4)], 1)
    assert rows.targets.shape == (8, 128) and torch.allclose(rows.targets.norm(dim=-1), torch.ones(8), atol=1e-4)
