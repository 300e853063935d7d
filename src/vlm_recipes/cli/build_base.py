"""`vlm-recipes build-base [--family F] [...]`: build and pretrain the tiny base model(s) shipped in src/vlm_recipes/assets/.

    vlm-recipes build-base                        # the shipped Qwen3-VL base, ~20 min on 2 CPU cores
    vlm-recipes build-base --family qwen2-vl      # a tiny base of another family
    vlm-recipes build-base --family all

Deterministic for a given seed and library versions. The result is a normal checkpoint
directory (weights, config, processor, tokenizer, chat template).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from ..config import ModelConfig
from ..errors import InputError
from ..families import FAMILIES, get_family


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vlm-recipes build-base", description="Build and pretrain the tiny base "
                                "model(s) shipped in src/vlm_recipes/assets/.")
    p.add_argument("--family", default=ModelConfig.family,
                   help="qwen2-vl | qwen2.5-vl | qwen3-vl | all (default: the embedded default family)")
    p.add_argument("--samples", type=int, default=64000, help="generated pretraining samples (one epoch; 4,000 steps of 16)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--aux-weight", type=float, default=1.0,
                   help="weight of the dense grounding loss on the vision tokens (0: answer tokens only)")
    p.add_argument("--aliases", action=argparse.BooleanOptionalAction, default=True,
                   help="a quarter of prompts name the object by an alias that the answer repeats as its label, "
                        "so the base says names it is asked for (default on, as in the shipped base; "
                        "--no-aliases: the earlier closed-vocabulary base; DECISIONS D16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-steps", type=int, default=0, help="keep a checkpoint every N steps (for inspection)")
    p.add_argument("--out", type=Path, help="output directory (default: the shipped asset path)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        families = list(FAMILIES.values()) if args.family == "all" else [get_family(args.family)]
    except InputError as err:  # one line and exit 2, like the other subcommands
        print(f"error: {err}", file=sys.stderr)
        return 2
    # imported after parsing: they load torch, which --help and bad input do not need
    from ..models.loading import tiny_base_path
    from ..training.pretrain import pretrain_base

    for family in families:
        out = args.out or tiny_base_path(family)
        start = time.time()
        log = pretrain_base(family, out, args.samples, args.epochs, args.lr, seed=args.seed,
                            save_steps=args.save_steps, aux_weight=args.aux_weight, aliases=args.aliases)
        shutil.rmtree(out / "_trainer", ignore_errors=True)
        losses = [e["loss"] for e in log if "loss" in e]
        info = {"family": family.name, "samples": args.samples, "epochs": args.epochs, "lr": args.lr,
                "aux_weight": args.aux_weight, "aliases": args.aliases, "seed": args.seed, "seconds": round(time.time() - start),
                "first_loss": losses[0], "final_loss": losses[-1]}
        (out / "pretraining.json").write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info))
    return 0
