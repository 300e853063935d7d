#!/usr/bin/env python
"""Build and pretrain the tiny base model(s) that ship in src/vlm_recipes/assets/.

    python scripts/build_base_model.py                        # the shipped Qwen3-VL base, ~20 min on 2 CPU cores
    python scripts/build_base_model.py --family qwen2-vl      # a tiny base of another family
    python scripts/build_base_model.py --family all

Deterministic for a given seed and library versions. The result is a normal checkpoint
directory (weights, config, processor, tokenizer, chat template).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlm_recipes.config import ModelConfig  # noqa: E402
from vlm_recipes.families import FAMILIES, get_family  # noqa: E402
from vlm_recipes.models.loading import tiny_base_path  # noqa: E402
from vlm_recipes.models.pretrain import pretrain_base  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    args = p.parse_args(argv)
    families = list(FAMILIES.values()) if args.family == "all" else [get_family(args.family)]
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


if __name__ == "__main__":
    sys.exit(main())
