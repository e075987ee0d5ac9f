"""Plots of the backbone-synergy analyses: pairwise heatmaps and accuracy versus cost (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt.report.plots import pyplot, save_figure


def heatmap(matrix: Sequence[Sequence[float]], names: Sequence[str], path: str | Path, *, title: str,
            row_label: str = "", col_label: str = "") -> Path:
    """An annotated B×B heatmap (values in percent) saved as PNG."""
    size = max(4.0, 0.7 * len(names) + 0.08 * max(len(n) for n in names) + 2)
    fig, ax = pyplot().subplots(figsize=(size, size * 0.85))
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w" if v < 0.6 * max(map(max, matrix)) else "k",
                    fontsize=8)
    ax.set_title(title)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path, bbox_inches="tight")


def accuracy_vs_cost(points: Sequence[dict[str, Any]], path: str | Path, *, cost_label: str,
                     cascade: Sequence[dict[str, Any]] = ()) -> Path:
    """Scatter of top-1 vs cost; points are dicts {label, kind, top1, cost}; the cascade is drawn as a line."""
    fig, ax = pyplot().subplots(figsize=(7, 5))
    singles = [p for p in points if p["kind"] == "single"]
    subsets = [p for p in points if p["kind"] == "subset"]
    if subsets:
        ax.scatter([p["cost"] for p in subsets], [p["top1"] for p in subsets], marker=".", color="0.6", alpha=0.6,
                   label="mean of probs, backbone subsets")
    ax.scatter([p["cost"] for p in singles], [p["top1"] for p in singles], marker="o", color="C0",
               label="single backbone")
    for p in singles:
        ax.annotate(p["label"], (p["cost"], p["top1"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    markers = "sD^vP*Xhp<>"
    for i, p in enumerate(q for q in points if q["kind"] == "combiner"):  # one legend entry per combiner
        ax.scatter([p["cost"]], [p["top1"]], marker=markers[i % len(markers)], color=f"C{(i + 1) % 10}",
                   label=p["label"], s=40)
    if cascade:
        ax.plot([c["mean_cost"] for c in cascade], [c["top1"] for c in cascade], "k--", marker="x", label="cascade")
    ax.set_xlabel(cost_label)
    ax.set_ylabel("top-1 (%)")
    ax.set_title("Accuracy vs cost of backbones and their combinations")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(fig, path, bbox_inches="tight")
