"""`python scripts/train_recipe.py --recipe NAME [...]`: train and evaluate one recipe.

Bad input ends with one line on stderr and exit code 2; a run that diverges ends with exit 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..errors import InputError, TrainingDiverged

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-recipes train", description="Fine-tune a Qwen-VL model with a named recipe "
                                "and compare it with its base model.")
    p.add_argument("--recipe", help="recipe name (see --list) or path to a recipe .yaml")
    p.add_argument("--list", action="store_true", help="list the recipes with one-line descriptions and exit")
    p.add_argument("--gpu", help="GPU ids such as 0,1 (sets CUDA_VISIBLE_DEVICES) or 'cpu'; "
                   "default: the visible GPUs, else the CPU")
    p.add_argument("--model", help="base model: 'tiny' (shipped), a hub id or a local checkpoint dir")
    p.add_argument("--family", help="qwen2-vl | qwen2.5-vl | qwen3-vl: which tiny base / box format")
    p.add_argument("--dataset", help="'synthetic', a hub id, a saved datasets dir or parquet file(s)")
    p.add_argument("--epochs", type=float, help="train.num_train_epochs for every stage")
    p.add_argument("--max-steps", type=int, help="train.max_steps for every stage (overrides epochs)")
    p.add_argument("--output-dir", type=Path, help="run directory (default: runs/<recipe>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="reuse an --output-dir that holds an earlier run")
    p.add_argument("--seed", type=int, help="random seed (data split, init, training order)")
    p.add_argument("--no-wandb", action="store_true", help="do not log to Weights & Biases (TensorBoard always)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe field, e.g. --set train.learning_rate=1e-4 "
                   "--set stages.0.lora.r=8 (stage keys without stages.N apply to every stage)")
    return p


def recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The flag shortcuts as `--set` items; explicit --set items come last and win."""
    items = []
    for flag, key in [("model", "model.name_or_path"), ("family", "model.family"), ("dataset", "data.dataset"),
                      ("epochs", "train.num_train_epochs"), ("max_steps", "train.max_steps"), ("seed", "seed")]:
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


def prepare_output_dir(path: Path | None, recipe_name: str, overwrite: bool) -> Path:
    if path is None:
        path = Path("runs") / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if path.exists() and not path.is_dir():
        raise InputError(f"--output-dir {path} is a file; pass a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise InputError(f"--output-dir {path} already holds files; pass --overwrite or another directory")
        shutil.rmtree(path)
    return path


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
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            print(list_recipes())
            return 0
        if not args.recipe:
            raise InputError("--recipe is required: pass a name from --list, e.g. --recipe r4-joint")
        device = select_device(args.gpu)
        from ..config import load_recipe
        from ..training.run import run_recipe

        recipe = load_recipe(args.recipe, recipe_overrides(args))
        run_dir = prepare_output_dir(args.output_dir, recipe.name, args.overwrite)
        report_to = setup_wandb(run_dir, not args.no_wandb)
        command = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
        result = run_recipe(recipe, run_dir, device=device, report_to=report_to, command=command)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(result.summary)
    print(f"\nrun directory: {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
