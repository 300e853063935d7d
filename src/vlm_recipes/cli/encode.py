"""`python scripts/encode.py --model DIR --images PATH... --videos PATH... --out DIR [--query TEXT]`: embed and search.

Writes `images.npy` (N, H) float32 L2-normalised, `images.txt` (one path per row), `videos.npy` and
`videos.txt` likewise, and, with --texts FILE (one query a line), `texts.npy`. With --query, prints
the top-k of the images and videos together at `--dim` (a Matryoshka prefix, re-normalised; default
the full size). Videos are sampled and sized as the run's `data.video` says (its config.yaml).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError, first_line
from .predict import OneLineParser, run_main


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="vlm-recipes encode", description="Embed images (and texts) with a Qwen-VL embedding "
                                "model, e.g. a run's model/ directory; optionally search them with a text query.")
    p.add_argument("--model", required=True, help="run's model/ dir (LoRA adapter or full), or a checkpoint dir")
    p.add_argument("--images", nargs="+", default=[], help="image files or directories of images")
    p.add_argument("--videos", nargs="+", default=[], help="video files (.mp4, .webm, .avi, ...), directories of "
                   "them, or a directory of one video's frames")
    p.add_argument("--texts", type=Path, help="a text file, one query a line, embedded to texts.npy")
    p.add_argument("--out", type=Path, help="directory for the .npy files")
    p.add_argument("--query", help="search the images and videos with this text and print the top k")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--dim", type=int, help="Matryoshka prefix used for search (default: full)")
    p.add_argument("--pooling", choices=["last", "mean"], help="default: the run's config.yaml, else last")
    p.add_argument("--batch-size", type=int, default=32)
    return p


def settings_for(model_dir: Path, pooling: str | None, batch_size: int):
    """Pooling, instructions and video sampling as the run trained them (its config.yaml next to model/)."""
    import yaml

    from ..config import DataConfig, MRLOptions, ObjectiveConfig, VideoConfig, from_dict
    from ..models.embedding import EncodeSettings
    from ..readers import read_text

    options, video = MRLOptions(), VideoConfig()
    if (model_dir / "model").is_dir() and not (model_dir / "config.json").is_file():
        model_dir = model_dir / "model"  # a run directory means its model/
    config = next((c for c in (model_dir / "recipe.yaml", model_dir.parent / "config.yaml") if c.is_file()), None)
    if config is not None:
        try:
            saved = yaml.safe_load(read_text(config, "repair it, or pass the model directory without its run")) or {}
        except yaml.YAMLError as err:
            raise InputError(f"{config}: not valid YAML ({first_line(err)}): repair it") from None
        objective = saved.get("objective") or {} if isinstance(saved, dict) else {}
        if not isinstance(objective, dict) or objective.get("name", "sft") != "mrl":
            name = objective.get("name", "sft") if isinstance(objective, dict) else objective
            raise InputError(f"--model {model_dir}: a {name} model ({config}), not an embedding model: encode needs "
                             "one trained with the mrl objective (e.g. --recipe mrl)")
        options = ObjectiveConfig.from_raw(objective, "objective").options
        video = from_dict(DataConfig, saved.get("data") or {}, "data").video
    settings = EncodeSettings.from_options(options, batch_size, video)
    if pooling:
        settings.pooling = pooling
    return settings


def main(argv: list[str] | None = None) -> int:
    return run_main(build_parser(), run, argv)


def check_args(args) -> None:
    """Every flag checked before the model loads or anything is written."""
    for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size), ("--dim", args.dim)):
        if value is not None and value < 1:
            raise InputError(f"{flag} {value}: must be >= 1")
    if not args.images and not args.videos and not args.texts:
        raise InputError("nothing to embed: pass --images, --videos and/or --texts")
    if args.query and not args.images and not args.videos:
        raise InputError("--query searches images and videos: pass --images or --videos too")
    if not args.out and not args.query:
        raise InputError("nothing to do: pass --out DIR (writes the embeddings) and/or --query TEXT (searches them)")
    if args.texts and not args.texts.is_file():
        raise InputError(f"--texts {args.texts}: no such file (one query a line)")
    if not Path(args.model).is_dir():
        raise InputError(f"--model {args.model}: no such directory; pass a run's model/ or a checkpoint directory")


def run(args) -> int:
    check_args(args)  # before the heavy imports: a typo costs no torch start-up
    from ..api import check_out_dir
    from ..data.sources import image_files, open_image
    from ..data.video import read_video, video_files
    from ..readers import read_text

    out = check_out_dir(args.out) if args.out else None
    check_model(args.model)
    settings = settings_for(Path(args.model), args.pooling, args.batch_size)
    paths = image_files(args.images) if args.images else []
    pictures = [open_image(p) for p in paths]  # a bad image fails here, before the model loads
    video_paths = video_files(args.videos) if args.videos else []
    clips = [read_video(p, settings.video, "--videos") for p in video_paths]  # and a bad video
    texts = read_text(args.texts, "save the queries as UTF-8 text, one a line") if args.texts else ""
    lines = [line for line in texts.splitlines() if line.strip()]
    embedder = load_embedder(args.model, settings)
    images = embedder.encode_images(pictures) if paths else None
    videos = embedder.encode_videos(clips) if clips else None
    if out is not None:
        save_embeddings(out, {"images": (paths, images), "videos": (video_paths, videos)},
                        embedder.encode_texts(lines) if lines else None)
    if args.query:
        gallery = [e for e in (images, videos) if e is not None]  # images first, then videos
        search(embedder, args, [*paths, *video_paths], gallery)
    return 0


def check_model(model: str) -> None:
    """Every file of the model directory read through its kind's reader, before any weights load."""
    from ..api import base_of_adapter
    from ..models.loading import check_model_files

    path = Path(model)
    path = path / "model" if (path / "model").is_dir() and not (path / "config.json").is_file() else path
    check_model_files(path)
    if (path / "adapter_config.json").is_file():
        base_of_adapter(path)


def load_embedder(model: str, settings):
    from ..models.embedding import Embedder

    try:
        return Embedder.load(model, settings=settings)
    except (OSError, ValueError) as err:
        raise InputError(f"--model {model} could not be loaded ({first_line(err)}): pass a "
                         "run's model/ or a checkpoint directory with its processor") from None


def save_embeddings(out: Path, embedded: dict, texts) -> None:
    """DIR/images.npy + images.txt (their paths), the same for videos, and texts.npy."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    for name, (found, vectors) in embedded.items():
        if vectors is not None:
            np.save(out / f"{name}.npy", vectors.numpy())
            (out / f"{name}.txt").write_text("".join(f"{p}\n" for p in found))
    if texts is not None:
        np.save(out / "texts.npy", texts.numpy())


def search(embedder, args, names: list, gallery: list) -> None:
    """Print the --top-k items of the gallery closest to --query, at --dim."""
    import torch

    from ..models.embedding import truncate

    gallery = torch.cat(gallery)
    dim = args.dim or gallery.shape[1]
    if dim > gallery.shape[1]:
        raise InputError(f"--dim {dim}: must be in 1..{gallery.shape[1]}")
    query = embedder.encode_texts([args.query])
    scores = (truncate(query, dim) @ truncate(gallery, dim).T)[0]
    top = scores.topk(min(args.top_k, len(names)))
    for score, index in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{score:.4f}  {names[index]}")
