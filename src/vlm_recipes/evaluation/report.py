"""report.html: one self-contained page per run (`vlm-recipes report RUN_DIR`, and at the end of
every run) that shows where the model goes wrong.

It holds the summary tables (results.md's, base vs fine-tuned, per stage and shifted), failure
counts and per-label tables, the curves, the recipe as run, and a gallery: every test image with
the true and predicted boxes drawn (SVG over the thumbnail), worst first, filterable by failure
kind; for `mrl`, every query with its top-5 retrieved targets, the positive marked. Everything is
inline (thumbnails as data URIs, no network); the gallery is rendered by a small script from the
JSON embedded in the page, PAGE_SIZE cards at a time, so 1,000 test images are 21 pages and the
browser decodes only the shown page's thumbnails.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import markdown

from ..errors import InputError
from . import gallery
from .thumbnails import data_uri, read_index

PAGE_SIZE = 48
"""Gallery cards a page: 1,000 test images are 21 pages."""
TRUTH = {"key": "truth", "name": "true", "colour": "#00c853", "dash": ""}
STYLES = [{"colour": "#2962ff", "dash": "4 3"}, {"colour": "#ff1744", "dash": ""}]
"""The first model (base, run A) blue and dashed, the second (fine-tuned, run B) red and solid."""
CURVES = [("loss.png", "training loss"), ("val_curve.png", "validation metric, best step starred"),
          ("rewards.png", "GRPO rewards"), ("recall_vs_dim.png", "Recall@1 against embedding dim")]
KINDS_OF = {"detection": gallery.KINDS, "retrieval": gallery.RETRIEVAL_KINDS, "text": gallery.TEXT_KINDS}
PAGE = Path(__file__).resolve().parents[1] / "assets" / "report" / "page.html"


def read_run(run_dir: Path) -> dict:
    """The files a report is built from; an unfinished run is an InputError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    missing = [name for name in ("metrics.json", "predictions.json") if not (run_dir / name).is_file()]
    if missing:
        status_file = run_dir / "status.json"
        status = json.loads(status_file.read_text()).get("state") if status_file.is_file() else "unknown"
        raise InputError(f"{run_dir}: no {' or '.join(missing)} (run state: {status}); a report needs a finished run")
    config = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    return {"dir": run_dir, "metrics": json.loads((run_dir / "metrics.json").read_text()),
            "predictions": json.loads((run_dir / "predictions.json").read_text()), "config": config,
            "label": _label_of(config)}


def _label_of(config_text: str) -> str | None:
    import yaml

    data = (yaml.safe_load(config_text) or {}) if config_text else {}
    return (data.get("data") or {}).get("label")


# --- the gallery's data ---------------------------------------------------------------------------

def gallery_data(models: list[tuple[str, str, list[dict]]], label: str | None, images: dict) -> dict:
    """The JSON the page's script renders. `models`: (key, shown name, predictions.json rows), two of
    them (base and fine-tuned, or run A and run B), rows aligned on the same test items."""
    kind = gallery.kind_of_rows(models[0][2])
    styled = [{"key": key, "name": name, **style} for (key, name, _), style in zip(models, STYLES)]
    per_item = zip(*(predictions for _, _, predictions in models))  # (model A's row, model B's row) per item
    rows = [_gallery_row(index, items, [key for key, _, _ in models], kind, label)
            for index, items in enumerate(per_item)]
    truth = {**TRUTH, "name": "positive"} if kind == "retrieval" else TRUTH
    return {"kind": kind, "page_size": PAGE_SIZE, "models": styled, "truth_style": truth,
            "focus": styled[1]["key"], "other": styled[0]["key"],
            "filters": _filters(rows, styled, KINDS_OF[kind]), "images": images, "rows": rows}


def _gallery_row(index: int, items: tuple[dict, ...], keys: list[str], kind: str, label: str | None) -> dict:
    """One test item: each model's cell, the filter tags (each model's failure kinds and the pair's
    outcome) and what identifies the item."""
    cell_of = {"retrieval": _retrieval_cell, "text": _text_cell}.get(kind, lambda row: _detection_cell(row, label))
    cells = [cell_of(item) for item in items]
    tags = [f"{key}:{failure}" for key, (cell, _) in zip(keys, cells) for failure in cell["kinds"]]
    row = {"index": index, "m": {key: cell for key, (cell, _) in zip(keys, cells)},
           "tags": tags + [gallery.outcome_of_pair(*(outcome for _, outcome in cells))]}
    first = items[0]
    if kind == "retrieval":
        return {**row, "id": str(index), "query": first["query"], "target": first["target"]}
    if kind == "text":
        return {**row, "id": str(first["image_id"]), "target": first["target"]}
    return {**row, "id": str(first["image_id"]), "truth": _jsonable(gallery.true_objects(first, label))}


def _detection_cell(row: dict, label: str | None) -> tuple[dict, gallery.ImageOutcome]:
    truth, predicted = gallery.true_objects(row, label), gallery.predicted_objects(row)
    outcome = gallery.analyse(truth, predicted)
    iou = sum(outcome.ious) / len(outcome.ious) if outcome.ious else outcome.score
    return {"boxes": _jsonable(predicted), "text": row.get("text", ""), "score": round(outcome.score, 4),
            "iou": round(iou, 4), "kinds": outcome.kinds}, outcome


def _text_cell(row: dict) -> tuple[dict, gallery.ImageOutcome]:
    outcome = gallery.text_outcome(row)
    return {"text": row["text"], "score": outcome.score, "kinds": outcome.kinds}, outcome


def _retrieval_cell(row: dict) -> tuple[dict, gallery.ImageOutcome]:
    outcome = gallery.retrieval_outcome(row)
    rank = row["top10"].index(row["target"]) + 1 if row["target"] in row["top10"] else None
    return {"top": row["top10"][:5], "rank": rank, "score": round(outcome.score, 4), "kinds": outcome.kinds}, outcome


def _jsonable(objects: list[gallery.Object]) -> list[dict]:
    return [{"label": o.label, "box": [round(v, 1) for v in o.box]} for o in objects]


def _filters(rows: list[dict], models: list[dict], kinds) -> list[dict]:
    """The filter menu: each model's failure kinds, and how the two models compare, with counts."""
    def count(tag):
        return sum(tag in row["tags"] for row in rows)

    a, b = models[0]["name"], models[1]["name"]
    groups = [{"label": "all", "options": [{"value": "all", "label": "every image", "count": len(rows)}]}]
    groups += [{"label": f"{m['name']}: failure kind", "options": [
        {"value": f"{m['key']}:{kind}", "label": kind.replace("_", " "), "count": count(f"{m['key']}:{kind}")}
        for kind in kinds]} for m in reversed(models)]
    groups.append({"label": f"{a} against {b}", "options": [
        {"value": "b_wins", "label": f"{b} right, {a} wrong", "count": count("b_wins")},
        {"value": "a_wins", "label": f"{a} right, {b} wrong", "count": count("a_wins")},
        {"value": "both_wrong", "label": "both wrong", "count": count("both_wrong")},
        {"value": "both_right", "label": "both right", "count": count("both_right")}]})
    return groups


# --- the page ---------------------------------------------------------------------------------------

def render_page(title: str, body: str, data: dict) -> str:
    script_safe = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (PAGE.read_text().replace("<!--TITLE-->", html.escape(title))
            .replace("<!--BODY-->", body).replace("<!--DATA-->", script_safe))


def gallery_section(data: dict, sort_names: tuple[str, str]) -> str:
    """Controls, legend, the gallery and its pager (the script fills them)."""
    focus, other = sort_names
    legend = "".join(f'<span><i class="swatch" style="border-top: 3px {"dashed" if m["dash"] else "solid"} '
                     f'{m["colour"]}"></i>{html.escape(m["name"])}</span>'
                     for m in [data["truth_style"], *data["models"]])
    what = "queries" if data["kind"] == "retrieval" else "test images"
    return (f'<h2 id="gallery-title">Gallery: {len(data["rows"])} {what}</h2>'
            '<div class="controls">'
            f'<label>sort <select id="sort"><option value="worst">worst first ({html.escape(focus)})</option>'
            '<option value="index">test order</option>'
            f'<option value="gain">largest gain of {html.escape(focus)} over {html.escape(other)}</option>'
            f'<option value="loss">largest loss of {html.escape(focus)} against {html.escape(other)}</option>'
            '</select></label>'
            '<label>show <select id="filter"></select></label>'
            '<label><input type="checkbox" id="boxes" checked> boxes</label>'
            '<span class="pager"><button id="prev">previous</button><span id="page-info"></span>'
            f'<button id="next">next</button></span><div class="legend">{legend}</div></div>'
            '<div id="gallery"></div>')


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    def cell(value):
        return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(row.get(key, ''))}</td>" for key, _ in columns) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def failure_counts(data: dict) -> str:
    """Images (queries) per failure kind for each model of the gallery, and how the two compare."""
    kinds = KINDS_OF[data["kind"]]
    rows = []
    for model in data["models"]:
        outcomes = [row["m"][model["key"]]["kinds"] for row in data["rows"]]
        counts = {"model": model["name"], "correct": sum(not k for k in outcomes)}
        counts.update({kind: sum(kind in k for k in outcomes) for kind in kinds})
        rows.append(counts)
    pairs = [{"outcome": option["label"], "count": option["count"]} for option in data["filters"][-1]["options"]]
    return ("<h2>Failures</h2><p>Images (queries) per failure kind; an image can have several. Detection: "
            "true and predicted objects matched one-to-one by IoU; correct = every object found with IoU "
            "&ge; 0.5 and its label. Retrieval: correct = the positive ranked first. Text answers: "
            "correct = exactly the reference.</p>"
            + table(rows, [("model", "model"), ("correct", "correct"), *[(k, k.replace("_", " ")) for k in kinds]])
            + table(pairs, [("outcome", "image by image"), ("count", "images")]))


def failure_tables(data: dict, run: dict) -> str:
    """failure_counts, per-label detection, and any per-category table the task's metrics hold."""
    text = failure_counts(data)
    if data["kind"] == "detection":
        for key, name in (("base", "base"), ("finetuned", "fine-tuned")):
            labels = gallery.per_label(run["predictions"][key], run["label"])
            text += f"<h3>Per label, {name}</h3>" + table(labels, [("label", "true label"), ("objects", "objects"),
                                                                    ("found", "found (IoU≥0.5, label right)"),
                                                                    ("mean_iou", "mean IoU")])
        text += category_tables(run["metrics"])
    return text


def category_tables(metrics: dict) -> str:
    """Tables for nested per-category metrics ({"per_category": {"cat": {"f1": ...}}}), if any."""
    out = ""
    for model in ("base", "finetuned"):
        for name, value in (metrics.get(model) or {}).items():
            if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                names = sorted({k for v in value.values() for k in v})
                rows = [{"category": cat, **v} for cat, v in value.items()]
                columns = [("category", "category")] + [(n, n) for n in names]
                out += f"<h3>{html.escape(name)}, {model}</h3>" + table(rows, columns)
    return out


def summary_html(run_dir: Path) -> str:
    """results.md's tables and text (its image lines dropped: the page shows the images itself)."""
    path = run_dir / "results.md"
    if not path.is_file():
        return ""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("!["))
    return markdown.markdown(text.replace("# ", "## ", 1) if text.startswith("# ") else text, extensions=["tables"])


def curves_html(run_dir: Path) -> str:
    images = [f'<img class="curve" src="{data_uri(run_dir / name)}" alt="{title}" title="{title}">'
              for name, title in CURVES if (run_dir / name).is_file()]
    return "<h2>Curves</h2>" + "".join(images) if images else ""


def build_report(run_dir: Path) -> str:
    run = read_run(run_dir)
    predictions = run["predictions"]
    data = gallery_data([("base", "base", predictions["base"]), ("finetuned", "fine-tuned", predictions["finetuned"])],
                        run["label"], read_index(run["dir"]))
    metrics = run["metrics"]
    note = "" if data["images"] else ("<p><b>This run kept no test images</b> (it predates report.html): "
                                      "the gallery draws the boxes on blank frames.</p>")
    body = (f"<h1>{html.escape(metrics['recipe'])}: {html.escape(run['dir'].name)}</h1>"
            f"{summary_html(run['dir'])}{failure_tables(data, run)}{curves_html(run['dir'])}"
            f"{note}{gallery_section(data, ('fine-tuned', 'base'))}"
            "<h2>Recipe as run</h2><details><summary>config.yaml</summary>"
            f"<pre>{html.escape(run['config'])}</pre></details>")
    return render_page(f"{metrics['recipe']} report", body, data)


def write_report(run_dir: Path) -> Path:
    """Write run_dir/report.html (whole or not at all) and return its path."""
    run_dir = Path(run_dir)
    page = build_report(run_dir)
    path, tmp = run_dir / "report.html", run_dir / ".report.html.tmp"
    tmp.write_text(page)
    tmp.replace(path)
    return path
