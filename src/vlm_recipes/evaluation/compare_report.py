"""compare.html (`vlm-recipes compare RUN... --html`): the leaderboard of every run, and two chosen
runs side by side on the same test images: where run A is right and B wrong, where B wins, where
both fail, with both runs' boxes (or top-5 retrievals) on every image. Runs tested on different
test sets are refused: an image-by-image comparison of different images means nothing.
"""

from __future__ import annotations

import html
from pathlib import Path

import markdown

from ..errors import InputError
from .gallery import different_test_sets, is_retrieval_rows, kind_of_rows
from .report import failure_counts, gallery_data, gallery_section, read_run, render_page
from .thumbnails import read_index


def aligned(rows_a: list[dict], rows_b: list[dict]) -> list[dict]:
    """B's rows in A's order (detection: by image id; retrieval rows are positional)."""
    if is_retrieval_rows(rows_a):
        return rows_b
    by_id = {str(row["image_id"]): row for row in rows_b}
    return [by_id[str(row["image_id"])] for row in rows_a]


def pair_data(dir_a: Path, dir_b: Path) -> dict:
    """The gallery data of run A against run B (their fine-tuned predictions); InputError when the
    two were not tested on the same test set."""
    a, b = read_run(dir_a), read_run(dir_b)
    rows_a, rows_b = a["predictions"]["finetuned"], b["predictions"]["finetuned"]
    if kind_of_rows(rows_a) != kind_of_rows(rows_b):
        raise InputError(f"{dir_a} and {dir_b}: one is a {kind_of_rows(rows_a)} run and the other a "
                         f"{kind_of_rows(rows_b)} run; --pair needs two runs of the same task")
    why = different_test_sets(rows_a, rows_b)
    if why:
        raise InputError(f"{dir_a} and {dir_b} were not tested on the same test set ({why}): an image-by-image "
                         "comparison needs runs with the same dataset, test size and seed; pick another --pair")
    images = read_index(a["dir"]) or read_index(b["dir"])
    return gallery_data([("a", f"A: {a['dir'].name}", rows_a), ("b", f"B: {b['dir'].name}", aligned(rows_a, rows_b))],
                        a["label"], images)


def build_compare(leaderboard_markdown: str, pair: tuple[Path, Path] | None) -> str:
    board = markdown.markdown(leaderboard_markdown.replace("`", ""), extensions=["tables"])
    body = f"<h1>Run comparison</h1>{board}"
    data = {"kind": "detection", "page_size": 1, "models": [], "rows": [], "filters": [], "images": {}}
    if pair is None:
        body += ("<p>No two complete runs share a task and a test set: no image-by-image comparison "
                 "(pick two with --pair to see why).</p>")
    else:
        data = pair_data(*pair)
        a, b = (m["name"] for m in data["models"])
        body += (f"<h2>{html.escape(a)} against {html.escape(b)}, image by image</h2>"
                 f"{failure_counts(data)}{gallery_section(data, (b, a))}")
    return render_page("vlm-recipes run comparison", body, data)


def write_compare(path: Path, leaderboard_markdown: str, pair: tuple[Path, Path] | None) -> Path:
    page = build_compare(leaderboard_markdown, pair)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
