"""Retrieval evaluation: the evaluator of the `mrl` objective, metrics (Recall@k, MRR@10, nDCG@10)
per Matryoshka dim, results.md and plots.

Directions are named after the gallery: "t2i"/"i2t" (text -> target, target -> text), or
"t2v"/"v2t" when any target is a video. A video gallery also gets the order test, per dim:
"order" = the fraction of queries whose own clip scores above the same clip played backwards
(chance 0.5; a model that averages its frames cannot beat it). metrics.json:
{"t2v": {"<dim>": {...}}, "v2t": {...}, "order": {"<dim>": fraction}}.

Metrics follow torchmetrics' retrieval definitions (checked against them in tests/test_mrl.py):
  recall@k  = relevant items in the top k / relevant items
  mrr@10    = 1 / rank of the first relevant item, 0 if it is not in the top 10
  ndcg@10   = DCG@10 / ideal DCG@10 with binary relevance, gains 1/log2(rank + 1)
averaged over queries. They are computed here in one vectorised pass over the (queries, gallery)
score matrix: torchmetrics' per-query grouping takes seconds per (model, direction, dim).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..data.retrieval import RetrievalSample, Target
from ..models.distributed import map_sharded
from ..models.embedding import EncodeSettings, encode, hidden_size, resolve_dims, truncate
from .result import EvalResult, directions_of, stages_line
from .thumbnails import filmstrip, save_retrieval_targets

METRIC_NAMES = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")


def retrieval_metrics(scores: torch.Tensor, relevant: torch.Tensor, top: int = 10) -> dict[str, float]:
    """scores (queries, gallery), relevant (queries, gallery) bool; every query needs >= 1 relevant.
    A gallery smaller than `top` ranks all of it (the @10 metrics are then over the whole gallery)."""
    relevant = relevant.bool()
    top = min(top, scores.shape[1])
    num_relevant = relevant.sum(1).float()  # (queries,)
    if bool((num_relevant == 0).any()):
        raise ValueError("every query needs at least one relevant gallery item")
    order = scores.float().argsort(dim=1, descending=True, stable=True)
    hits = relevant.gather(1, order[:, :top]).float()  # (queries, top): 1 where a relevant item is ranked
    out = {f"recall@{k}": (hits[:, :k].sum(1) / num_relevant).mean().item() for k in (1, 5, 10)}
    first = torch.where(hits.any(1), hits.argmax(1).float() + 1, torch.full_like(num_relevant, math.inf))
    out["mrr@10"] = (1.0 / first).mean().item()  # 1/inf = 0: not in the top 10
    gains = 1.0 / torch.log2(torch.arange(top, dtype=torch.float32) + 2)  # (top,)
    ideal = torch.cumsum(gains, 0)[num_relevant.clamp(max=top).long() - 1]  # (queries,)
    out["ndcg@10"] = ((hits * gains).sum(1) / ideal).mean().item()
    return {name: out[name] for name in METRIC_NAMES}


def metrics_by_dim(queries: torch.Tensor, gallery: torch.Tensor, relevant: torch.Tensor, dims: tuple[int, ...],
                   names: tuple[str, str] = ("t2i", "i2t")) -> dict[str, dict[str, dict[str, float]]]:
    """{"t2i": {"<dim>": metrics}, "i2t": {...}} (or `names`) from full normalised embeddings
    (queries, H), (gallery, H)."""
    forward, backward = names
    result: dict[str, dict] = {forward: {}, backward: {}}
    for dim in dims:
        scores = truncate(queries, dim) @ truncate(gallery, dim).T  # (queries, gallery) cosine
        result[forward][str(dim)] = retrieval_metrics(scores, relevant)
        result[backward][str(dim)] = retrieval_metrics(scores.T, relevant.T)
    return result


def order_by_dim(queries: torch.Tensor, own: torch.Tensor, reversed_: torch.Tensor, dims: tuple[int, ...]
                 ) -> dict[str, float]:
    """{"<dim>": fraction of queries (Q, H) whose own clip (Q, H) scores strictly above it reversed (Q, H)}."""
    return {str(dim): ((truncate(queries, dim) * truncate(own, dim)).sum(-1)
                       > (truncate(queries, dim) * truncate(reversed_, dim)).sum(-1)).float().mean().item()
            for dim in dims}


def directions(gallery: list[Target]) -> tuple[str, str]:
    """How a gallery's two directions are named: t2v/v2t when it holds a video, else t2i/i2t."""
    return ("t2v", "v2t") if any(t.video is not None for t in gallery) else ("t2i", "i2t")


# --- the evaluator --------------------------------------------------------------------------

class RetrievalEvaluator:
    """Text -> target and target -> text retrieval over the test split's own gallery (each sample's
    target once), at every Matryoshka dim."""

    def __init__(self, processor, settings: EncodeSettings, dims: tuple[int, ...] = ()):
        self.processor, self.settings, self.dims = processor, settings, dims

    def evaluate(self, model, samples: list[RetrievalSample], desc: str) -> EvalResult:
        gallery = unique_targets(samples)
        keys = [t.key for t in gallery]
        queries, targets = encode_queries_and_gallery(model, self.processor, samples, gallery, self.settings)
        own = target_rows(samples, gallery)
        relevant = torch.zeros(len(samples), len(keys), dtype=torch.bool)
        relevant[torch.arange(len(samples)), own] = True
        dims = resolve_dims(self.dims, hidden_size(model))
        names = directions(gallery)
        metrics = metrics_by_dim(queries, targets, relevant, dims, names)
        if names[0] == "t2v":
            metrics["order"] = self.order_test(model, samples, queries, targets[own], dims)
        top = (queries @ targets.T).topk(min(10, len(keys)), dim=1).indices  # full dim
        predictions = [{"query": s.query_label, "target": s.target.key, "top10": [keys[j] for j in row]}
                       for s, row in zip(samples, top.tolist())]
        return EvalResult(metrics, predictions, {"gallery_size": len(keys), "num_queries": len(samples)})

    def order_test(self, model, samples: list[RetrievalSample], queries: torch.Tensor, own: torch.Tensor,
                   dims: tuple[int, ...]) -> dict[str, float]:
        """The order test over the queries whose target is a video: own clip vs the same clip reversed."""
        rows = [i for i, s in enumerate(samples) if s.target.video is not None]
        backwards = [Target(text=samples[i].target.text, video=samples[i].target.video.reversed()) for i in rows]
        reversed_ = map_sharded(lambda part: encode_targets(model, self.processor, part, self.settings), backwards,
                                self.settings.batch_size)
        return order_by_dim(queries[rows], own[rows], reversed_, dims)

    def summary(self, metrics: dict, finetuned: EvalResult) -> str:
        forward, backward = directions_of(metrics["finetuned"])
        what = "video" if forward == "t2v" else "image"
        dims = list(metrics["finetuned"][forward])
        full, small = dims[-1], dims[0]
        tuned, base = metrics["finetuned"][forward], metrics["base"][forward]
        keep = tuned[small]["recall@1"] / max(tuned[full]["recall@1"], 1e-9)
        order = "" if "order" not in metrics["finetuned"] else (
            f" Order test (own clip above the same clip reversed; chance 0.5) at dim {full}: "
            f"{metrics['base']['order'][full]:.3f} (base) -> {metrics['finetuned']['order'][full]:.3f} (fine-tuned).")
        return (f"# {metrics['recipe']}: text-{what} retrieval, base vs fine-tuned\n\n"
                f"Gallery: {finetuned.notes['gallery_size']} targets, {finetuned.notes['num_queries']} queries. "
                f"Text->{what} Recall@1 at the full dim {full}: {base[full]['recall@1']:.3f} (base) -> "
                f"{tuned[full]['recall@1']:.3f} (fine-tuned); at dim {small} the fine-tuned model keeps "
                f"{100 * keep:.0f}% of it.{order} Base model: `{metrics['base_model']}` ({metrics['family']}). "
                f"Stages: {stages_line(metrics)}.\n\n{distillation_line(metrics)}"
                f"## Text -> {what}\n\n{retrieval_table(metrics, forward)}\n\n"
                f"## {what.capitalize()} -> text\n\n{retrieval_table(metrics, backward)}"
                + (f"\n\n## Order test\n\n{order_table(metrics)}" if order else ""))

    def write_report(self, run_dir: Path, metrics: dict, base: EvalResult, finetuned: EvalResult,
                     samples: list) -> None:
        """results.md, recall_vs_dim.png and retrievals.png (fine-tuned top 4 for a few queries)."""
        (run_dir / "results.md").write_text(
            f"{self.summary(metrics, finetuned)}\n\n![Recall@1 vs dim](recall_vs_dim.png)\n\n"
            "![training loss](loss.png)\n\n![fine-tuned retrievals](retrievals.png)\n")
        plot_recall_vs_dim(metrics, run_dir / "recall_vs_dim.png")
        plot_retrievals(samples, finetuned.predictions, run_dir / "retrievals.png")
        save_retrieval_targets(run_dir, samples)  # report.html's gallery (vlm-recipes report rebuilds it)


def unique_targets(samples: list[RetrievalSample]) -> list[Target]:
    """The gallery: each sample's target once (equal keys are one item), in first-seen order."""
    seen: dict[str, Target] = {}
    for s in samples:
        seen.setdefault(s.target.key, s.target)
    return list(seen.values())


def target_rows(samples: list[RetrievalSample], gallery: list[Target]) -> torch.Tensor:
    """Each sample's own target as a row of `gallery` (matched by key)."""
    index = {t.key: i for i, t in enumerate(gallery)}
    return torch.tensor([index[s.target.key] for s in samples])


def encode_queries_and_gallery(model, processor, samples: list[RetrievalSample], gallery: list[Target],
                               settings: EncodeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, H) query and (G, H) gallery embeddings. With several processes each encodes 1/N of the
    batches (whole batches, so every row is bit-identical to a one-process encoding)."""
    size = settings.batch_size
    queries = map_sharded(lambda part: encode_queries(model, processor, part, settings), samples, size)
    targets = map_sharded(lambda part: encode_targets(model, processor, part, settings), gallery, size)
    return queries, targets


def encode_queries(model, processor, samples: list[RetrievalSample], settings: EncodeSettings) -> torch.Tensor:
    """(N, H) query embeddings: texts, and video (or image) queries with their optional text."""
    return encode(model, processor, [s.query_text for s in samples], [s.query_visual for s in samples],
                  settings.query_instruction, settings)


def encode_targets(model, processor, targets: list[Target], settings: EncodeSettings) -> torch.Tensor:
    """(N, H) embeddings in `targets` order: images and videos (with their optional text) and text-only
    targets, all with the target instruction (rows are padding-invariant, so they may share a batch)."""
    return encode(model, processor, [t.text for t in targets], [t.visual for t in targets],
                  settings.target_instruction, settings)


def report_rows(metrics: dict) -> list[tuple[str, str]]:
    """(label, metrics.json key) of each model in the report: base, the teacher and the student
    trained without it when distilling (`teacher`, `untaught`), fine-tuned."""
    rows = [("base", "base"), ("teacher", "teacher"), ("untaught student", "untaught"),
            ("distilled student" if "teacher" in metrics and "distillation" in metrics
             and metrics["distillation"]["alpha"] > 0 else "fine-tuned", "finetuned")]
    return [(label, key) for label, key in rows if key in metrics]


def distillation_line(metrics: dict) -> str:
    """One sentence: teacher, untaught and distilled student at the full and the smallest dim."""
    if "teacher" not in metrics:
        return ""
    forward = directions_of(metrics["finetuned"])[0]
    dims = list(metrics["finetuned"][forward])
    parts = []
    for dim in (dims[-1], dims[0]):
        values = ", ".join(f"{label} {metrics[key][forward][dim]['recall@1']:.3f}"
                           for label, key in report_rows(metrics) if key != "base" and dim in metrics[key][forward])
        parts.append(f"dim {dim}: {values}")
    kd = metrics.get("distillation", {})
    what = "video" if forward == "t2v" else "image"
    return (f"Distillation (alpha {kd.get('alpha')}, {kd.get('loss')}, tau {kd.get('temperature')}) from "
            f"`{kd.get('teacher')}`, text->{what} Recall@1 at " + "; ".join(parts) + ".\n\n")


def retrieval_table(metrics: dict, direction: str) -> str:
    dims = list(metrics["base"][direction])
    lines = ["| model | dim | " + " | ".join(METRIC_NAMES) + " |", "|" + "---|" * (len(METRIC_NAMES) + 2)]
    for model, key in report_rows(metrics):
        for dim in dims:
            if dim not in metrics[key][direction]:
                continue  # a teacher with another hidden size is scored at its own dims
            row = metrics[key][direction][dim]
            lines.append(f"| {model} | {dim} | " + " | ".join(f"{row[m]:.3f}" for m in METRIC_NAMES) + " |")
    return "\n".join(lines)


def order_table(metrics: dict) -> str:
    lines = ["| model | dim | own clip above it reversed |", "|---|---|---|"]
    for model, key in (("base", "base"), ("fine-tuned", "finetuned")):
        lines += [f"| {model} | {dim} | {value:.3f} |" for dim, value in metrics[key]["order"].items()]
    return "\n".join(lines)


def plot_recall_vs_dim(metrics: dict, path: Path) -> None:
    """Recall@1 against dim: one panel per direction (t2i, i2t), one colour and marker per model, so a
    base line near 0 cannot hide another direction's or model's."""
    from .plots import plt

    styles = {"base": ("tab:gray", "s", "--"), "teacher": ("tab:green", "^", ":"),
              "untaught": ("tab:orange", "D", "-."), "finetuned": ("tab:blue", "o", "-")}
    directions = directions_of(metrics["finetuned"])
    dims = [int(d) for d in metrics["finetuned"][directions[0]]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, direction in zip(axes, directions):
        for label, key in report_rows(metrics):
            rows = metrics[key][direction]
            colour, marker, style = styles[key]
            ax.plot([int(d) for d in rows], [rows[d]["recall@1"] for d in rows], linestyle=style, marker=marker,
                    color=colour, linewidth=2, markersize=6, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set(xlabel="embedding dim (Matryoshka prefix)", ylim=(-0.02, 1.02), title=f"{direction} Recall@1")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Recall@1")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=9)
    fig.suptitle(f"{metrics['recipe']}: Recall@1 vs dim")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_retrievals(samples: list, predictions: list[dict], path: Path, num: int = 4, top: int = 4) -> None:
    """A few queries and their top `top` targets (a video as a strip of 4 of its frames, left to right
    in time); the right one framed green, others red."""
    from .plots import plt

    by_key = {s.target.key: s.target for s in samples}
    rows = [p for p in predictions[:num]]
    fig, axes = plt.subplots(len(rows), top, figsize=(2.4 * top, 1.9 * len(rows)), squeeze=False)
    for r, pred in enumerate(rows):
        for c, key in enumerate(pred["top10"][:top]):
            ax = axes[r][c]
            target = by_key[key]
            if target.visual is not None:
                ax.imshow(target.image if target.image is not None else filmstrip(target.video))
            else:
                ax.text(0.5, 0.5, target.text[:40], ha="center", va="center", fontsize=6, wrap=True)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if key == pred["target"] else "tab:red")
                spine.set_linewidth(3)
        axes[r][0].set_title(pred["query"][:70], fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
