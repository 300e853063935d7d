"""`vlm-recipes benchmark [--recipes r1-llm-only] [--steps N] [--repeats R] [--device cpu|cuda] [--smoke]`.

Measures, side by side in one process, the project's SFT training against TRL's SFTTrainer, batched
against one-at-a-time evaluation, and the mrl encoder against a plain forward
(`vlm_recipes.benchmark`). Prints a markdown table and writes the figures to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .predict import OneLineParser, run_main

MODES = ("padded", "padding_free", "packed", "group_by_length")
SMOKE = {"modes": "padded,packed", "steps": 4, "repeats": 1, "warmup": 1, "eval_images": 4, "encode_images": 8}
SMOKE_NOTE = ("--smoke: every measurement ran, on 4 steps, 1 repeat and 4-8 images; these figures mean nothing "
              "(run without --smoke to measure)")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="vlm-recipes benchmark", description=(
        "Training throughput and memory (project vs TRL SFTTrainer), evaluation speed (batched vs one image "
        "at a time) and mrl encoding speed, measured side by side in one process."))
    p.add_argument("--recipes", help="comma-separated recipes whose first stage is trained (default r1-llm-only; "
                   "with --config real-size r1-llm-only,r4-joint,mrl)")
    p.add_argument("--config", choices=["tiny", "real-size"], default="tiny", help="tiny: the side-by-side "
                   "comparisons on --model; real-size: throughput, MFU and memory of randomly initialised "
                   "real-size architectures (no download; for a GPU)")
    p.add_argument("--real-models", default="qwen2-vl-2b,qwen2.5-vl-3b,qwen2-vl-7b",
                   help="--config real-size: which architectures (default all three)")
    p.add_argument("--image-side", type=int, default=448, help="--config real-size: image side in px (default 448)")
    p.add_argument("--batch-size", type=int, default=4, help="--config real-size: samples per step (default 4)")
    p.add_argument("--model", default="tiny", help="base model: 'tiny' (shipped), a hub id or a local checkpoint")
    p.add_argument("--steps", type=int, default=32, help="training steps per measurement (default 32)")
    p.add_argument("--warmup", type=int, default=4, help="steps left out of the timing (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per row; the median is reported (default 3)")
    p.add_argument("--eval-images", type=int, default=64, help="test images generated for (default 64)")
    p.add_argument("--encode-images", type=int, default=256, help="images the mrl encoder embeds (default 256)")
    p.add_argument("--data", choices=["default", "variable"], default="default", help="training rows: the "
                   "recipe's own, or the same rows with image sizes spread like photos under the pixel budget "
                   "(area log-uniform in 32,768-655,360 px, i.e. 32-640 image tokens, set as model.min/max_pixels; aspect "
                   "1:2 to 2:1; benchmark.VARIABLE_SIZES)")
    p.add_argument("--modes", help="the project's batching rows, comma-separated (train.packing / "
                   f"train.group_by_length): default {','.join(MODES)}; --smoke: padded,packed")
    p.add_argument("--train-only", action="store_true", help="skip the evaluation and encoding measurements")
    p.add_argument("--no-memory", action="store_true", help="on CPU, skip the peak-RSS probes (a fresh process "
                   "that trains again per row; halves the run time)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-4bit", action="store_true", help="train without the recipe's 4-bit quantization")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field, as "
                   "for `train` (e.g. stages.0.lora.dropout=0.05)")
    p.add_argument("--smoke", action="store_true", help="a minute-long run of every measurement (checks that "
                   "the benchmark works; its figures mean nothing)")
    p.add_argument("--out", type=Path, default=Path("benchmark.json"), help="JSON output (default benchmark.json)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


def check_args(args) -> None:
    """--smoke's settings applied, then the counts and the device checked (one line each)."""
    from ..errors import InputError

    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, getattr(args, key, None) if key == "modes" and args.modes else value)
    for name in ("steps", "repeats", "eval_images", "encode_images"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if not 0 <= args.warmup < args.steps - 1:
        raise InputError(f"--warmup {args.warmup}: must be >= 0 and leave at least 2 timed steps of --steps {args.steps}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is visible; use --device cpu")


def run(args) -> int:
    from .. import benchmark as bench
    from ..config import load_recipe
    from ..errors import InputError

    check_args(args)
    if args.config == "real-size":
        return run_real_size(args)
    modes = tuple(m for m in (args.modes or ",".join(MODES)).split(",") if m)
    unknown = [m for m in modes if m not in bench.BATCHING]
    if unknown or not modes:
        raise InputError(f"--modes {args.modes}: choose from {', '.join(bench.BATCHING)}")
    result = {"env": bench.environment(args.device), "train": {}}
    for name in [n for n in (args.recipes or "r1-llm-only").split(",") if n]:
        overrides = recipe_overrides(args, name)
        recipe = load_recipe(name, overrides)
        if recipe.objective.name != "sft":
            raise InputError(f"--recipes {name}: objective {recipe.objective.name}; the training comparison with "
                             "TRL's SFTTrainer needs an SFT recipe (r1-llm-only ... r4-joint)")
        result["train"][name] = bench.benchmark_training(name, overrides, args.steps, args.repeats, args.device,
                                                         args.warmup, trl_defaults_row=not args.smoke,
                                                         modes=modes, data=args.data, cpu_memory=not args.no_memory)
    if args.train_only:
        return write_result(args, result)
    eval_recipe = load_recipe("r4-joint", recipe_overrides(args, "r4-joint")
                              + [f"data.num_test={args.eval_images}", "data.num_train=1"])  # test rows only
    result["eval"] = bench.benchmark_evaluation(eval_recipe, args.eval_images, args.device, args.repeats)
    result["encode"] = bench.benchmark_encoding(args.encode_images, args.device, args.repeats, args.model)
    return write_result(args, result)


def write_result(args, result: dict) -> int:
    first = next(iter(result["train"].values()), None)
    if first is not None:  # the keys a reader looks for first, at the top level
        result["train"].update({k: first[k] for k in ("project", "trl_sft", "ratio", "loss_rel_diff")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        result["smoke"] = SMOKE_NOTE
    args.out.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"\nwritten: {args.out}")
    if args.smoke:
        print(f"\n{SMOKE_NOTE}")
    return 0


def run_real_size(args) -> int:
    from .. import benchmark as bench
    from ..errors import InputError
    from ..models.real_size import REAL_SIZE, real_size_config

    models = [m for m in args.real_models.split(",") if m]
    unknown = [m for m in models if m not in REAL_SIZE]
    if unknown:
        raise InputError(f"--real-models {','.join(unknown)}: unknown; choose from {', '.join(REAL_SIZE)}")
    if args.image_side < 56 or args.batch_size < 1:
        raise InputError(f"--image-side {args.image_side} / --batch-size {args.batch_size}: need >= 56 px and >= 1")
    recipes = [r for r in (args.recipes or ",".join(bench.REAL_SIZE_RECIPES)).split(",") if r]
    result = {"env": bench.environment(args.device), "real_size": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in models:
        result["real_size"][name] = bench.benchmark_real_size(
            real_size_config(name), recipes, args.steps, args.warmup, args.device, args.batch_size, args.image_side)
        args.out.write_text(json.dumps(result, indent=2))  # a later model running out of memory keeps these
    print(real_size_report(result))
    print(f"\nwritten: {args.out}")
    return 0


def real_size_report(result: dict) -> str:
    lines = [f"Real-size architectures, random weights, on {result['env'].get('gpu', result['env']['device'])}", "",
             "| model | recipe | samples/s | s/step | LLM tok/s | peak MB | MFU | trainable |", "|---|---|---|---|---|---|---|---|"]
    for model, rows in result["real_size"].items():
        for recipe, r in rows.items():
            if not isinstance(r, dict):
                continue
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
            peak = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] else "n/a"
            lines.append(f"| {model} | {recipe} | {r['samples_per_s']:.2f} | {r['s_per_step']:.3f} | "
                         f"{r['llm_tokens_per_s']:.0f} | {peak} | {mfu} | {r['trainable_params']:,} |")
    return "\n".join(lines)


def recipe_overrides(args, name: str) -> list[str]:
    overrides = [f"model.name_or_path={args.model}"] + list(args.set)
    if args.no_4bit:
        overrides.append("quantization.load_in_4bit=false")
    if args.smoke:
        overrides += ["data.num_train=32", "data.num_test=4"]
    return overrides


def report(result: dict) -> str:
    """The markdown tables README's Performance section shows."""
    lines = [f"Benchmark on {result['env']['device']} ({result['env']['threads']} threads), "
             f"torch {result['env']['torch']}, transformers {result['env']['transformers']}, trl {result['env']['trl']}", "",
             "| recipe | data | trainer | samples/s (min-max) | s/step | real tok/s | pad fraction | collate s/step "
             "| peak MB | final loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["train"].items():
        if not isinstance(r, dict) or "project" not in r or name in ("project", "trl_sft"):
            continue
        rows = [(f"project, {mode}", m) for mode, m in r.get("project_modes", {"padded": r["project"]}).items()]
        rows.append(("TRL SFTTrainer (same masks)", r["trl_sft"]))
        if "trl_sft_defaults" in r:
            rows.append(("TRL SFTTrainer, its defaults", r["trl_sft_defaults"]))
        for who, m in rows:
            spread = f" ({m['samples_per_s_min']:.1f}-{m['samples_per_s_max']:.1f})" if "samples_per_s_min" in m else ""
            lines.append(f"| {name} | {r.get('data', 'default')} | {who} | {m['samples_per_s']:.1f}{spread} | "
                         f"{m['s_per_step']:.3f} | {m['real_tokens_per_s']:.0f} | {m['pad_fraction']:.1%} | "
                         f"{m['collate_s_per_step']:.3f} | {m['peak_mem_mb']:.0f} | {m['final_loss']:.4f} |")
        lines.append(f"\n{name}: project / TRL = **{r['ratio']:.2f}x** "
                     f"({next(iter(r.get('project_modes', {'padded': 0})))}); best project row ({r.get('best_mode', 'padded')}) / TRL = "
                     f"**{r.get('ratio_best', r['ratio']):.2f}x** (final-loss relative difference to TRL "
                     f"{r.get('project_modes', {}).get(r.get('best_mode'), r)['loss_rel_diff']:.1e})\n")
    if "eval" not in result:
        return "\n".join(lines)
    e, c = result["eval"], result["encode"]
    lines += ["| evaluation | answers/s |", "|---|---|",
              f"| batched ({e['batch_size']} per generate) | {e['batched_answers_per_s']:.1f} |",
              f"| one image at a time | {e['single_answers_per_s']:.1f} |",
              f"\nbatched / single = **{e['ratio']:.1f}x** on {e['images']} images; identical answers: "
              f"{e['identical_answers']} ({e['identical_fraction']:.0%})\n",
              "| mrl encoding | images/s |", "|---|---|",
              f"| project encoder | {c['project_items_per_s']:.1f} |",
              f"| plain forward + pooling | {c['plain_items_per_s']:.1f} |",
              f"\nproject / plain = **{c['ratio']:.2f}x**; largest embedding difference {c['max_abs_diff']:.1e}"]
    return "\n".join(lines)
