"""`python scripts/train_recipe.py --recipe NAME [...]`: train and evaluate one recipe.
`python scripts/train_recipe.py --resume RUN_DIR`: continue an interrupted or failed run.

Exit codes: 0 complete; 1 the run failed (diverged); 2 bad input (one line on stderr, nothing
trained); 130 / 143 interrupted by SIGINT / SIGTERM (a checkpoint saved, one line saying how to resume).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from ..errors import InputError, TrainingDiverged
from .predict import OneLineParser

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="vlm-recipes train", description="Fine-tune a Qwen-VL model with a named recipe "
                                "and compare it with its base model.")
    p.add_argument("--recipe", help="recipe name (see --list) or path to a recipe .yaml")
    p.add_argument("--list", action="store_true", help="list the recipes with one-line descriptions and exit")
    p.add_argument("--gpu", help="GPU ids such as 0,1 (sets CUDA_VISIBLE_DEVICES; several: one data-parallel "
                   "process per GPU) or 'cpu'; default: the visible GPUs, else the CPU")
    p.add_argument("--nproc", type=int, help="data-parallel processes; with --gpu cpu N processes (gloo), "
                   "with GPUs one per GPU (the default)")
    p.add_argument("--parallel", choices=["data", "model"], default="data",
                   help="several GPUs: 'data' (default) one process and whole model per GPU; 'model' one "
                   "process, the model spread over the GPUs (device_map=balanced) for a model too big for one")
    p.add_argument("--accelerate-config", type=Path, metavar="FILE",
                   help="several GPUs: start the data-parallel processes with this accelerate config, e.g. "
                   "configs/accelerate/fsdp.yaml (FSDP2) or zero2.yaml; default: plain DDP")
    p.add_argument("--model", help="base model: 'tiny' (shipped), a hub id or a local checkpoint dir")
    p.add_argument("--family", help="qwen2-vl | qwen2.5-vl | qwen3-vl: which tiny base / box format")
    p.add_argument("--dataset", help="'synthetic', 'synthetic-multi', 'synthetic-refer', a hub id, a saved datasets dir, "
                   "parquet or JSON Lines file(s), a COCO/Roboflow directory (README: Bring your own data)")
    p.add_argument("--split", help="the split scored (data.test_split), e.g. testA of RefCOCO")
    p.add_argument("--epochs", type=float, help="train.num_train_epochs for every stage")
    p.add_argument("--max-steps", type=int, help="train.max_steps for every stage (overrides epochs)")
    p.add_argument("--output-dir", type=Path, help="run directory (default: runs/<recipe>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="reuse an --output-dir that holds an earlier run")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                   help="continue the interrupted or failed run in RUN_DIR (or in --output-dir) from its latest "
                   "checkpoint, with its own config.yaml")
    p.add_argument("--seed", type=int, help="random seed (data split, init, training order)")
    p.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases (TensorBoard always)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field, e.g. --set train.learning_rate=1e-4 "
                   "--set stages.0.lora.r=8 (stage keys without stages.N apply to every stage)")
    return p


RECIPE_FLAGS = ("recipe", "model", "family", "dataset", "split", "epochs", "max_steps", "seed", "overrides", "overwrite")


def check_flags(args: argparse.Namespace) -> None:
    """What argparse cannot say: training lengths, and the flags --resume cannot take."""
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max-steps {args.max_steps}: must be >= 1")
    if args.epochs is not None and not args.epochs > 0:
        raise InputError(f"--epochs {args.epochs:g}: must be positive")
    if args.resume is None:
        if not args.recipe:
            raise InputError("--recipe is required: pass a name from --list, e.g. --recipe r4-joint")
        return
    if args.resume is not True and args.output_dir is not None and Path(args.resume) != args.output_dir:
        raise InputError(f"--resume {args.resume} and --output-dir {args.output_dir}: name the run directory once")
    if args.resume is True and args.output_dir is None:
        raise InputError("--resume needs the run directory: --resume RUN_DIR (or --output-dir RUN_DIR --resume)")
    given = [f"--{flag.replace('_', '-')}" for flag in RECIPE_FLAGS if getattr(args, flag) not in (None, False, [])]
    if given:
        raise InputError(f"--resume continues the run with its own config.yaml: drop {', '.join(given)}")


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The flag shortcuts as `--set` items; explicit --set items come last and win."""
    items = []
    for flag, key in [("model", "model.name_or_path"), ("family", "model.family"), ("dataset", "data.dataset"),
                      ("split", "data.test_split"), ("epochs", "train.num_train_epochs"), ("max_steps", "train.max_steps"), ("seed", "seed")]:
        value = getattr(args, flag)
        if value is not None:
            items.append(f"{key}={value}")
    return items + args.overrides


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


def process_count(args: argparse.Namespace, device: str) -> int:
    """How many data-parallel processes the flags ask for (1: this process runs alone)."""
    if args.nproc is not None and args.nproc < 1:
        raise InputError(f"--nproc {args.nproc}: give 1 or more processes")
    if device == "cpu":
        return args.nproc or 1
    import torch

    gpus = torch.cuda.device_count()  # CUDA_VISIBLE_DEVICES is set: the listed GPUs
    if args.parallel == "model":
        if (args.nproc or 1) > 1:
            raise InputError("--parallel model runs one process over all the GPUs; drop --nproc or use --parallel data")
        return 1
    if args.nproc is not None and args.nproc != gpus:
        raise InputError(f"--nproc {args.nproc} with {gpus} GPU(s): data parallel runs one process per GPU; "
                         f"list {args.nproc} GPUs with --gpu")
    return gpus


def check_strategy(recipe=None) -> None:
    """Fail with one line where the launch strategy cannot run the recipe (README "Several GPUs and
    nodes", DECISIONS D20, D27). Called first without the recipe: a refused launch fails before the
    recipe loads (loading builds TrainingArguments, which set DeepSpeed/FSDP up)."""
    from ..models.distributed import launch_strategy

    strategy = launch_strategy()
    if strategy == "zero3":
        raise InputError("zero3 shards the weights, and a run evaluates and saves the whole model in every process, "
                         "which under DeepSpeed would need its parameter gathering (not built): launch with "
                         "configs/accelerate/fsdp.yaml (the same sharding, supported), zero2.yaml or ddp.yaml")
    if strategy == "fsdp" and recipe is not None and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING") == "true":
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
        raise InputError(f"--accelerate-config {config} with --gpu cpu: accelerate runs FSDP and DeepSpeed on GPUs only "
                         "(a CPU launch would silently be plain data parallel); drop the flag")
    if nproc < 2:
        raise InputError(f"--accelerate-config {config}: one process; list several GPUs with --gpu, e.g. --gpu 0,1")


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


@contextmanager
def claimed_output_dir(path: Path | None, recipe_name: str, overwrite: bool, resume: bool):
    """The run directory, created if needed and locked (run.lock) before any data loads; released on
    the way out, and removed again if it was created here and nothing was written into it."""
    from ..training.run import acquire_lock, release_lock

    path = path or Path("runs") / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise InputError(f"--output-dir {path} is a file; pass a directory")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        note = acquire_lock(path)  # also the writability check
    except OSError as err:
        raise InputError(f"--output-dir {path} is not writable ({err.strerror or err}): pass a directory you can "
                         "write to") from None
    try:
        if note:
            print(note, file=sys.stderr)
        clear_for_run(path, overwrite, resume)
        yield path
    finally:
        release_lock(path)
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def clear_for_run(path: Path, overwrite: bool, resume: bool) -> None:
    """Under the lock: a resume needs an unfinished run there; a new run needs the directory empty,
    or --overwrite, which deletes what is there (never a directory another process holds)."""
    from ..training.run import LOCK_FILE, read_json

    earlier = [p for p in path.iterdir() if p.name != LOCK_FILE]
    if resume:
        state = read_json(path / "status.json", {}).get("state")
        if state is None or not (path / "config.yaml").is_file():
            raise InputError(f"--resume {path}: not a run directory (no status.json and config.yaml): nothing to resume")
        if state == "complete":
            raise InputError(f"--resume {path}: the run is already complete")
        return
    if earlier and not overwrite:
        raise InputError(f"--output-dir {path} already holds files; pass --overwrite, --resume, or another directory")
    for item in earlier:
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


def setup_wandb(run_dir: Path, enabled: bool) -> list[str]:
    report_to = ["tensorboard"]
    if enabled:
        # without credentials, log offline (sync later with `wandb sync`); never prompt
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_PROJECT", "vlm-recipes")
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        report_to.append("wandb")
    return report_to


def list_recipes() -> str:
    from ..config import available_recipes, load_recipe

    lines = []
    for name in available_recipes():
        lines.append(f"{name:16s} {load_recipe(name).description}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..models.distributed import is_main_process
    from ..training.preemption import Interrupted, signals_stop_the_run

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.list:
            print(list_recipes())
            return 0
        check_flags(args)
        with signals_stop_the_run():
            result = train(args, argv)
    except (InputError, TrainingDiverged) as err:
        if is_main_process():  # every process fails together; one line
            print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(err, InputError) else EXIT_FAILED
    except Interrupted as err:
        if is_main_process():
            print(interrupted_line(err), file=sys.stderr)
        return err.exit_code
    if isinstance(result, int):  # the exit code of the data-parallel processes this one launched
        return result
    if is_main_process():
        print(result.summary)
        print(f"\nrun directory: {result.run_dir}")
    return 0


def train(args: argparse.Namespace, argv: list[str]):
    """The run (a RunResult), or the exit code of the data-parallel processes launched for it."""
    from ..models.distributed import init_processes, launched

    check_strategy()
    device = select_device(args.gpu)
    nproc = 1 if launched() else process_count(args, device)
    init_processes(device)
    from ..config import load_recipe
    from ..training.preemption import Interrupted
    from ..training.run import run_recipe

    resume = args.resume is not None
    run_dir = args.output_dir or (Path(args.resume) if resume else None)
    if resume and not (run_dir / "config.yaml").is_file():
        raise InputError(f"--resume {run_dir}: not a run directory (no config.yaml): nothing to resume")
    recipe = load_recipe(str(run_dir / "config.yaml")) if resume else load_recipe(args.recipe, recipe_overrides(args))
    check_strategy(recipe)
    if not launched():
        check_accelerate_config(args.accelerate_config, device, nproc)
    if nproc > 1:  # bad input has failed above, in this one process, before any launch
        with claimed_output_dir(run_dir, recipe.name, args.overwrite, resume) as run_dir:
            os.environ[CLAIMED_BY_LAUNCHER] = str(run_dir)  # the processes inherit the claim
            try:
                return launch_data_parallel(argv, nproc, run_dir, device, args.accelerate_config)
            finally:  # this process may start other runs (tests, notebooks): the claim ends here
                del os.environ[CLAIMED_BY_LAUNCHER]
    with run_directory(run_dir, recipe.name, args.overwrite, resume) as run_dir:
        report_to = setup_wandb(run_dir, not args.no_wandb)
        command = " ".join([Path(sys.argv[0]).name, *argv])
        try:
            return run_recipe(recipe, run_dir, device=device, report_to=report_to, command=command, resume=resume)
        except Interrupted as err:
            err.run_dir = run_dir  # for the line saying how to resume
            raise


CLAIMED_BY_LAUNCHER = "VLM_RECIPES_CLAIMED_RUN_DIR"
"""Set by the `--gpu 0,1` / `--nproc` launcher, which holds the run directory's lock for the whole job."""


@contextmanager
def run_directory(path: Path | None, recipe_name: str, overwrite: bool, resume: bool):
    """The run directory every process of the run uses (only the main one writes): claimed once,
    by this process, by rank 0 of a torchrun/accelerate job, or by the launcher that started us."""
    from ..models.distributed import launched, on_main

    if os.environ.get(CLAIMED_BY_LAUNCHER):
        yield Path(os.environ[CLAIMED_BY_LAUNCHER])
        return
    with ExitStack() as held:
        def claim() -> Path:  # the lock is held until the run ends
            return held.enter_context(claimed_output_dir(path, recipe_name, overwrite, resume))

        yield on_main(claim) if launched() else claim()


def interrupted_line(err) -> str:
    """One line: what stopped, where, and the command that continues it."""
    run_dir = getattr(err, "run_dir", None)
    what = str(err)  # "interrupted by SIGTERM"
    if run_dir is None or not (run_dir / "status.json").is_file():
        return f"{what} before the run started: nothing to resume, start it again"
    where = f"{err.stage} at step {err.step}, checkpoint saved" if err.step is not None else err.stage or "loading"
    return f"{what} ({where}); resume with: vlm-recipes train --resume {run_dir}"


if __name__ == "__main__":
    sys.exit(main())
