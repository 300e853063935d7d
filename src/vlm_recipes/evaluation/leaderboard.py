"""One leaderboard from any set of run directories: markdown, CSV and a bar chart.

Detection runs (sft, mdlm: metrics with "mean_iou") give one row per fine-tuned run plus the
base rows, sorted by mean IoU. Grounding runs on sets of boxes (metrics with "f1": several objects,
referring expressions, negatives) get their own table, sorted by F1@0.5. Retrieval runs (mrl: metrics with "dims") get their own table,
sorted by text->image (text->video for video runs) Recall@1 at the full dim. A run that is
missing, unfinished, failed or unreadable is listed under "not in the tables" with the reason, never dropped silently.

Base rows: each run evaluates the model it starts from (for 4-bit recipes, the 4-bit base:
DECISIONS D4), so runs can disagree about "the base". Runs with the same base (model, precision,
objective, test size) and identical base metrics share one base row; when there are several, each is labelled by what differs (precision,
objective, base model, test size) or else by the runs it belongs to.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from ..readers import read_json
from .result import directions_of

DETECTION_COLUMNS = [  # (key, title)
    ("model", "model"), ("recipe", "recipe"), ("mean_iou", "mean IoU"), ("median_iou", "median IoU"),
    ("detection_rate", "detection rate"), ("iou_gt_0.5", "IoU>0.5"), ("iou_gt_0.7", "IoU>0.7"),
    ("ap", "AP@[.5:.95]"), ("shifted_mean_iou", "shifted mean IoU"), ("train_seconds", "train time (s)"),
    ("trainable_params", "trainable params"),
]
"""`shifted_mean_iou`: mean IoU on the out-of-domain split (data.num_shifted); shown when a run has one."""
GROUNDING_COLUMNS = [
    ("model", "model"), ("recipe", "recipe"), ("f1", "F1@0.5"), ("precision", "P@0.5"), ("recall", "R@0.5"),
    ("matched_iou", "matched IoU"), ("count_error", "count error"), ("map", "mAP"), ("map50", "mAP50"),
    ("acc50", "Acc@0.5"), ("negative_empty", "empty on negatives"), ("negative_fp", "FP / negative"),
    ("train_seconds", "train time (s)"), ("trainable_params", "trainable params"),
]
"""Acc@0.5 and the negatives' columns are shown when some run has referring expressions / negatives."""


@dataclass
class Run:
    path: Path
    state: str
    """complete | running | failed | missing (no directory) | unknown (no status.json)"""
    metrics: dict | None = None
    error: str = ""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Leaderboard:
    detection: list[dict] = field(default_factory=list)
    grounding: list[dict] = field(default_factory=list)
    retrieval: list[dict] = field(default_factory=list)
    retrieval_columns: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(run directory, why it is not in the tables)."""


# --- reading runs ------------------------------------------------------------------------------

def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories; a directory that is not itself a run (no status.json / metrics.json) but
    holds runs, such as a sweep directory, stands for the runs inside it."""
    out = []
    for path in map(Path, paths):
        children = sorted(p for p in path.iterdir() if p.is_dir() and _is_run(p)) if path.is_dir() else []
        out += children if not _is_run(path) and children else [path]
    return out


def _is_run(path: Path) -> bool:
    return (path / "status.json").is_file() or (path / "metrics.json").is_file()


STATUS_KEYS = {"state": str, "error": str}
METRICS_KEYS = {"base": dict, "finetuned": dict, "stages": list, "objective": str, "dims": list,
                "shifted": dict, "best": dict}
FIX = "repair or delete it (a run whose files are lost is trained again), or leave the run out"


def read_run(path: Path) -> Run:
    """A run's state and metrics. A missing file is a state (the run never started, failed early);
    a corrupt one (empty, binary, truncated, a wrong type) is bad input: one line naming it."""
    if not path.is_dir():
        return Run(path, "missing", error="no such run directory (the run never started, or bad input)")
    status = read_json(path / "status.json", dict, FIX, default={}, keys=STATUS_KEYS)
    if (path / "status.json").is_file() and "state" not in status:
        raise InputError(f"{path / 'status.json'}: has no 'state': {FIX}")
    metrics = read_json(path / "metrics.json", dict, FIX, default=None, keys=METRICS_KEYS)
    if metrics is not None and status.get("state") == "complete" and not {"base", "finetuned"} <= set(metrics):
        raise InputError(f"{path / 'metrics.json'}: the run is complete but its metrics.json has no base/finetuned "
                         f"results: {FIX}")
    return Run(path, status.get("state", "unknown"), metrics, status.get("error", ""))


# --- building the tables --------------------------------------------------------------------------

def build_leaderboard(runs: list[Run]) -> Leaderboard:
    board = Leaderboard()
    detection, grounding, retrieval = [], [], []
    for run in runs:
        why = _why_skipped(run)
        if why:
            board.skipped.append((str(run.path), why))
        elif "dims" in run.metrics:
            retrieval.append(run)
        elif "mean_iou" in run.metrics.get("finetuned", {}):
            detection.append(run)
        elif "f1" in run.metrics.get("finetuned", {}):
            grounding.append(run)
        else:
            board.skipped.append((str(run.path), "metrics of an unknown kind (finetuned keys: "
                                  f"{', '.join(sorted(run.metrics.get('finetuned', {}))) or 'none'})"))
    board.detection = _detection_rows(detection)
    board.grounding = _grounding_rows(grounding)
    board.retrieval, board.retrieval_columns = _retrieval_rows(retrieval)
    return board


def _why_skipped(run: Run) -> str:
    if run.state == "missing":
        return run.error
    if run.state != "complete":
        detail = f": {run.error}" if run.error else ""
        has = "partial metrics.json" if run.metrics is not None else "no metrics.json"
        return f"status {run.state!r}, not complete ({has}){detail}"
    if run.metrics is None:
        return run.error or "status complete but no metrics.json"
    if not {"base", "finetuned"} <= set(run.metrics):
        return "metrics.json has no base/finetuned results"
    return ""


def _base_rows(runs: list[Run], row_of) -> list[dict]:
    """One row per distinct base evaluation, labelled by what tells them apart."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        # equal numbers from a 4-bit and a full-precision base are still two different bases
        key = json.dumps([_base_traits(run), run.metrics["base"]], sort_keys=True)
        groups.setdefault(key, []).append(run)
    traits = [_base_traits(members[0]) for members in groups.values()]
    differing = [k for k in (traits[0] if traits else {}) if len({t[k] for t in traits}) > 1]
    rows = []
    for members, trait in zip(groups.values(), traits):
        label = ", ".join(trait[k] for k in differing)
        if len(groups) > 1 and len({tuple(t[k] for k in differing) for t in traits}) < len(groups):
            label = ", ".join(filter(None, [label, "runs " + " ".join(m.name for m in members)]))
        rows.append(row_of(members[0], f"base ({label})" if label else "base", base=True))
    return rows


def _base_traits(run: Run) -> dict[str, str]:
    first = (run.metrics.get("stages") or [{}])[0]
    four_bit = sum((first.get("quantized") or {}).values()) > 0
    return {"precision": "4-bit" if four_bit else "full precision",
            "objective": str(run.metrics.get("objective", "")),
            "base_model": Path(str(run.metrics.get("base_model", ""))).name,
            "n": f"n={run.metrics['base'].get('n', '?')}"}


def _detection_rows(runs: list[Run]) -> list[dict]:
    def row_of(run: Run, name: str, base: bool = False) -> dict:
        m = run.metrics
        values = m["base"] if base else m["finetuned"]
        row = {"model": name, "recipe": "" if base else m.get("recipe", ""), "run": "" if base else str(run.path)}
        row.update({key: values.get(key) for key, _ in DETECTION_COLUMNS[2:8]})
        shifted = m.get("shifted") or {}
        final = m["stages"][-1]["name"] if m.get("stages") else ""
        row["shifted_mean_iou"] = (shifted.get("base" if base else final) or {}).get("mean_iou")
        row["train_seconds"] = None if base else m.get("train_seconds")
        row["trainable_params"] = None if base else m.get("trainable_params")
        return row

    rows = _base_rows(runs, row_of) + [row_of(run, run.name) for run in runs]
    return sorted(rows, key=lambda r: (-(r["mean_iou"] or 0.0), r["model"]))


def _grounding_rows(runs: list[Run]) -> list[dict]:
    def row_of(run: Run, name: str, base: bool = False) -> dict:
        m = run.metrics
        values = m["base"] if base else m["finetuned"]
        row = {"model": name, "recipe": "" if base else m.get("recipe", ""), "run": "" if base else str(run.path)}
        row.update({key: values.get(key) for key, _ in GROUNDING_COLUMNS[2:-2]})
        row["train_seconds"] = None if base else m.get("train_seconds")
        row["trainable_params"] = None if base else m.get("trainable_params")
        return row

    rows = _base_rows(runs, row_of) + [row_of(run, run.name) for run in runs]
    return sorted(rows, key=lambda r: (-(r["f1"] or 0.0), r["model"]))


def grounding_columns(board: Leaderboard) -> list[tuple[str, str]]:
    """The grounding table's columns, without those no row has a value for."""
    return [c for c in GROUNDING_COLUMNS if c[0] in ("model", "recipe")
            or any(row.get(c[0]) is not None for row in board.grounding)]


def _retrieval_rows(runs: list[Run]) -> tuple[list[dict], list[tuple[str, str]]]:
    """One row per model. The columns keep their "t2i"/"i2t" keys for text -> target and back; their
    titles say t2v/v2t when every run retrieved videos (a video gallery's metrics are named so)."""
    forwards = [run.metrics["finetuned"][directions_of(run.metrics["finetuned"])[0]] for run in runs]
    dims = sorted({int(d) for forward in forwards for d in forward})
    video = all(directions_of(run.metrics["finetuned"])[0] == "t2v" for run in runs)
    t2x, x2t = ("t2v", "v2t") if video else ("t2i", "i2t")
    columns = [("model", "model"), ("recipe", "recipe")]
    columns += [(f"t2i_r1@{d}", f"{t2x} R@1 d={d}") for d in dims]
    columns += [("i2t_r1", f"{x2t} R@1 (full)"), ("t2i_mrr10", f"{t2x} MRR@10 (full)"),
                ("train_seconds", "train time (s)"), ("trainable_params", "trainable params")]

    def row_of(run: Run, name: str, base: bool = False) -> dict:
        m = run.metrics
        values = m["base"] if base else m["finetuned"]
        forward, backward = directions_of(values)
        full = str(max(int(d) for d in values[forward]))
        row = {"model": name, "recipe": "" if base else m.get("recipe", ""), "run": "" if base else str(run.path)}
        row.update({f"t2i_r1@{d}": values[forward].get(str(d), {}).get("recall@1") for d in dims})
        row["i2t_r1"] = values[backward][full]["recall@1"]
        row["t2i_mrr10"] = values[forward][full]["mrr@10"]
        row["t2i_r1_full"] = values[forward][full]["recall@1"]
        row["train_seconds"] = None if base else m.get("train_seconds")
        row["trainable_params"] = None if base else m.get("trainable_params")
        return row

    rows = _base_rows(runs, row_of) + [row_of(run, run.name) for run in runs]
    return sorted(rows, key=lambda r: (-r["t2i_r1_full"], r["model"])), columns


# --- output ------------------------------------------------------------------------------------

def _cell(value, key: str = "") -> str:
    if value is None:
        return ""
    if key == "train_seconds":
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| # | " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for rank, row in enumerate(rows, 1):
        lines.append(f"| {rank} | " + " | ".join(_cell(row.get(key), key) for key, _ in columns) + " |")
    return "\n".join(lines)


def to_markdown(board: Leaderboard) -> str:
    parts = []
    if board.detection:
        parts.append("## Detection (sorted by mean IoU)\n\n" + markdown_table(board.detection, detection_columns(board)))
    if board.grounding:
        parts.append("## Grounding: sets of boxes (sorted by F1@0.5)\n\n"
                     + markdown_table(board.grounding, grounding_columns(board)))
    if board.retrieval:
        parts.append("## Retrieval (sorted by text->image or text->video Recall@1 at the full dim)\n\n"
                     + markdown_table(board.retrieval, board.retrieval_columns))
    if not board.detection and not board.retrieval and not board.grounding:
        parts.append("No complete run to compare.")
    if board.skipped:
        parts.append("## Runs not in the tables\n\n" + "\n".join(f"- `{path}`: {why}" for path, why in board.skipped))
    return "\n\n".join(parts) + "\n"


def detection_columns(board: Leaderboard) -> list[tuple[str, str]]:
    """The detection table's columns; the shifted split's only when some run was scored on one."""
    has_shifted = any(row.get("shifted_mean_iou") is not None for row in board.detection)
    return [c for c in DETECTION_COLUMNS if c[0] != "shifted_mean_iou" or has_shifted]


def write_csv(rows: list[dict], columns: list[tuple[str, str]], path: Path) -> None:
    """Raw values (no rounding), one column per key, plus the run directory."""
    keys = [key for key, _ in columns] + ["run"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(keys)
        for row in rows:
            writer.writerow(["" if row.get(k) is None else row.get(k) for k in keys])


def plot_leaderboard(board: Leaderboard, path: Path) -> None:
    """Grouped horizontal bars (mean IoU, IoU>0.5, AP) per detection row; Recall@1 vs dim per
    retrieval row in a second panel when there are retrieval runs."""
    from .plots import plt

    panels = [p for p in (board.detection, board.retrieval) if p]
    height = max(3.0, 0.45 * max((len(p) for p in panels), default=1) + 1.5)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(7 * max(1, len(panels)), height), squeeze=False)
    axes = list(axes.flat)
    if board.detection:
        ax = axes.pop(0)
        rows = board.detection[::-1]  # best at the top
        names = [r["model"] for r in rows]
        for offset, (key, title) in zip((-0.27, 0.0, 0.27), (("mean_iou", "mean IoU"), ("iou_gt_0.5", "IoU>0.5"),
                                                             ("ap", "AP@[.5:.95]"))):
            ax.barh([i + offset for i in range(len(rows))], [r[key] or 0.0 for r in rows], height=0.27, label=title)
        ax.set_yticks(range(len(rows)), names, fontsize=8)
        ax.set(xlim=(0, 1), xlabel="score", title="detection leaderboard")
        ax.legend(fontsize=8, loc="lower right")
    if board.retrieval:
        ax = axes.pop(0)
        dims = [int(key.split("@")[1]) for key, _ in board.retrieval_columns if key.startswith("t2i_r1@")]
        for row in board.retrieval:
            points = [(d, row[f"t2i_r1@{d}"]) for d in dims if row.get(f"t2i_r1@{d}") is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=row["model"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set(ylim=(0, 1.02), xlabel="embedding dim", ylabel="t2i Recall@1", title="retrieval leaderboard")
        ax.legend(fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class Outputs:
    markdown: Path
    csv: Path
    retrieval_csv: Path
    plot: Path


def default_outputs(out_dir: Path) -> Outputs:
    return Outputs(out_dir / "leaderboard.md", out_dir / "leaderboard.csv", out_dir / "leaderboard_retrieval.csv",
                   out_dir / "leaderboard.png")


def write_leaderboard(board: Leaderboard, outputs: Outputs) -> list[Path]:
    """Writes the files that have content; returns their paths."""
    written = []
    outputs.markdown.parent.mkdir(parents=True, exist_ok=True)
    outputs.markdown.write_text(to_markdown(board))
    written.append(outputs.markdown)
    if board.detection:
        write_csv(board.detection, DETECTION_COLUMNS, outputs.csv)
        written.append(outputs.csv)
    if board.retrieval:
        write_csv(board.retrieval, board.retrieval_columns, outputs.retrieval_csv)
        written.append(outputs.retrieval_csv)
    if board.detection or board.retrieval:
        plot_leaderboard(board, outputs.plot)
        written.append(outputs.plot)
    return written


def leaderboard_for(paths: list[str | Path]) -> Leaderboard:
    """The leaderboard of run directories (or directories of runs)."""
    return build_leaderboard([read_run(p) for p in expand_run_dirs(paths)])
