"""`vlm-recipes predict --model RUN/model --images FILES_OR_DIRS... [--out DIR] [--draw]`: boxes for images.

One JSON line per image (`api.predict`'s dict, every box of the answer under "boxes"): printed, or
written to DIR/predictions.jsonl with --out; --draw also writes each image with all its boxes to
DIR/drawn/<name>.png. Works for a run's
adapter or full weights, an exported checkpoint and a base model ("tiny", hub id, directory).

Also the shared plumbing of the use-a-model commands (predict, evaluate, export): a parser whose
errors are one line, and `run_main`, which turns an InputError into one line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EXIT_BAD_INPUT, InputError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is an InputError (one `error: ...` line, exit 2, no usage block),
    like every other bad input."""

    def error(self, message: str):
        raise InputError(f"{message} (see --help)")


def run_main(parser: argparse.ArgumentParser, run, argv: list[str] | None) -> int:
    """`run(parsed args)`; an InputError anywhere, parsing included, is one line on stderr and exit 2."""
    try:
        return run(parser.parse_args(argv))
    except InputError as err:
        print(f"error: {err}".replace("\n", " "), file=sys.stderr)
        return EXIT_BAD_INPUT


def model_parser(command: str, description: str,
                 model_help: str = "a run's model/ (or run dir), an exported checkpoint, a checkpoint dir, "
                                   "a hub id or 'tiny'") -> OneLineParser:
    """The parser of `vlm-recipes COMMAND` with the flags every use-a-model command has."""
    p = OneLineParser(prog=f"vlm-recipes {command}", description=description)
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = model_parser("predict", "Run a trained model on images: one JSON line per image with every box of its "
                     "answer (pixels and OpenFoodFacts-normalised), labels, confidence and answer.")
    p.add_argument("--images", nargs="+", required=True, help="image files or directories (searched recursively)")
    p.add_argument("--out", type=Path, help="write DIR/predictions.jsonl instead of printing the lines")
    p.add_argument("--draw", action="store_true", help="also write DIR/drawn/<name>.png with every box (needs --out)")
    p.add_argument("--prompt", help="the question asked, e.g. 'Detect every nutrition table.' or a referring "
                   "expression (default: the run's data.prompt)")
    p.add_argument("--label", help="the name given to found boxes (default: the run's data.label)")
    p.add_argument("--batch-size", type=int, default=16, help="images per generate call (default 16)")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the run's eval.max_new_tokens)")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


def run(args) -> int:
    from .. import api

    if args.draw and args.out is None:
        raise InputError("--draw writes DIR/drawn/: pass --out DIR too")
    if args.out is not None:
        api.check_out_dir(args.out)  # before the model loads
    rows = api.predict(args.model, args.images, prompt=args.prompt, label=args.label, batch_size=args.batch_size,
                       max_new_tokens=args.max_new_tokens, device=args.device)
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    if args.out is None:
        sys.stdout.write(lines)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predictions.jsonl").write_text(lines)
    print(f"{len(rows)} predictions -> {args.out / 'predictions.jsonl'}")
    if args.draw:
        draw_all(rows, args.out / "drawn")
        print(f"{len(rows)} images with their boxes drawn -> {args.out / 'drawn'}/")
    return 0


def draw_all(rows: list[dict], folder: Path) -> None:
    """Each image with its boxes and labels as folder/<stem>.png (stems made unique with -2, -3, ...)."""
    from ..data.sources import open_image

    folder.mkdir(parents=True, exist_ok=True)
    used: dict[str, int] = {}
    for row in rows:
        stem = Path(row["image"]).stem
        used[stem] = used.get(stem, 0) + 1
        name = stem if used[stem] == 1 else f"{stem}-{used[stem]}"
        draw(open_image(row["image"]), row).save(folder / f"{name}.png")


def draw(image, row: dict):
    from PIL import ImageDraw

    pen = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 200))
    for found in row["boxes"]:
        pen.rectangle(found["box"], outline=(230, 30, 30), width=width)
        x1, y1 = found["box"][:2]
        pen.text((x1 + width, y1 + width), f"{found['label']} {row['confidence']:.2f}", fill=(230, 30, 30))
    return image
