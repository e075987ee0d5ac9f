"""Histogram plot of the IMO metric: same-class vs different-class cosine-similarity densities."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from clipadapt.adapters.overlap import IMOResult


def plot_imo_histograms(results: Mapping[str, IMOResult], path: str | Path, *, title: str | None = None) -> Path:
    """One panel per result (e.g. "original", "adapted"): both densities as step histograms, overlap shaded.

    Written as PNG through a temp file + rename, so a crash never leaves half an image.
    """
    import torch

    from clipadapt.report.plots import pyplot, save_figure

    plt = pyplot()
    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        r = results[name]
        edges = r.bin_edges.numpy()
        centers, width = (edges[:-1] + edges[1:]) / 2, edges[1:] - edges[:-1]
        ax.fill_between(centers, torch.minimum(r.same_hist, r.diff_hist).numpy(), step="mid", color="0.8",
                        label=f"overlap {r.overlap:.3f}")
        ax.step(centers, r.same_hist.numpy(), where="mid", color="tab:green", label=f"same class (n={r.n_same:,})")
        ax.step(centers, r.diff_hist.numpy(), where="mid", color="tab:red", label=f"different class (n={r.n_diff:,})")
        lo = edges[:-1][(r.same_hist + r.diff_hist).numpy() > 0]
        hi = edges[1:][(r.same_hist + r.diff_hist).numpy() > 0]
        if lo.size:
            pad = 2 * float(width[0])
            ax.set_xlim(max(-1.0, float(lo.min()) - pad), min(1.0, float(hi.max()) + pad))
        ax.set_title(f"{name}{' (sampled pairs)' if r.sampled else ''}")
        ax.set_xlabel("cosine similarity")
        ax.legend(fontsize=8, loc="upper left")
    axes[0][0].set_ylabel("density")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
