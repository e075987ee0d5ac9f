"""`clipadapt suite run` over 6 synthetic feature directories shaped like CoOp datasets × 5 shots × seeds ×
(zeroshot, tip, tipx), and a projection of the full grid: 3 seeds and the *default* search grids.

Each dataset has CoOp's class count and val/test sizes (D = 512, a 10-view train split with 20 images per class).
The default grids are Tip-Adapter's 20 α × 200 β (4,000 points) and Tip-X's 20 α × 200 β × 50 γ (200,000 points);
every point of the Tip-X grid on 2 CPU cores takes hours per dataset, so by default the script runs a documented
subset — seeds 1 only and every `--tip-beta-stride`-th β of Tip-Adapter's grid, every `--tipx-beta-stride`-th β and
`--tipx-gamma-stride`-th γ of Tip-X's — and projects: a cell's search time (its time minus the same dataset's
zero-shot cell, which loads, validates and scores but searches nothing) scales with the number of grid points, and
seeds multiply cells. The projection is an estimate and says so; `--full` runs the real thing.

    python benchmarks/suite.py [--quick] [--full] [--threads 2]

Writes benchmarks/results/suite.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipadapt.cli import main  # noqa: E402
from clipadapt.eval.search import TIP_GRID, TIPX_GRID, linear_grid  # noqa: E402
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir  # noqa: E402

# CoOp split sizes (classes, val, test) of six of its datasets
COOP_SHAPES = {"caltech101": (100, 1649, 2465), "oxford_pets": (37, 736, 3669), "dtd": (47, 1128, 1692),
               "eurosat": (10, 5400, 8100), "fgvc_aircraft": (100, 3333, 3333), "oxford_flowers": (102, 1633, 2463)}
DIM, TRAIN_PER_CLASS, VIEWS = 512, 20, 10


def synthetic_dataset(classes: int, n_val: int, n_test: int, seed: int) -> FeatureSet:
    """Prototypes as text; noisy images around them (zero-shot well below the cache methods)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, DIM, generator=g)
    text = protos + 2.0 * torch.randn(classes, DIM, generator=g)

    def split(labels: torch.Tensor, views: int | None = None) -> FeatureSplit:
        shape = (labels.numel(), views, DIM) if views else (labels.numel(), DIM)
        base = protos[labels].unsqueeze(1) if views else protos[labels]
        return FeatureSplit(base + 3.5 * torch.randn(*shape, generator=g), labels)

    train = split(torch.arange(classes).repeat_interleave(TRAIN_PER_CLASS), VIEWS)
    val = split(torch.arange(n_val) % classes)
    test = split(torch.arange(n_test) % classes)
    return FeatureSet([f"c{i}" for i in range(classes)], text, {"train": train, "val": val, "test": test},
                      {"model": "synthetic-512", "dataset": "synthetic"})


def grid_option(family: str, param: str, values: list[float]) -> str:
    return f"{family}.{param}=" + ",".join(f"{v:.6g}" for v in values)


def config_text(dirs: list[Path], shots: list[int], seeds: list[int], grids: list[str]) -> str:
    datasets = ", ".join(f'"{d}"' for d in dirs)
    grid = ", ".join(f'"{g}"' for g in grids)
    return (f'name = "bench"\n[[task]]\ntask = "fewshot"\ndatasets = [{datasets}]\nmethods = ["zeroshot", "tip", '
            '"tipx"]\n'
            f'shots = {shots}\nseeds = {seeds}\noptions = {{ grid = [{grid}] }}\n')


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 datasets, shots 1,2 (a smoke run)")
    parser.add_argument("--full", action="store_true", help="3 seeds and the full default grids (hours on CPU)")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--tip-beta-stride", type=int, default=40)
    parser.add_argument("--tipx-beta-stride", type=int, default=100)
    parser.add_argument("--tipx-gamma-stride", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "suite.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = dict(list(COOP_SHAPES.items())[:2]) if args.quick else COOP_SHAPES
    shots = [1, 2] if args.quick else [1, 2, 4, 8, 16]
    seeds = [1, 2, 3] if args.full else [int(s) for s in args.seeds.split(",")]
    strides = {"tip.beta": 1, "tipx.beta": 1, "tipx.gamma": 1} if args.full else {
        "tip.beta": args.tip_beta_stride, "tipx.beta": args.tipx_beta_stride, "tipx.gamma": args.tipx_gamma_stride}
    full = {"tip": {k: linear_grid(*v) for k, v in TIP_GRID.items()},
            "tipx": {k: linear_grid(*v) for k, v in TIPX_GRID.items()}}
    used = {fam: {p: vals[:: strides.get(f"{fam}.{p}", 1)] for p, vals in g.items()} for fam, g in full.items()}
    points = {fam: {"full": _count(full[fam]), "run": _count(used[fam])} for fam in full}
    grids = [grid_option(fam, p, vals) for fam, g in used.items() for p, vals in g.items()]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dirs = []
        for i, (name, (c, n_val, n_test)) in enumerate(shapes.items()):
            save_feature_dir(synthetic_dataset(c, n_val, n_test, seed=i), tmp / name)
            dirs.append(tmp / name)
        (tmp / "bench.toml").write_text(config_text(dirs, shots, seeds, grids))
        start = time.perf_counter()
        code = main(["suite", "run", str(tmp / "bench.toml"), "--out", str(tmp / "run"), "--no-plots"])
        wall = time.perf_counter() - start
        cells = [json.loads(p.read_text()) for p in (tmp / "run" / "cells").glob("*.json")]
        summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert code == 0, "a benchmark cell failed"
    measured = {}
    for c in cells:
        key = (c["cell"]["dataset"], c["cell"]["method"])
        measured.setdefault(key, []).append(c["seconds"])
    per_cell = {f"{d}/{m}": sum(v) / len(v) for (d, m), v in sorted(measured.items())}
    projected = 0.0
    for (dataset, method), times in measured.items():
        mean = sum(times) / len(times)
        base = sum(measured[(dataset, "zeroshot")]) / len(measured[(dataset, "zeroshot")])
        scale = 1.0 if method == "zeroshot" else points[method]["full"] / points[method]["run"]
        projected += 3 * (base + max(0.0, mean - base) * scale) if method != "zeroshot" else 3 * mean
    mean_rows = {(r["method"], r["shots"]): round(r["mean"], 2) for r in summary["rows"] if r["dataset"] == "mean"}
    result = {
        "what": "clipadapt suite run over synthetic CoOp-shaped feature directories (fewshot: zeroshot, tip, tipx)",
        "command": "python benchmarks/suite.py " + " ".join(sys.argv[1:]),
        "datasets": {k: {"classes": c, "val": v, "test": t} for k, (c, v, t) in shapes.items()},
        "dim": DIM, "train": f"{TRAIN_PER_CLASS} per class x {VIEWS} views",
        "shots": shots, "seeds_run": seeds, "grid_points": points, "strides": strides,
        "cells_run": len(cells), "wall_seconds": wall, "seconds_per_cell": per_cell,
        "projected_full_seconds": projected if not args.full else wall,
        "projection": ("measured" if args.full else
                       "estimate: 3 seeds x (zero-shot cell time + (cell - zero-shot cell) x full/run grid points)"),
        "mean_over_datasets_top1": {f"{m} {k}-shot": v for (m, k), v in sorted(mean_rows.items())},
        "threads": args.threads, "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()),
        "torch": torch.__version__, "machine": platform.machine(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("cells_run", "wall_seconds", "projected_full_seconds", "grid_points")},
                     indent=1))
    print(f"wrote {args.out}")


def _count(grid: dict[str, list[float]]) -> int:
    n = 1
    for values in grid.values():
        n *= len(values)
    return n


if __name__ == "__main__":
    main_bench()
