"""Data parallel (issue 16, DECISIONS D20): 2 gloo processes on CPU against 1 process with the same
global batch. Every run goes through the real CLI entry (`vlm_recipes.cli.train.main`) on the tiny
base and tiny data; the 2-process runs share one launch (a spawned pair with torchrun's variables),
so the file pays the start-up of two interpreters once.
"""

from __future__ import annotations

import json
import os
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from vlm_recipes.errors import InputError
from vlm_recipes.models import distributed

SMALL = ["--gpu", "cpu", "--no-wandb", "--max-steps", "3", "--set", "data.num_train=16", "--set", "data.num_test=5",
         "--set", "eval.batch_size=2", "--set", "train.logging_steps=1",
         "--set", "data.num_val=0"]  # 5 test rows in batches of 2: rank 0 gets 3 rows, rank 1 gets 2
# validation off: carving it would leave 15 training rows, which 2 processes cannot split evenly
# (the sampler repeats a row), so the second step's batch would differ from one process's
DETECTION = {  # per-device batch 4 on 2 processes = 8 on one; LoRA dropout off (masks depend on batch shape)
    "r2-vision-only": [],
    "r4-joint": ["--set", "lora.dropout=0.0"],
    # packed rows (D31): 2 x 4 samples in rows of at most 150 tokens against 8 samples in such rows
    "r4-joint-packed": ["--set", "lora.dropout=0.0", "--set", "train.packing=packed",
                        "--set", "train.max_tokens_per_row=150"],
}
RECIPE_OF_RUN = {"r4-joint-packed": "r4-joint"}  # a run's name when it is not its recipe's
OTHERS = {
    "diffusion": ["--set", "objective.options.steps=8", "--set", "objective.options.canvas_length=48"],
    # mining sharded too; 11 test rows (the metrics need a gallery of at least 10)
    "mrl": ["--set", "objective.options.hard_negatives=mined", "--set", "data.num_test=11"],
    # video rows: negatives gathered across the processes and mined from video targets
    "mrl-video": ["--set", "objective.options.hard_negatives=mined", "--set", "data.num_test=11"],
    # TRL's GRPOTrainer under DDP, on the merged SFT stage (samples per process: completes, writes once)
    "r5-sft-grpo": ["--set", "stages.1.train.max_steps=1", "--set", "data.num_shifted=4"],
}


PARTIAL_BATCH = ("r2-vision-only", ["--set", "data.num_train=13"])
"""13 training rows at a global batch of 8: each epoch ends in a partial batch of 5 (issue 31), which
train.drop_last (the default) drops in 1 process and in 2 alike; 3 steps = 3 epochs."""


def _argv(recipe: str, extra: list[str], batch: int, out: Path) -> list[str]:
    return ["--recipe", RECIPE_OF_RUN.get(recipe, recipe), *SMALL, *extra, "--set", f"train.per_device_train_batch_size={batch}",
            "--output-dir", str(out)]


@contextmanager
def one_thread():
    """As each of the launched processes: the same kernels, so evaluation is bit-identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_process(recipe: str, extra: list[str], out: Path) -> Path:
    """`recipe` run by this one process at per-device batch 8 (the 2 processes' global batch), into `out`."""
    from vlm_recipes.cli.train import main

    with one_thread():
        assert main(_argv(recipe, extra, 8, out)) == 0
    return out


def refused(monkeypatch, capsys, tmp_path, env: dict[str, str], recipe: str) -> str:
    """The CLI under launch environment `env` refuses `recipe`: exit 2 and no run directory; returns
    its one stderr line."""
    from vlm_recipes.cli.train import main

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["--recipe", recipe, "--gpu", "cpu", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and not (tmp_path / "run").exists()
    return err


# --- shard / gather, no processes ------------------------------------------------------------

@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("block", [1, 2, 3])
def test_shards_cover_every_item_once_and_gather_restores_the_order(monkeypatch, world, block):
    for total in range(1, 8):
        items = list(range(total))
        parts = []
        for rank in range(world):
            monkeypatch.setattr(distributed, "rank_and_world", lambda rank=rank: (rank, world))
            parts.append(distributed.shard(items, block))
        assert sorted(x for part in parts for x in part) == items  # nothing dropped or doubled
        assert max(map(len, parts)) - min(map(len, parts)) <= block  # uneven by at most one batch
        assert distributed._reassemble(parts, total, block) == items
        rows = [torch.tensor(part, dtype=torch.float32).reshape(-1, 1) for part in parts]
        assert distributed._reassemble(rows, total, block).flatten().tolist() == items


# --- two processes ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def become_launched_process(rank: int, world: int, port: int) -> None:
    """Set this spawned process up as torchrun would start it: its rank's variables, one thread."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, runs: list[list[str]], out):
    become_launched_process(rank, world, port)
    from vlm_recipes.cli.train import main

    writes = []  # the files this process writes (JSON, config.yaml, results.md): none off the main process
    real_write_text = Path.write_text

    def recording_write_text(self, *args, **kwargs):
        writes.append(str(self))
        return real_write_text(self, *args, **kwargs)

    Path.write_text = recording_write_text
    distributed.init_processes("cpu")

    def fail_on_rank_1(part):
        if distributed.rank_and_world()[0] == 1:
            raise InputError("bad row on rank 1")
        return part

    try:
        distributed.map_sharded(fail_on_rank_1, list(range(5)), 2)
        error = None
    except InputError as err:
        error = str(err)
    codes = [main(argv) for argv in runs]
    out.put((rank, error, codes, writes))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Every recipe run by 2 processes at per-device batch 4; {rank: (error, exit codes, writes)}."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("ddp")
    runs = [_argv(r, extra, 4, root / r) for r, extra in {**DETECTION, **OTHERS}.items()]
    runs.append(_argv(*PARTIAL_BATCH, 4, root / "partial-batch"))
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_worker, args=(2, _free_port(), runs, queue), nprocs=2, join=True, start_method="spawn")
    return root, {rank: rest for rank, *rest in (queue.get() for _ in range(2))}


def _losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in json.loads((run_dir / "train_log.json").read_text()) if "loss" in e]


def test_an_error_in_one_process_fails_every_process_with_its_message(two_processes):
    _, results = two_processes
    assert [results[r][0] for r in (0, 1)] == ["bad row on rank 1"] * 2


def test_every_recipe_runs_and_only_the_main_process_writes(two_processes):
    root, results = two_processes
    assert results[0][1] == results[1][1] == [0] * (len(DETECTION) + len(OTHERS) + 1)  # + partial-batch
    assert results[1][2] == []  # rank 1 wrote nothing
    for recipe in [*DETECTION, *OTHERS]:
        assert json.loads((root / recipe / "status.json").read_text()) == {"state": "complete"}
        # write_json writes .metrics.json.tmp, then renames it
        assert sum(w.endswith(f"{recipe}/.metrics.json.tmp") for w in results[0][2]) == 1
        assert not list((root / recipe).glob(".*.tmp"))


@pytest.mark.parametrize("recipe", list(DETECTION))
def test_two_processes_train_and_evaluate_like_one_with_the_same_global_batch(two_processes, tmp_path, recipe):
    """Per-step losses equal (rel 1e-4); base metrics and predictions (sharded evaluation of the same
    model on 5 rows: uneven shards) exactly equal; fine-tuned metrics equal."""
    root, _ = two_processes
    one, two = one_process(recipe, DETECTION[recipe], tmp_path / "one"), root / recipe
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-4) and len(_losses(one)) == 3
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    predictions = [json.loads((d / "predictions.json").read_text()) for d in (one, two)]
    assert metrics[0]["base"] == metrics[1]["base"] and metrics[0]["base"]["n"] == 5
    assert predictions[0]["base"] == predictions[1]["base"]
    assert metrics[1]["finetuned"] == pytest.approx(metrics[0]["finetuned"], abs=1e-6)


# --- launch settings: strategies, slurm --------------------------------------------------------

def test_zero3_fails_with_one_line(monkeypatch, capsys, tmp_path):
    err = refused(monkeypatch, capsys, tmp_path,
                  {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "r2-vision-only")
    assert "zero3 shards the weights" in err and "fsdp.yaml" in err


def test_slurm_script_builds_the_two_node_launch(tmp_path):
    """Under a faked 2-node allocation (scontrol on PATH prints the hosts) the dry run prints one srun
    that starts, per node, accelerate with the multi-node arguments taken from the Slurm variables."""
    import shlex
    import subprocess

    root = Path(__file__).resolve().parents[1]
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho gpu-node-07\necho gpu-node-08\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_NUM_NODES="2",
               SLURM_JOB_NODELIST="gpu-node-[07-08]", SLURM_GPUS_ON_NODE="4")
    out = subprocess.run([str(root / "scripts" / "train.slurm.sh"), "--dry-run", "--recipe", "r4-joint",
                          "--output-dir", "runs/r4 2x4"], env=env, capture_output=True, text=True, check=True).stdout
    summary, command = out.strip().splitlines()
    assert summary == "nodes: 2 x 4 GPU(s) = 8 processes; rendezvous gpu-node-07:29500"
    srun = shlex.split(command)
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"] and srun[4:6] == ["bash", "-c"]
    launch = shlex.split(srun[6])
    flags = dict(zip(launch[3::2], launch[4::2]))
    assert launch[1:3] == ["-m", "accelerate.commands.launch"]
    assert flags["--num_machines"] == "2" and flags["--num_processes"] == "8"
    assert flags["--main_process_ip"] == "gpu-node-07" and flags["--config_file"].endswith("configs/accelerate/ddp.yaml")
    assert launch[launch.index("--machine_rank") + 1] == "$SLURM_NODEID"  # expanded on each node
    assert launch[-4:] == ["--recipe", "r4-joint", "--output-dir", "runs/r4 2x4"]


def test_nproc_launches_processes_that_fail_together_with_one_line(tmp_path):
    """`--gpu cpu --nproc 2` through accelerate's launcher: a model path that only the launched
    processes open fails in both; one `error:` line (rank 0's), exit 2, no run directory."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(root / "scripts" / "train_recipe.py"), "--recipe", "r2-vision-only",
                             "--gpu", "cpu", "--nproc", "2", "--no-wandb", "--model", str(tmp_path / "no-model"),
                             "--output-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "no-model" in errors[0]
    assert not (tmp_path / "run").exists()


def test_a_partial_last_batch_trains_the_same_rows_in_one_process_and_two(two_processes, tmp_path):
    """train.drop_last: with 13 rows at a global batch of 8, both drop each epoch's 5 leftover rows;
    without it the 2 processes would fill their last batch with repeated rows (accelerate's
    even_batches) and train on other rows than one process (issue 31: step 8 of r2 off by 2.2e-2)."""
    root, _ = two_processes
    one = one_process(*PARTIAL_BATCH, tmp_path / "one")
    losses = _losses(one)
    assert len(losses) == 3 and _losses(root / "partial-batch") == pytest.approx(losses, rel=1e-4)
    one_epoch = [e for e in json.loads((one / "train_log.json").read_text()) if "epoch" in e and "loss" in e]
    assert [e["epoch"] for e in one_epoch] == [1.0, 2.0, 3.0]  # one full batch an epoch: 5 rows dropped
