"""Summary of a suite run: the cells' own numbers as records, mean ± std over seeds, the mean over datasets,
and the published numbers side by side (Δ = ours − published).

The only arithmetic here is aggregation: `records_from_cell` copies numbers out of each cell's results (what the
single command wrote), `aggregate` averages them. Per (task, backbone, method, shots, metric):
- per dataset: mean and sample std over the seeds run;
- mean over datasets: for each seed, the mean over the datasets that have it; then mean ± std of those over seeds
  (with every seed of every dataset present this mean equals the mean of the per-dataset means).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from clipadapt.errors import ConfigError
from clipadapt.fileio import atomic_write_bytes
from clipadapt.report.imo_analysis import write_imo_correlation
from clipadapt.report.plots import line_plot, pyplot, save_figure
from clipadapt.report.provenance import path_fingerprint, provenance
from clipadapt.report.tables import markdown_table, write_json, write_table

MEAN = "mean"
SUMMARY_SCHEMA = "clipadapt.suite.summary/1"
_GROUP = ("task", "backbone", "method", "shots", "metric")


# ------------------------------------------------------------------------------------------------ records
def records_from_cell(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows {task, dataset, backbone, method, shots, seed, metric, value} of one finished cell file."""
    cell, output = record["cell"], record["result"]["output"]
    base = {"task": cell["label"], "dataset": cell["dataset"], "backbone": cell["backbone"], "seed": cell["seed"]}
    extract = _EXTRACTORS[cell["task"]]
    return [{**base, "shots": None, **row} for row in extract(output, cell)]


def _fewshot(output: dict, cell: dict) -> Iterable[dict]:
    for run in output["runs"]:
        yield {"method": run["method"], "shots": run["shots"], "seed": run["seed"], "metric": "top1",
               "value": run["test_top1"]}


def _dn(output: dict, cell: dict) -> Iterable[dict]:
    yield {"method": cell["method"] or "dn", "metric": "top1", "value": output["top1"]}
    if "without_dn" in output:
        yield {"method": "zeroshot", "metric": "top1", "value": output["without_dn"]["top1"]}
    for name, rows in (output.get("tta") or {}).items():  # dn --tta-compare: the 1-view results of the same run
        yield {"method": f"{cell['method'] or 'dn'} ({name})", "metric": "top1", "value": rows["top1"]}
        if "without_dn" in rows:
            yield {"method": f"zeroshot ({name})", "metric": "top1", "value": rows["without_dn"]["top1"]}


def _retrieval(output: dict, cell: dict) -> Iterable[dict]:
    for method, values in (("clip", output["plain"]), (cell["method"] or "dn", output["dn"]["mean"])):
        for direction in ("i2t", "t2i"):
            for k, v in (values.get(direction) or {}).items():
                yield {"method": method, "metric": f"{direction} {k}", "value": v}


def _captions(output: dict, cell: dict) -> Iterable[dict]:
    for method, corr in output["correlations"].items():
        for name in ("tau_b", "tau_c"):
            yield {"method": method, "metric": name, "value": corr[name]}


def _backbones(output: dict, cell: dict) -> Iterable[dict]:
    for name, acc in output["accuracy"].items():
        yield {"method": name, "metric": "top1", "value": acc}
    yield {"method": "best single", "metric": "top1", "value": output["best_single"]["top1"]}
    yield {"method": "oracle", "metric": "top1", "value": output["oracle_top1"]}
    yield {"method": "oracle", "metric": "synergy", "value": output["synergy"]}
    for name, r in output.get("combinations", {}).items():
        yield {"method": name, "metric": "top1", "value": r["top1"]}


def _imo(output: dict, cell: dict) -> Iterable[dict]:
    for name, r in output["results"].items():
        yield {"method": name, "metric": "overlap", "value": r["overlap"]}
        if "variance" in r:  # mean per-dimension variance of the normalised features (adapters/variance.py)
            yield {"method": name, "metric": "variance", "value": r["variance"]["normalised"]["mean"]}


_EXTRACTORS = {"fewshot": _fewshot, "dn": _dn, "retrieval": _retrieval, "captions": _captions,
               "backbones": _backbones, "imo": _imo}


# ------------------------------------------------------------------------------------------------ aggregation
def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), in plain Python (the report stays torch-free)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _key(row: dict, fields: tuple[str, ...]) -> tuple:
    return tuple(row.get(f) for f in fields)


def aggregate(records: list[dict[str, Any]], datasets: list[str] | None = None) -> list[dict[str, Any]]:
    """Per-dataset rows (mean ± std over seeds), then one 'mean' row per group over datasets (see module doc).

    `datasets`: every dataset of the suite, so a mean over fewer (a failed cell) says so in 'datasets'.
    """
    by_dataset: dict[tuple, dict[Any, float]] = {}
    for r in records:  # one value per seed; a repeated (dataset, seed) keeps the last
        by_dataset.setdefault(_key(r, _GROUP) + (r["dataset"],), {})[r["seed"]] = r["value"]
    rows, groups = [], {}
    for key, per_seed in by_dataset.items():
        mean, std = _mean_std(list(per_seed.values()))
        rows.append({**dict(zip(_GROUP, key[:-1])), "dataset": key[-1], "mean": mean, "std": std,
                     "seeds": len(per_seed)})
        groups.setdefault(key[:-1], {})[key[-1]] = per_seed  # (task, ..., metric) -> {dataset: {seed: value}}
    for key, per_dataset in groups.items():
        seeds = sorted({s for v in per_dataset.values() for s in v}, key=str)
        seed_means = []
        for seed in seeds:
            values = [v[seed] for v in per_dataset.values() if seed in v]
            seed_means.append(sum(values) / len(values))
        mean, std = _mean_std(seed_means)
        total = len(datasets) if datasets else len(per_dataset)
        rows.append({**dict(zip(_GROUP, key)), "dataset": MEAN, "mean": mean, "std": std, "seeds": len(seeds),
                     "datasets": f"{len(per_dataset)}/{total}"})
    return rows


def compare_expected(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each [[expected]] row beside the matching summary row: every key it gives (task, dataset, backbone, method,
    shots, metric; metric defaults to top1) must match. Δ = ours − published; ours is None when not run."""
    out = []
    for exp in expected:
        want = {k: exp[k] for k in ("task", "dataset", "backbone", "method", "shots", "metric") if k in exp}
        want.setdefault("metric", "top1")
        match = next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)
        ours = match["mean"] if match else None
        out.append({**{k: want.get(k) for k in ("task", "dataset", "backbone", "method", "shots", "metric")},
                    "published": exp["value"], "ours": ours, "ours_std": match["std"] if match else None,
                    "delta": None if ours is None else ours - exp["value"], "source": exp.get("source")})
    return out


# ------------------------------------------------------------------------------------------------ writing
def load_records(root: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(suite.json, records of every finished cell, cell states) of a run directory (eval/suite.py's layout)."""
    root = Path(root)
    if not (root / "suite.json").is_file():
        raise ConfigError(f"{root}: no suite.json — not a suite run directory (clipadapt suite run CONFIG --out DIR)")
    suite = json.loads((root / "suite.json").read_text(encoding="utf-8"))
    records, states = [], []
    for c in suite["cells"]:
        rec = _read(root / "cells" / f"{c['key']}.json")
        states.append({"key": c["key"], "state": (rec or {}).get("status", "pending")})
        if rec and rec.get("status") == "done":
            records += records_from_cell(rec)
    return suite, records, states


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(mean: float | None, std: float | None = None, seeds: int = 1) -> str:
    if mean is None:
        return "—"
    return f"{mean:.2f} ± {std:.2f}" if seeds > 1 and std is not None else f"{mean:.2f}"


def pivot(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Markdown view: one row per (task, backbone, method, shots, metric), one column per dataset, then 'mean'."""
    datasets = [d for d in dict.fromkeys(r["dataset"] for r in rows) if d != MEAN] + [MEAN]
    table: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = _key(r, _GROUP)
        row = table.setdefault(key, {k: v for k, v in zip(_GROUP, key) if not (k == "shots" and v is None)})
        row[r["dataset"]] = _fmt(r["mean"], r["std"], r["seeds"])
    return [{**row, **{d: row.get(d, "—") for d in datasets}} for row in table.values()]


def write_suite_report(root: str | Path, *, plots: bool = True, argv: list[str] | None = None) -> list[Path]:
    """summary.json / summary.csv / summary.md (+ expected.* and plots) in the run directory; returns the paths."""
    root = Path(root)
    suite, records, states = load_records(root)
    datasets = list(dict.fromkeys(c["dataset"] for c in suite["cells"]))
    rows = aggregate(records, datasets)
    expected = compare_expected(rows, suite["config"].get("expected", []))
    counts = {s: sum(x["state"] == s for x in states) for s in ("done", "pending", "failed")}
    name = suite["config"].get("name", root.name)
    run_prov = suite.get("provenance") or {}
    summary = {"schema": SUMMARY_SCHEMA, "name": name, "config_file": suite.get("config_file"),
               "suite_provenance": run_prov, "cells": counts, "rows": rows, "expected": expected, "records": records,
               "provenance": provenance(argv, model=run_prov.get("model"), data=str(root / "cells"),
                                        data_fingerprint=path_fingerprint(root / "cells"))}
    written = [write_json(root / "summary.json", summary), write_table(root / "summary.csv", rows)]
    sections = [f"# Suite {name}\n\ncells: {counts['done']} done, {counts['pending']} pending, "
                f"{counts['failed']} failed (`clipadapt suite status {root}`)\n"]
    if rows:
        sections.append("## Results (mean ± std over seeds; 'mean' = mean over datasets)\n\n"
                        + markdown_table(pivot(rows)))
    if expected:
        written.append(write_table(root / "expected.csv", expected))
        sections.append("## Published numbers side by side (Δ = ours − published)\n\n" + markdown_table(expected))
    atomic_write_bytes(root / "summary.md", "\n".join(sections).encode())
    written.insert(2, root / "summary.md")
    written += write_imo_correlation(root, rows, plots=plots)
    return written + (_plots(root, rows) if plots else [])


def _plots(root: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """accuracy vs shots per (task, backbone, dataset) incl. the mean; oracle/NLC bars per backbones task."""
    written = []
    shot_rows = [r for r in rows if r["shots"] is not None and r["metric"] == "top1"]
    for key in dict.fromkeys((r["task"], r["backbone"], r["dataset"]) for r in shot_rows):
        sel = [r for r in shot_rows if (r["task"], r["backbone"], r["dataset"]) == key]
        name = _safe("_".join(str(k) for k in key if k))
        written.append(line_plot(sel, "shots", "mean", "method", root / "plots" / f"{name}.png", yerr="std",
                                 ylabel="test top-1 (%)", xlabel="shots per class", logx=True,
                                 title=" ".join(str(k) for k in key if k)))
    for task in dict.fromkeys(r["task"] for r in rows if r["method"] == "oracle"):
        written.append(_synergy_bars(root / "plots" / f"{_safe(task)}_oracle_nlc.png",
                                     [r for r in rows if r["task"] == task and r["metric"] == "top1"]))
    return written


def _synergy_bars(path: Path, rows: list[dict[str, Any]]) -> Path:
    methods = [m for m in ("best single", "oracle", "nlc") if any(r["method"] == m for r in rows)]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(datasets)), 4))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        values = [next((r["mean"] for r in rows if r["dataset"] == d and r["method"] == m), 0.0) for d in datasets]
        ax.bar([j + i * width for j in range(len(datasets))], values, width, label=m)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(datasets))], datasets, rotation=30)
    ax.set_ylabel("top-1 (%)")
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
