"""Vectorised Tip-Adapter / Tip-X grid search vs a per-grid-point loop, on the same synthetic data in one run.

Sizes (defaults, the issue's): N_val = 5000 validation rows, a cache of 16 shots × 100 classes, D = 512.
The loop scores every grid point through `predict_logits` (re-doing the matrix products, as a straightforward
search does); it is run on a subsample of each grid (every point of the full grids would take hours on CPU)
and the vectorised search is timed on the *same* subgrid — that ratio is the measured speed-up — and on the
full Tip-Adapter grid (20 α × 200 β) and a β-subsampled Tip-X grid (20 α × 200/--tipx-beta-stride β × 50 γ).
Both searches must return the same optimum and the same correct-count table on the shared subgrid.

    python benchmarks/fewshot_search.py [--device cuda] [--n-val 5000] [--quick]

Results merge into benchmarks/results/fewshot_search.json under the device kind ("cpu" / "cuda").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from clipadapt.eval.search import TIP_GRID, TIPX_GRID, linear_grid, search_tip_adapter, search_tip_x  # noqa: E402
from clipadapt.methods.tip_adapter import TipAdapter  # noqa: E402
from clipadapt.methods.tip_x import TipX  # noqa: E402


def synthetic(n_val: int, classes: int, shots: int, dim: int, device: str, seed: int = 0):
    """Class prototypes; text = prototype + noise; images = prototype + stronger noise.

    The noise levels put zero-shot near 50 % and the cache clearly above it, so the grid has a real optimum.
    """
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, dim, generator=g)
    text = protos + 2.0 * torch.randn(classes, dim, generator=g)
    key_labels = torch.arange(classes).repeat_interleave(shots)
    keys = protos[key_labels] + 3.5 * torch.randn(classes * shots, dim, generator=g)
    val_labels = torch.randint(classes, (n_val,), generator=g)
    val = protos[val_labels] + 3.5 * torch.randn(n_val, dim, generator=g)
    return [t.to(device) for t in (text, keys, key_labels, val, val_labels)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def loop_search(model, val, labels, grid: dict[str, list[float]]):
    """Brute force: every grid point through predict_logits; first strictly better point (C order) wins."""
    names = list(grid)
    shape = [len(grid[n]) for n in names]
    correct = torch.zeros(shape, dtype=torch.long)
    best, best_correct = None, -1
    for flat in range(correct.numel()):
        index, rest = [], flat
        for size in reversed(shape):
            rest, i = divmod(rest, size)
            index.append(i)
        index = tuple(reversed(index))
        params = {n: grid[n][i] for n, i in zip(names, index)}
        logits = model.with_params(**params).predict_logits(val)
        correct[index] = int((logits.argmax(1) == labels).sum())
        if correct[index] > best_correct:
            best, best_correct = params, int(correct[index])
    return best, correct


def subsample(values: list[float], count: int) -> list[float]:
    """`count` values spread evenly over `values` (first and last included)."""
    if count >= len(values):
        return list(values)
    return [values[round(i * (len(values) - 1) / (count - 1))] for i in range(count)] if count > 1 else values[:1]


def bench_tip(args, data) -> dict:
    text, keys, key_labels, val, labels = data
    model = TipAdapter().fit(keys, key_labels, text)
    full = {name: linear_grid(*TIP_GRID[name]) for name in ("alpha", "beta")}
    sub = {"alpha": subsample(full["alpha"], args.tip_loop_alphas), "beta": subsample(full["beta"], args.tip_loop_betas)}
    (loop_best, loop_correct), t_loop = timed(lambda: loop_search(model, val, labels, sub), args.device)
    vec_sub, t_vec_sub = timed(lambda: search_tip_adapter(model, val, labels, alphas=sub["alpha"], betas=sub["beta"]), args.device)
    vec_full, t_vec_full = timed(lambda: search_tip_adapter(model, val, labels, alphas=full["alpha"], betas=full["beta"]), args.device)
    points_sub, points_full = len(sub["alpha"]) * len(sub["beta"]), len(full["alpha"]) * len(full["beta"])
    return {
        "grid_full": {k: len(v) for k, v in full.items()},
        "grid_loop": {k: len(v) for k, v in sub.items()},
        "loop_seconds": t_loop,
        "loop_seconds_per_point": t_loop / points_sub,
        "vectorised_seconds_same_grid": t_vec_sub,
        "speedup_same_grid": t_loop / t_vec_sub,
        "vectorised_seconds_full_grid": t_vec_full,
        "loop_seconds_full_grid_projected": t_loop / points_sub * points_full,
        "speedup_full_grid_projected": t_loop / points_sub * points_full / t_vec_full,
        "identical_optimum": loop_best == vec_sub.best,
        "identical_table": bool(torch.equal(loop_correct, vec_sub.correct)),
        "best_same_grid": vec_sub.best,
        "best_full_grid": vec_full.best,
        "val_top1_full_grid": vec_full.best_accuracy,
    }


def bench_tipx(args, data) -> dict:
    text, keys, key_labels, val, labels = data
    model = TipX().fit(keys, key_labels, text)
    full = {name: linear_grid(*TIPX_GRID[name]) for name in ("alpha", "beta", "gamma")}
    sub = {"alpha": subsample(full["alpha"], args.tipx_loop_alphas), "beta": subsample(full["beta"], args.tipx_loop_betas),
           "gamma": subsample(full["gamma"], args.tipx_loop_gammas)}
    big = {"alpha": full["alpha"], "beta": full["beta"][:: args.tipx_beta_stride], "gamma": full["gamma"]}
    (loop_best, loop_correct), t_loop = timed(lambda: loop_search(model, val, labels, sub), args.device)
    vec_sub, t_vec_sub = timed(lambda: search_tip_x(model, val, labels, alphas=sub["alpha"], betas=sub["beta"], gammas=sub["gamma"]), args.device)
    vec_big, t_vec_big = timed(lambda: search_tip_x(model, val, labels, alphas=big["alpha"], betas=big["beta"], gammas=big["gamma"]), args.device)
    points = lambda g: len(g["alpha"]) * len(g["beta"]) * len(g["gamma"])  # noqa: E731
    per_beta_big = t_vec_big / len(big["beta"])
    return {
        "grid_full": {k: len(v) for k, v in full.items()},
        "grid_loop": {k: len(v) for k, v in sub.items()},
        "grid_vectorised_large": {k: len(v) for k, v in big.items()},
        "loop_seconds": t_loop,
        "loop_seconds_per_point": t_loop / points(sub),
        "vectorised_seconds_same_grid": t_vec_sub,
        "speedup_same_grid": t_loop / t_vec_sub,
        "vectorised_seconds_large_grid": t_vec_big,
        "vectorised_seconds_full_grid_projected": per_beta_big * len(full["beta"]),
        "loop_seconds_full_grid_projected": t_loop / points(sub) * points(full),
        "speedup_full_grid_projected": (t_loop / points(sub) * points(full)) / (per_beta_big * len(full["beta"])),
        "identical_optimum": loop_best == vec_sub.best,
        "identical_table": bool(torch.equal(loop_correct, vec_sub.correct)),
        "best_same_grid": vec_sub.best,
        "best_large_grid": vec_big.best,
        "val_top1_large_grid": vec_big.best_accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-val", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tip-loop-alphas", type=int, default=20)
    parser.add_argument("--tip-loop-betas", type=int, default=10)
    parser.add_argument("--tipx-loop-alphas", type=int, default=5)
    parser.add_argument("--tipx-loop-betas", type=int, default=4)
    parser.add_argument("--tipx-loop-gammas", type=int, default=5)
    parser.add_argument("--tipx-beta-stride", type=int, default=20, help="vectorised Tip-X large grid: every k-th β")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "fewshot_search.json")
    args = parser.parse_args()
    if args.quick:
        args.n_val, args.classes, args.dim, args.tipx_beta_stride = 500, 20, 64, 50
    torch.manual_seed(0)
    data = synthetic(args.n_val, args.classes, args.shots, args.dim, args.device)
    with torch.no_grad():
        tip = bench_tip(args, data)
        print(json.dumps({"tip_adapter": tip}, indent=2))
        tipx = bench_tipx(args, data)
        print(json.dumps({"tip_x": tipx}, indent=2))
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    record = {
        "sizes": {"n_val": args.n_val, "classes": args.classes, "shots": args.shots, "dim": args.dim, "dtype": "float32"},
        "device": torch.cuda.get_device_name(args.device) if kind == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "tip_adapter": tip,
        "tip_x": tipx,
    }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[kind + ("_quick" if args.quick else "")] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
