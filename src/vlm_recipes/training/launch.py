"""Processes: `train` runs one training command in this process, or starts it again as several
data-parallel processes (accelerate, torchrun underneath) and waits for them. Here: the device, the
process count, the launch strategy's checks (once), which process claims the run directory.
Every write to the environment the run's processes inherit is here (CUDA_VISIBLE_DEVICES, the
claimed run directory, threads, W&B); every read of the launcher's is in models/distributed.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config import load_recipe
from ..errors import EXIT_FAILED, InputError
from ..models.distributed import (
    CLAIMED_RUN_DIR,
    claimed_run_dir,
    fsdp_loads_on_cpu,
    init_processes,
    is_main_process,
    launch_strategy,
    launched,
    on_main,
)
from .preemption import Interrupted
from .run import RunResult, run_recipe
from .run_dir import RunDir, resumed_recipe


@dataclass(frozen=True)
class Request:
    """One training command (`vlm-recipes train`), as its flags say."""
    recipe: str | None
    """A recipe name or .yaml path; None with `resume`."""
    overrides: list[str]
    """`--set` items, the flag shortcuts first."""
    run_dir: Path | None
    """None: runs/<recipe>-<time>."""
    resume: bool = False
    overwrite: bool = False
    wandb: bool = True
    gpu: str | None = None
    nproc: int | None = None
    parallel: str = "data"
    accelerate_config: Path | None = None
    argv: list[str] = ()
    """The command's arguments, passed on to launched processes."""
    command: str = ""
    """The command line, saved in run_info.json."""


def train(request: Request) -> RunResult | int:
    """The run (a RunResult), or the exit code of the data-parallel processes launched for it. Bad
    input fails here, in this one process, before any launch."""
    plan = plan_launch(request.gpu, request.nproc, request.parallel, request.accelerate_config)
    if request.resume:
        recipe = resumed_recipe(request.run_dir)
    else:
        recipe = load_recipe(request.recipe, request.overrides)
    check_launch(plan, recipe)
    if plan.processes > 1:
        with RunDir.claim(default_run_dir(request.run_dir, recipe.name), request.overwrite, request.resume) as run_dir:
            return relaunch(list(request.argv), plan, run_dir)
    with run_directory(request.run_dir, recipe.name, request.overwrite, request.resume) as run_dir:
        try:
            return run_recipe(recipe, run_dir, plan.device, reporting(run_dir.path, request.wandb), request.command)
        except Interrupted as err:
            raise err.within(run_dir=run_dir.path) from err  # for the line saying how to resume


@dataclass(frozen=True)
class Launch:
    device: str
    """"cpu" or "cuda" (CUDA_VISIBLE_DEVICES already set from --gpu)."""
    processes: int
    """Data-parallel processes to start; 1: this process runs alone, or was started as one of several."""
    accelerate_config: Path | None = None


def plan_launch(gpu: str | None, nproc: int | None, parallel: str, accelerate_config: Path | None) -> Launch:
    """Device and process count from the flags; opens the process group when launched as one of several.
    A refused strategy fails first, before the recipe loads (loading builds TrainingArguments, which set
    DeepSpeed/FSDP up)."""
    check_strategy()
    device = select_device(gpu)
    processes = 1 if launched() else process_count(nproc, parallel, device)
    init_processes(device)
    return Launch(device, processes, accelerate_config)


def check_launch(launch: Launch, recipe) -> None:
    """What the strategy and the accelerate config cannot do with this recipe, once it is loaded."""
    check_strategy(recipe)
    if not launched():
        check_accelerate_config(launch.accelerate_config, launch.device, launch.processes)


def select_device(gpu: str | None) -> str:
    """Set CUDA_VISIBLE_DEVICES from --gpu (before CUDA starts) and return "cpu" or "cuda"."""
    if gpu is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if gpu.strip().lower() == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        return "cpu"
    ids = [part.strip() for part in gpu.split(",")]
    if not all(i.isdigit() for i in ids):
        raise InputError(f"--gpu {gpu!r}: expected GPU ids like 0 or 0,1, or 'cpu'")
    count = physical_gpu_count()
    missing = [i for i in ids if int(i) >= count]
    if missing:
        raise InputError(f"--gpu {gpu!r}: GPU {missing[0]} does not exist (this machine has {count} GPU"
                         f"{'s' if count != 1 else ''}); use ids below {count} or --gpu cpu")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    return "cuda"


def physical_gpu_count() -> int:
    # Asked of nvidia-smi, not torch: torch caches its count before CUDA_VISIBLE_DEVICES is set.
    if shutil.which("nvidia-smi") is None:
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def process_count(nproc: int | None, parallel: str, device: str) -> int:
    """How many data-parallel processes --nproc / --parallel ask for (1: this process runs alone)."""
    if nproc is not None and nproc < 1:
        raise InputError(f"--nproc {nproc}: give 1 or more processes")
    if device == "cpu":
        return nproc or 1
    import torch

    gpus = torch.cuda.device_count()  # CUDA_VISIBLE_DEVICES is set: the listed GPUs
    if parallel == "model":
        if (nproc or 1) > 1:
            raise InputError("--parallel model runs one process over all the GPUs; drop --nproc or use --parallel data")
        return 1
    if nproc is not None and nproc != gpus:
        raise InputError(f"--nproc {nproc} with {gpus} GPU(s): data parallel runs one process per GPU; "
                         f"list {nproc} GPUs with --gpu")
    return gpus


def check_strategy(recipe=None) -> None:
    """Fail with one line where the launch strategy cannot run the recipe (README "Several GPUs and
    nodes", DECISIONS D20, D27). Without the recipe: the checks that need none."""
    strategy = launch_strategy()
    if strategy == "zero3":
        raise InputError("zero3 shards the weights, and a run evaluates and saves the whole model in every process, "
                         "which under DeepSpeed would need its parameter gathering (not built): launch with "
                         "configs/accelerate/fsdp.yaml (the same sharding, supported), zero2.yaml or ddp.yaml")
    if recipe is not None and fsdp_loads_on_cpu():
        grpo = [s.name for s in recipe.stages if recipe.objective_for(s).name == "grpo"]
        if grpo:
            raise InputError(f"stage {grpo[0]!r} (GRPO) with fsdp_cpu_ram_efficient_loading: true: TRL then builds its "
                             "reference adapter on the meta device outside the main process; set "
                             "fsdp_cpu_ram_efficient_loading: false (configs/accelerate/fsdp.yaml does)")
    if strategy == "zero2" and recipe is not None and getattr(recipe.objective.options, "grad_cache_chunk", 0) > 0:
        raise InputError("zero2: DeepSpeed steps the optimizer inside every backward, and GradCache "
                         "(objective.options.grad_cache_chunk) runs several backward passes a step: use "
                         "configs/accelerate/ddp.yaml or fsdp.yaml, or grad_cache_chunk=0")


def check_accelerate_config(config: Path | None, device: str, nproc: int) -> None:
    if config is None:
        return
    if not config.is_file():
        raise InputError(f"--accelerate-config {config}: no such file; use one of configs/accelerate/*.yaml")
    if device == "cpu":
        raise InputError(f"--accelerate-config {config} on the CPU (--gpu cpu, or no GPU visible): accelerate runs "
                         "FSDP and DeepSpeed on GPUs only "
                         "(a CPU launch would silently be plain data parallel); drop the flag")
    if nproc < 2:
        raise InputError(f"--accelerate-config {config}: one process; list several GPUs with --gpu, e.g. --gpu 0,1")


def relaunch(argv: list[str], launch: Launch, run_dir: RunDir) -> int:
    """This command again as `launch.processes` data-parallel processes writing `run_dir`, whose
    lock this process holds for them; returns their exit code."""
    os.environ[CLAIMED_RUN_DIR] = str(run_dir.path)  # the processes inherit the claim
    try:
        return launch_data_parallel(argv, launch.processes, run_dir.path, launch.device, launch.accelerate_config)
    finally:  # this process may start other runs (tests, notebooks): the claim ends here
        del os.environ[CLAIMED_RUN_DIR]


def launch_data_parallel(argv: list[str], nproc: int, run_dir: Path, device: str, config: Path | None = None) -> int:
    """Run this command again as `nproc` data-parallel processes through accelerate's launcher
    (torchrun underneath), plain DDP or as `config` (an accelerate config file) says; returns their
    exit code. The processes print their own one-line error."""
    import logging
    import socket

    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    with socket.socket() as sock:  # a free port for the rendezvous, so two runs can share a machine
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if device == "cpu":  # torchrun would give each process 1 thread; share the cores instead
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # plain DDP: the recipe decides the precision (Trainer passes it on); a config file says its own
    strategy = ["--config_file", str(config)] if config else ["--multi_gpu", "--mixed_precision", "no"]
    launch = launch_command_parser().parse_args(
        [*strategy, "--num_processes", str(nproc), "--num_machines", "1", "--dynamo_backend", "no",
         "--main_process_port", str(port), "--module", "vlm_recipes.cli.train", *argv, "--output-dir", str(run_dir)])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the children said why
    try:
        launch_command(launch)
    except ChildFailedError as err:
        # a process the agent stopped after another one failed exits by signal: report the real error's code
        codes = [failure.exitcode for _, failure in sorted(err.failures.items())]
        return next((code for code in codes if 0 < code < 128), EXIT_FAILED)
    return 0


def default_run_dir(path: Path | None, recipe_name: str) -> Path:
    return path or Path("runs") / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"


@contextmanager
def run_directory(path: Path | None, recipe_name: str, overwrite: bool, resume: bool) -> Iterator[RunDir]:
    """The run directory every process of the run uses (only the main one writes): claimed once,
    by this process, by rank 0 of a torchrun/accelerate job, or by the launcher that started us."""
    claimed = claimed_run_dir()
    if claimed is not None:
        yield RunDir(claimed, resume, replaces=overwrite)  # the launcher checked it is a run
        return
    with ExitStack() as held:
        def claim() -> RunDir:  # the lock is held until the run ends
            return held.enter_context(RunDir.claim(default_run_dir(path, recipe_name), overwrite, resume))

        yield on_main(claim) if launched() else claim()


def reporting(run_dir: Path, wandb: bool) -> list[str]:
    """Where the Trainer reports: TensorBoard always, W&B unless --no-wandb (offline without credentials)."""
    report_to = ["tensorboard"]
    if wandb:
        # without credentials, log offline (sync later with `wandb sync`); never prompt
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_PROJECT", "vlm-recipes")
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        report_to.append("wandb")
        if os.environ.get("WANDB_MODE") == "offline" and is_main_process():
            where = Path(os.environ["WANDB_DIR"]) / "wandb"
            print(f"W&B: offline (no WANDB_API_KEY), logging to {where}/offline-run-*; upload later with "
                  f"`wandb sync {where}/offline-run-*` (or pass --no-wandb)", file=sys.stderr)
    return report_to
