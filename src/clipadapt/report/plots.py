"""Matplotlib plots written to files (Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clipadapt.errors import ConfigError  # noqa: E402
from clipadapt.features.io import atomic_write_bytes  # noqa: E402


def line_plot(
    rows: Sequence[dict[str, Any]],
    x: str,
    y: str,
    group: str | None,
    path: str | Path,
    *,
    yerr: str | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    logx: bool = False,
) -> Path:
    """One line per value of `group` (or a single line) through the points (row[x], row[y]); PNG/PDF/SVG by suffix.

    `yerr` names an optional column drawn as error bars (e.g. a std over seeds). Points are sorted by x;
    groups keep their first-seen order so the legend follows the table.
    """
    if not rows:
        raise ConfigError(f"line_plot: no rows to plot into {path}")
    missing = [c for c in (x, y, group, yerr) if c and any(c not in r for r in rows)]
    if missing:
        raise ConfigError(f"line_plot: column(s) {missing} missing from some rows (have: {sorted(rows[0])})")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row[group] if group else None, []).append(row)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for name, members in groups.items():
            members = sorted(members, key=lambda r: r[x])
            xs, ys = [r[x] for r in members], [r[y] for r in members]
            errs = [r[yerr] or 0.0 for r in members] if yerr else None
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=None if name is None else str(name))
        if logx:
            ax.set_xscale("log", base=2)
            xticks = sorted({r[x] for r in rows})
            ax.set_xticks(xticks, [str(t) for t in xticks])
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or y)
        if title:
            ax.set_title(title)
        if group:
            ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(path)
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=120)
        atomic_write_bytes(path, buf.getvalue())
    finally:
        plt.close(fig)
    return path
