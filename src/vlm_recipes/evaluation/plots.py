"""PNG plots of a run: training loss, and test images with true vs predicted boxes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_loss(history: list[dict], path: Path, title: str = "") -> None:
    points = [(h["step"], h["loss"], h.get("stage", "")) for h in history if "loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage in dict.fromkeys(p[2] for p in points):
        steps = [p[0] for p in points if p[2] == stage]
        ax.plot(steps, [p[1] for p in points if p[2] == stage], label=stage or None)
    ax.set(xlabel="step", ylabel="training loss", title=f"{title} training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    if len(points) < 2:  # one point draws no line: say so rather than leave empty axes
        for step, loss, _ in points:
            ax.plot([step], [loss], "o")
        ax.text(0.5, 0.5, f"too few loss points to draw a curve ({len(points)} logged)", ha="center",
                va="center", transform=ax.transAxes)
    if len({p[2] for p in points}) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_validation(rows: list[dict], best: dict, path: Path, title: str = "") -> None:
    """The validation metric against step, one line per stage (steps count from each stage's
    start), the best step starred."""
    metric = best["metric"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        points = [(r["step"], r["metrics"][metric]) for r in rows if r["stage"] == stage and metric in r["metrics"]]
        ax.plot(*zip(*points), marker="o", markersize=3, label=stage)
    ax.plot([best["step"]], [best["value"]], marker="*", markersize=14, color="tab:red", linestyle="none",
            label=f"best: {best['value']:.3f} at step {best['step']}")
    ax.set(xlabel="step", ylabel=f"validation {metric}", title=f"{title} validation {metric}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


REWARD_CURVES = [("reward", "total reward"), ("rewards/iou_reward/mean", "IoU reward"),
                 ("rewards/match_reward/mean", "matching reward (sets)"),
                 ("rewards/format_reward/mean", "format reward"), ("watch/parsed", "answers that parse"),
                 ("watch/boxes_per_answer", "boxes per answer"), ("watch/true_boxes", "true boxes per prompt"),
                 ("watch/area_ratio", "predicted / true box area")]

RIGHT_AXIS = ("watch/area_ratio", "watch/boxes_per_answer", "watch/true_boxes")
"""Curves that are not rewards in 0-1: ratios and counts, on the right panel."""


def plot_rewards(history: list[dict], path: Path, title: str = "") -> None:
    """A GRPO stage's rewards and reward-hacking signals against step: the mean total and per-reward
    rewards, the fraction of answers that parse and the predicted box's area over the true one's
    (1 = right-sized; a climb means boxes grow to game IoU); on sets, boxes per answer against the
    true count (a policy gaming the matching with spare boxes climbs above it)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for key, label in REWARD_CURVES:
        points = [(e["step"], e[key]) for e in history if key in e]
        if points:
            (right if key in RIGHT_AXIS else left).plot(*zip(*points), marker="o", markersize=2, label=label)
    left.set(xlabel="step", ylabel="mean over the step's answers", title=f"{title} rewards")
    right.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    right.set(xlabel="step", ylabel="ratio or count", title="predicted vs true: box area, box count")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_box_grid(samples, predicted: dict[str, list], path: Path, num: int = 8, columns: int = 4) -> None:
    """Test images with the true boxes (green) and each model's predicted boxes (one colour and line
    style per model), 4 inches a panel, the legend above the panels (never over an image)."""
    styles = [("tab:blue", "--"), ("tab:red", "-"), ("tab:orange", ":")]
    num = min(num, len(samples))
    rows = max(1, -(-num // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, range(num)):
        sample = samples[index]
        ax.imshow(sample.image)
        for box in sample.boxes:
            _draw(ax, box, "tab:green", "-")
        for (colour, style), boxes in zip(styles, predicted.values()):
            for box in _as_boxes(boxes[index]):
                _draw(ax, box, colour, style)
        ax.set_title(str(sample.image_id), fontsize=10)
    handles = [plt.Line2D([], [], color=c, linestyle=s, linewidth=2.5)
               for c, s in [("tab:green", "-"), *styles[:len(predicted)]]]
    fig.legend(handles, ["true", *predicted], loc="upper center", ncol=len(handles), fontsize=12, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (4 * rows + 0.6)))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _as_boxes(predicted) -> list:
    """A prediction as a list of boxes: None (no box), one box, or [label, box] pairs (sets)."""
    if not predicted:
        return []
    if isinstance(predicted[0], (int, float)):
        return [predicted]
    return [box for _, box in predicted]


def _draw(ax, box, colour: str, style: str) -> None:
    x1, y1, x2, y2 = box
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2.5, linestyle=style))
