"""`python scripts/train_recipe.py --recipe NAME [...]`: train and evaluate one recipe.
`python scripts/train_recipe.py --resume RUN_DIR`: continue an interrupted or failed run.

Exit codes (errors.py): 0 complete; 1 failed (diverged); 2 bad input (one line on stderr, nothing
trained); 130 / 143 interrupted by SIGINT / SIGTERM (a checkpoint saved, one line saying how to resume).
The parser and `main`; processes: training/launch.py; the run itself: training/run.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InputError, TrainingDiverged, exit_code
from .predict import OneLineParser

RECIPE_FLAGS = ("recipe", "model", "family", "dataset", "split", "epochs", "max_steps", "seed", "overrides",
                "overwrite", "nproc", "accelerate_config")
"""What --resume refuses (README: only --gpu and --no-wandb go with it): each changes the recipe or
the global batch (processes x batch), and a resumed run must equal the uninterrupted one."""
SHORTCUTS = {"model": "model.name_or_path", "family": "model.family", "dataset": "data.dataset",
             "split": "data.test_split", "epochs": "train.num_train_epochs", "max_steps": "train.max_steps",
             "seed": "seed"}


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


def check_flags(args: argparse.Namespace) -> None:
    """What argparse cannot say: training lengths, and the flags --resume cannot take."""
    if args.max_steps is not None and args.max_steps < 1:
        raise InputError(f"--max-steps {args.max_steps}: must be >= 1")
    if args.epochs is not None and not args.epochs > 0:
        raise InputError(f"--epochs {args.epochs:g}: must be positive")
    if args.parallel == "model" and args.nproc is not None:
        raise InputError(f"--parallel model with --nproc {args.nproc}: model parallel is one process spreading the "
                         "model over the GPUs; drop --nproc (or use --parallel data)")
    if args.resume is None:
        if not args.recipe:
            raise InputError("--recipe is required: pass a name from --list, e.g. --recipe r4-joint")
        return
    if args.resume is not True and args.output_dir is not None and Path(args.resume) != args.output_dir:
        raise InputError(f"--resume {args.resume} and --output-dir {args.output_dir}: name the run directory once")
    if args.resume is True and args.output_dir is None:
        raise InputError("--resume needs the run directory: --resume RUN_DIR (or --output-dir RUN_DIR --resume)")
    given = [f"--{flag.replace('_', '-')}" for flag in RECIPE_FLAGS if getattr(args, flag) not in (None, False, [])]
    given += ["--parallel model"] if args.parallel == "model" else []
    if given:
        raise InputError(f"--resume continues the run with its own config.yaml: drop {', '.join(given)}")


def main(argv: list[str] | None = None) -> int:
    """Flags, then the run. `--help`, `--list` and bad flags import no torch (they answer in well
    under 2 s); the run's modules load only once the flags are good."""
    from ..config import describe_recipes

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
        if args.list:
            print(describe_recipes())
            return 0
        check_flags(args)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_code(err)
    return train_from_flags(args, argv)


def train_from_flags(args: argparse.Namespace, argv: list[str]) -> int:
    from ..models.distributed import is_main_process
    from ..training.launch import train
    from ..training.preemption import Interrupted, signals_stop_the_run

    try:
        with signals_stop_the_run():
            result = train(request(args, argv))
    except (InputError, TrainingDiverged) as err:
        if is_main_process():  # every process fails together; one line
            print(f"error: {err}", file=sys.stderr)
        return exit_code(err)
    except Interrupted as err:
        if is_main_process():
            print(err.resume_line(), file=sys.stderr)
        return err.exit_code
    if isinstance(result, int):  # the exit code of the data-parallel processes this one launched
        return result
    if is_main_process():
        print(result.summary)
        print(f"\nrun directory: {result.run_dir}")
    return 0


def request(args: argparse.Namespace, argv: list[str]):
    """The training command the flags ask for (training/launch.py runs it). The flag shortcuts become
    `--set` items, before the explicit ones, which win."""
    from ..training.launch import Request

    shortcuts = [f"{key}={getattr(args, flag)}" for flag, key in SHORTCUTS.items() if getattr(args, flag) is not None]
    resume = args.resume is not None
    return Request(args.recipe, shortcuts + args.overrides, args.output_dir or (Path(args.resume) if resume else None),
                   resume, args.overwrite, not args.no_wandb, args.gpu, args.nproc, args.parallel,
                   args.accelerate_config, argv, command=rerun_command(args))


def rerun_command(args: argparse.Namespace) -> str:
    """The command that runs this again, as run_info.json records it: `vlm-recipes train`, then
    each flag given once with the value it took (a repeated flag's last), `--set` items in order."""
    import shlex

    words = ["vlm-recipes", "train"]
    for action in build_parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("help", "list") or value in (None, False, []):
            continue
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [w for item in value for w in (flag, str(item))]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


if __name__ == "__main__":
    sys.exit(main())
