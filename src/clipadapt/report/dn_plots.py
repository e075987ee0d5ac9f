"""Plot of a DN sweep: metric vs λ and metric vs the number of unlabeled samples (log x), ± std bands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clipadapt.report.plots import pyplot, save_figure


def plot_dn_sweep(rows: Sequence[dict], metrics: Sequence[str], path: str | Path, *, baseline: dict | None = None,
                  title: str = "Distribution Normalization") -> Path:
    """Two panels (λ sweep, sample sweep) from `sweep_dn` rows; `baseline` {metric: value} drawn dashed."""
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 4))
    for ax, sweep, xkey, xlabel in ((axes[0], "lambda", "lambda", "λ"),
                                    (axes[1], "samples", "n_used", "unlabeled samples")):
        part = [r for r in rows if r["sweep"] == sweep]
        for i, m in enumerate(metrics):
            x = [r[xkey] for r in part]
            y = [r[m] for r in part]
            s = [r.get(f"{m} std", 0.0) or 0.0 for r in part]
            color = f"C{i}"
            ax.plot(x, y, marker="o", color=color, label=m)
            ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], color=color, alpha=0.2)
            if baseline and m in baseline:
                ax.axhline(baseline[m], color=color, linestyle="--", linewidth=1, label=f"{m} (CLIP)")
        if sweep == "samples":
            ax.set_xscale("log")
            lam = part[0]["lambda"] if part else ""
            ax.set_title(f"vs samples (λ = {lam})")
        else:
            n = part[0]["n_samples"] if part else ""
            ax.set_title(f"vs λ ({n} samples)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("percent")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)
