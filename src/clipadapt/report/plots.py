"""Matplotlib plots written to files (Agg backend: no display needed), and the helpers every plot module uses:
`pyplot()` (matplotlib on Agg, imported on first use so importing a report module stays cheap) and
`save_figure` (render, write atomically, close)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt.errors import ConfigError
from clipadapt.fileio import atomic_write_bytes


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (files only, works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: int = 120, **savefig_kwargs: Any) -> Path:
    """Render `fig` in memory (format from the suffix: png/pdf/svg; png without one), write it through a temp file
    + rename (a crash never leaves half an image), and close the figure."""
    path = Path(path)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi, **savefig_kwargs)
        atomic_write_bytes(path, buf.getvalue())
    finally:
        pyplot().close(fig)
    return path


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
    plt = pyplot()
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
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)
