"""`vlm-recipes SUBCOMMAND [ARGS...]`: the one command line of the package.

Each subcommand hands the rest of the command line to its module's `main(argv)`. Modules are
imported only when their subcommand runs, so `vlm-recipes --help` is fast (no torch) and lists
subcommands whose module is not installed yet.
"""

from __future__ import annotations

import importlib
import sys

from ..errors import EXIT_BAD_INPUT

# subcommand: (module holding main(argv), arguments put before the user's, one-line description)
COMMANDS = {
    "train": ("vlm_recipes.cli.train", [], "fine-tune a base model with a recipe and compare it with the base"),
    "list": ("vlm_recipes.cli.train", ["--list"], "list the recipes with one-line descriptions"),
    "compare": ("vlm_recipes.cli.compare", [], "gather runs' metrics.json into one leaderboard (markdown, CSV, chart)"),
    "report": ("vlm_recipes.cli.report", [], "write a run's report.html: failures, curves, a worst-first gallery"),
    "encode": ("vlm_recipes.cli.encode", [], "embed images/texts with an mrl model and search them with a query"),
    "predict": ("vlm_recipes.cli.predict", [], "run a trained model on images and print its answers"),
    "evaluate": ("vlm_recipes.cli.evaluate", [], "evaluate a trained model on a dataset"),
    "export": ("vlm_recipes.cli.export", [], "merge a run's adapter into a plain checkpoint"),
    "benchmark": ("vlm_recipes.cli.benchmark", [], "training, evaluation and encoding speed, side by side with TRL"),
    "build-base": ("vlm_recipes.cli.build_base", [], "build and pretrain the tiny base model(s) shipped in assets/"),
}


def help_text() -> str:
    lines = ["usage: vlm-recipes SUBCOMMAND [ARGS...]", "",
             "Recipe-driven fine-tuning of Qwen vision-language models.", "", "subcommands:"]
    lines += [f"  {name:12s}{description}" for name, (_, _, description) in COMMANDS.items()]
    lines += ["", "`vlm-recipes SUBCOMMAND --help` shows the options of a subcommand."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(help_text())
        return 0
    if not argv:
        print(help_text())
        print("error: missing SUBCOMMAND", file=sys.stderr)
        return EXIT_BAD_INPUT
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown subcommand {name!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module_name, prefix, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:  # a missing dependency of the module is a real error: show it
            raise
        print(f"error: `vlm-recipes {name}` is not available in this version ({module_name} is missing)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return module.main(prefix + rest)


if __name__ == "__main__":
    sys.exit(main())
