"""IMO analysis across datasets: does reducing the intra-modal overlap go with a larger accuracy gain?

Per (backbone, dataset) of a suite summary: the IMO overlap of the original and the adapted features (`imo` cells;
reduction = original − adapted, positive when the adapter helps) and the few-shot gain of the adapted cache method
over its plain twin (TA→TA++ by default: mean test top-1 over seeds of tip++ minus tip, per shots and averaged over
the shots run). Across datasets: Pearson r and Spearman ρ with their two-sided p-values (scipy.stats), and a
scatter plot with one labelled point per dataset.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from clipadapt.fileio import atomic_write_bytes
from clipadapt.report.plots import pyplot, save_figure
from clipadapt.report.tables import markdown_table, write_json

MIN_POINTS = 3  # fewer datasets give no meaningful correlation (scipy returns |r| = 1, p = 1 for two)


def overlap_gain_rows(rows: list[dict[str, Any]], *, base: str = "tip", adapted: str = "tip++") -> list[dict[str, Any]]:
    """One row per (backbone, dataset) that has both overlaps and both methods' top-1 (suite summary rows)."""
    overlap: dict[tuple, dict[str, float]] = {}
    acc: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in rows:
        if r["dataset"] == "mean":
            continue
        key = (r["backbone"], r["dataset"])
        if r["metric"] == "overlap" and r["method"] in ("original", "adapted"):
            overlap.setdefault(key, {})[r["method"]] = r["mean"]
        elif r["metric"] == "top1" and r["method"] in (base, adapted) and r["shots"] is not None:
            acc.setdefault(key, {}).setdefault(r["method"], {})[r["shots"]] = r["mean"]
    out = []
    for key in overlap:
        o, a = overlap[key], acc.get(key, {})
        if len(o) < 2 or base not in a or adapted not in a:
            continue
        shots = sorted(set(a[base]) & set(a[adapted]))
        if not shots:
            continue
        gains = {k: a[adapted][k] - a[base][k] for k in shots}
        out.append({"backbone": key[0], "dataset": key[1], "overlap_original": o["original"],
                    "overlap_adapted": o["adapted"], "overlap_reduction": o["original"] - o["adapted"],
                    **{f"gain_{k}shot": g for k, g in gains.items()}, "gain_mean": sum(gains.values()) / len(gains)})
    return out


def correlation(x: list[float], y: list[float]) -> dict[str, Any]:
    """Pearson r and Spearman ρ of x and y with two-sided p-values; None values below MIN_POINTS points."""
    from scipy import stats

    n = len(x)
    if n < MIN_POINTS:
        return {"n": n, "pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None,
                "note": f"needs at least {MIN_POINTS} datasets"}
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    clean = lambda v: None if v is None or math.isnan(float(v)) else float(v)  # noqa: E731 (constant input: nan)
    return {"n": n, "pearson_r": clean(pearson[0]), "pearson_p": clean(pearson[1]),
            "spearman_rho": clean(spearman[0]), "spearman_p": clean(spearman[1])}


def write_imo_correlation(root: Path, rows: list[dict[str, Any]], *, plots: bool = True) -> list[Path]:
    """imo_correlation.json/.md and imo_correlation_<pair>.png when the summary has overlaps and paired methods."""
    written: list[Path] = []
    report: dict[str, Any] = {}
    sections = []
    for base, adapted in (("tip", "tip++"), ("tipx", "tipx++")):
        table = overlap_gain_rows(rows, base=base, adapted=adapted)
        if not table:
            continue
        name = f"{base}->{adapted}"
        x = [r["overlap_reduction"] for r in table]
        corr = {"gain_mean": correlation(x, [r["gain_mean"] for r in table])}
        for key in [k for k in table[0] if k.startswith("gain_") and k != "gain_mean"]:
            if all(key in r for r in table):
                corr[key] = correlation(x, [r[key] for r in table])
        report[name] = {"per_dataset": table, "correlation": corr}
        sections.append(f"## {name}: overlap reduction vs accuracy gain\n\n{markdown_table(table, digits=4)}\n"
                        f"{markdown_table([{'gain': k, **v} for k, v in corr.items()], digits=4)}")
        if plots:
            written.append(_scatter(root / f"imo_correlation_{base}.png", table, corr["gain_mean"], name))
    if not report:
        return []
    written.insert(0, write_json(root / "imo_correlation.json", report))
    atomic_write_bytes(root / "imo_correlation.md",
                       ("# IMO overlap reduction vs accuracy gain\n\n" + "\n".join(sections)).encode())
    written.insert(1, root / "imo_correlation.md")
    return written


def _scatter(path: Path, table: list[dict[str, Any]], corr: dict[str, Any], name: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x, y = [r["overlap_reduction"] for r in table], [r["gain_mean"] for r in table]
    ax.scatter(x, y)
    for r, xi, yi in zip(table, x, y):
        ax.annotate(r["dataset"], (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("IMO overlap reduction (original − adapted)")
    ax.set_ylabel(f"top-1 gain {name} (points, mean over shots)")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    ax.set_title(f"Pearson r {fmt(corr['pearson_r'])} (p {fmt(corr['pearson_p'])}), "
                 f"Spearman ρ {fmt(corr['spearman_rho'])} (p {fmt(corr['spearman_p'])})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
