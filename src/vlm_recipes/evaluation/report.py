"""results.md and plots for detection runs (generative recipes: sft and mdlm)."""

from __future__ import annotations

from pathlib import Path

from .plots import plot_box_grid

DETECTION_COLUMNS = [("mean_iou", "mean IoU"), ("median_iou", "median IoU"), ("detection_rate", "detection rate"),
                     ("iou_gt_0.5", "IoU>0.5"), ("iou_gt_0.7", "IoU>0.7"), ("ap", "AP@[.5:.95]"), ("ap50", "AP50")]


def detection_table(rows: list[tuple[str, dict]]) -> str:
    header = "| model | " + " | ".join(title for _, title in DETECTION_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(DETECTION_COLUMNS) + 1)]
    for name, metrics in rows:
        lines.append(f"| {name} | " + " | ".join(f"{metrics[key]:.3f}" for key, _ in DETECTION_COLUMNS) + " |")
    return "\n".join(lines)


def write_detection_report(run_dir: Path, metrics: dict, base_eval: dict, finetuned_eval: dict, samples) -> None:
    table = detection_table([("base", metrics["base"]), (metrics["recipe"], metrics["finetuned"])])
    gain = metrics["finetuned"]["mean_iou"] - metrics["base"]["mean_iou"]
    stages = ", ".join(f"{s['name']} ({s['train_seconds']} s, {s['trainable_params']:,} trainable)"
                       for s in metrics["stages"])
    text = (f"# {metrics['recipe']}: base vs fine-tuned\n\n{table}\n\n"
            f"Mean IoU gain: {gain:+.3f} on {metrics['finetuned']['n']} test images. "
            f"Base model: `{metrics['base_model']}` ({metrics['family']}). Stages: {stages}.\n\n"
            "![training loss](loss.png)\n\n![predictions](predictions.png)\n")
    (run_dir / "results.md").write_text(text)
    boxes = {name: [p["predicted"] for p in ev["predictions"]] for name, ev in
             [("base", base_eval), ("fine-tuned", finetuned_eval)]}
    plot_box_grid(samples, boxes, run_dir / "predictions.png")
