"""Tip-Adapter / Tip-X search: the original repositories' loops vs the full vectorised search vs the pruned search.

Three implementations on the same synthetic data, shaped like CoOp datasets (16 shots per class, D = 512):
  pets       C = 37,   N_val = 736,    N_test = 3669
  caltech101 C = 100,  N_val = 1649,   N_test = 2465
  imagenet   C = 1000, N_val = 50,000 (CoOp's ImageNet validates on its test set), timed on --imagenet-rows rows

- `original`: the loops of the papers' code, written here from their description (docs/methods.md §3–§5): Tip-Adapter
  loops β outermost, α inside, and recomputes the whole formula (f Fᵀ, exp(·) L, s·f Wᵀ) at every point; SuS-X's
  Tip-X loops α, β, then γ, recomputing f Fᵀ, exp(·) L, s·f Wᵀ and ψ(M) L per (α, β) (M itself once) and the
  logits per γ. Strict `>`: the first best point in loop order is kept.
- `full`: the previous clipadapt search (tests/_search_reference.py): every (α, γ) point of a β scored on all C
  classes in one broadcast.
- `pruned`: clipadapt.eval.search now (candidate classes only).

The original loop and the full search are timed on a subset of the grid (`*_points_timed`) and their time per point
(per β for the full search) is extrapolated to the whole grid (`*_seconds_full_grid` says "extrapolated"). The
pruned search runs the whole grid except on imagenet (a uniform β sub-grid: every 40th, then every 8th β;
extrapolated per β). Row counts scale every implementation linearly: imagenet's figures are measured on
--imagenet-rows rows and scaled to N_val = 50,000.
Every timing is the median of --repeats runs (3). The full and pruned grids must agree cell for cell on every β
both computed (`identical_cells`).

Ties (pets, caltech101): the number of grid points sharing the best validation count, and the test top-1 over
all of them (min / max / mean / std), with the point kept by grid order and by tie_break="centre".

    python benchmarks/fewshot_search.py [--quick] [--datasets pets,caltech101,imagenet]

    python benchmarks/fewshot_search.py --device cuda     # on a GPU: wall time between synchronisations

Results merge into benchmarks/results/fewshot_search.json under "cpu" or "cuda" (or "*_quick"). The full and the
pruned search have a fixed cost (f Fᵀ, ψ(M) L once) besides their per-β cost: where they are timed on a subset of
β they are timed at two β counts and extrapolated as fixed + per-β·200 (`*_fit`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from _search_reference import reference_tip_adapter, reference_tip_x  # noqa: E402

from clipadapt.argtypes import COUNT  # noqa: E402
from clipadapt.eval.search import TIP_GRID, TIPX_GRID, SearchResult, resolve_grid, search_tip_adapter, search_tip_x  # noqa: E402
from clipadapt.methods.tip_adapter import TipAdapter, cache_affinity, prepare_features  # noqa: E402
from clipadapt.methods.tip_x import TipX, minmax_coefficients  # noqa: E402

TIED_SAMPLE = 1000  # tied points whose test accuracy is computed (a seeded sample when more are tied)
DATASETS = {"pets": (37, 736, 3669), "caltech101": (100, 1649, 2465), "imagenet": (1000, 50000, 50000)}
# what each implementation is timed on, per dataset: β values (full search), (β, α) points / (α, β) pairs (original)
# the full and (on imagenet) the pruned search are timed at two β counts: time = fixed + per-β·count, fitted
TIMED = {"pets": {"full_betas": (5, 10), "tip_points": 100, "tipx_pairs": 20},
         "caltech101": {"full_betas": (2, 4), "tip_points": 40, "tipx_pairs": 8},
         "imagenet": {"full_betas": (1, 2), "tip_points": 2, "tipx_pairs": 1, "pruned_betas": (5, 25)}}
DEVICE = torch.device("cpu")
REPEATS = 3  # runs per timing, the median kept (--repeats)


def synthetic(classes: int, n_val: int, n_test: int, shots: int = 16, dim: int = 512, seed: int = 0):
    """CLIP-like raw features: a shared image direction and a shared text direction (the modality gap), class
    prototypes, noisy text; 20 % of the val/test labels replaced by a random class (an irreducible error, so the
    validation grid has a plateau of tied optima as on real data). Zero-shot ≈ 30–40 %, Tip ≈ 45–55 %, Tip-X ≈ 80 %."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda v: v / v.norm()  # noqa: E731
    m_img, m_txt = unit(torch.randn(dim, generator=g)), unit(torch.randn(dim, generator=g))
    protos = torch.randn(classes, dim, generator=g) / dim**0.5
    text = m_txt + protos + 3.0 * torch.randn(classes, dim, generator=g) / dim**0.5

    def images(labels):
        return m_img + 0.5 * protos[labels] + 1.3 * torch.randn(len(labels), dim, generator=g) / dim**0.5

    def noisy(labels):
        flip = torch.rand(len(labels), generator=g) < 0.2
        return torch.where(flip, torch.randint(classes, (len(labels),), generator=g), labels)

    key_labels = torch.arange(classes).repeat_interleave(shots)
    val_labels = torch.randint(classes, (n_val,), generator=g)
    test_labels = torch.randint(classes, (n_test,), generator=g)
    return (text, images(key_labels), key_labels, images(val_labels), noisy(val_labels), images(test_labels),
            noisy(test_labels))


def timed(fn, device: torch.device | None = None, repeats: int | None = None):
    """(result, seconds): the median of `repeats` runs (default REPEATS: the first run of a process pays one-time
    costs, and a shared box moves single runs by ±25 %). CPU: CPU seconds of this process (one torch thread: on an
    idle machine CPU time = wall time, and on a shared box CPU time is far less disturbed by the other processes than
    wall time is). CUDA: wall seconds between two synchronisations. `device`: default DEVICE."""
    device = DEVICE if device is None else device
    seconds = []
    for _ in range(REPEATS if repeats is None else repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = fn()
            torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        else:
            start = time.process_time()
            out = fn()
            seconds.append(time.process_time() - start)
    return out, statistics.median(seconds)


def fitted(fn, grid_betas: list, counts: tuple[int, int], total: int, pick=None):
    """Time fn on `counts` β values (picked from grid_betas by `pick`, default `spread`); (last result, its betas,
    seconds for `total` β extrapolated as fixed + per-β·total, the fit {fixed, per_beta}). One count ≥ total:
    measured, not fitted."""
    if counts[-1] >= len(grid_betas):
        out, seconds = timed(lambda: fn(list(grid_betas)))
        return out, list(grid_betas), seconds, {"fixed": None, "per_beta": seconds / len(grid_betas)}
    times = []
    for count in counts:
        betas = (pick or spread)(grid_betas, count)
        out, seconds = timed(lambda b=betas: fn(b))
        times.append(seconds)
    per_beta = (times[1] - times[0]) / (counts[1] - counts[0])
    if per_beta <= 0:  # timing noise larger than the β cost (tiny --quick sizes): no fixed part
        per_beta = times[1] / counts[1]
    fixed = max(times[0] - counts[0] * per_beta, 0.0)
    return out, betas, fixed + per_beta * total, {"fixed": fixed, "per_beta": per_beta, "timed": times}


# ------------------------------------------------------------------------------------------------ original loops
def original_tip_loop(model: TipAdapter, val: torch.Tensor, labels: torch.Tensor, points: list[tuple[float, float]]):
    """Tip-Adapter's search: for β: for α: the whole formula recomputed; strict > keeps the first best."""
    f = prepare_features(val)
    best, best_correct, cells = None, -1, []
    for beta, alpha in points:
        affinity = f @ model.keys_.T
        cache = torch.exp(-beta * (1.0 - affinity)) @ model.values_
        logits = model.logit_scale * f @ model.classifier_.T + alpha * cache
        correct = int((logits.argmax(1) == labels).sum())
        cells.append(correct)
        if correct > best_correct:
            best, best_correct = (beta, alpha), correct
    return best, cells


def original_tipx_loop(model: TipX, val: torch.Tensor, labels: torch.Tensor, pairs: list[tuple[float, float]],
                       gammas: list[float]):
    """SuS-X's Tip-X search: for α: for β: affinity, cache, zero-shot and ψ(M) L recomputed; for γ: logits."""
    f = prepare_features(val)
    kl = model.kl_to_keys(val)  # M once, as the original precomputes it
    best, best_correct, cells = None, -1, []
    for alpha, beta in pairs:
        affinity = f @ model.keys_.T
        cache = torch.exp(-beta * (1.0 - affinity)) @ model.values_
        zs = model.logit_scale * f @ model.classifier_.T
        a, b = minmax_coefficients(kl.min(), kl.max(), affinity.min(), affinity.max())
        kl_term = (a * kl + b) @ model.values_
        for gamma in gammas:
            logits = zs + alpha * cache - gamma * kl_term
            correct = int((logits.argmax(1) == labels).sum())
            cells.append(correct)
            if correct > best_correct:
                best, best_correct = (alpha, beta, gamma), correct
    return best, cells


def strided(values: list, count: int) -> list:
    """Every len/count-th value from the first: a uniform sub-grid of a uniform grid (the pruned search steps
    through uniform β grids with one multiplication per exp term, as it does on the whole grid)."""
    return list(values[:: max(1, len(values) // count)])[:count]


def spread(values: list, count: int) -> list:
    """`count` values spread evenly over `values` (first and last included)."""
    if count >= len(values):
        return list(values)
    return [values[round(i * (len(values) - 1) / max(count - 1, 1))] for i in range(count)]


# ------------------------------------------------------------------------------------------------ one dataset
def bench_tip(name: str, data, scale: float, quick: bool) -> dict:
    text, keys, yk, val, yv = data[:5]
    model = TipAdapter().fit(keys, yk, text)
    grid = resolve_grid(TIP_GRID, {})
    nb = len(grid["beta"])
    points = len(grid["alpha"]) * nb
    plan = TIMED[name]
    pruned, pruned_betas, pruned_full_s, pruned_fit = fitted(
        lambda b: search_tip_adapter(model, val, yv, betas=b), grid["beta"], plan.get("pruned_betas", (nb,)), nb,
        strided)
    full, full_betas, full_s, full_fit = fitted(
        lambda b: reference_tip_adapter(model, val, yv, betas=b), pruned_betas, plan["full_betas"], nb)
    cols = [pruned_betas.index(b) for b in full_betas]
    loop_points = [(b, a) for b in full_betas for a in grid["alpha"]][: plan["tip_points"]]
    (_, loop_cells), t_loop = timed(lambda: original_tip_loop(model, val, yv, loop_points))
    loop_s = t_loop / len(loop_points) * points
    pruned_cells = [int(pruned.correct[grid["alpha"].index(a), pruned_betas.index(b)]) for b, a in loop_points]
    return {
        "grid": {k: len(v) for k, v in grid.items()},
        "original_points_timed": len(loop_points), "original_seconds_per_point": t_loop / len(loop_points) * scale,
        "original_seconds_full_grid": loop_s * scale,
        "full_betas_timed": plan["full_betas"], "full_fit": full_fit, "full_seconds_full_grid": full_s * scale,
        "pruned_betas_timed": plan.get("pruned_betas", nb), "pruned_fit": pruned_fit,
        "pruned_seconds_full_grid": pruned_full_s * scale,
        "speedup_vs_original": loop_s / pruned_full_s, "speedup_vs_full": full_s / pruned_full_s,
        "identical_cells": bool(torch.equal(full, pruned.correct[:, cols])),
        "original_cells_differing": sum(x != y for x, y in zip(loop_cells, pruned_cells)),
        "extrapolated": {"original": len(loop_points) < points, "full": len(full_betas) < nb,
                         "pruned": len(pruned_betas) < nb, "rows_scale": scale},
        "result": pruned,
    }


def bench_tipx(name: str, data, scale: float, quick: bool) -> dict:
    text, keys, yk, val, yv = data[:5]
    model = TipX().fit(keys, yk, text)
    grid = resolve_grid(TIPX_GRID, {})
    nb = len(grid["beta"])
    pairs_total = len(grid["alpha"]) * nb
    plan = TIMED[name]
    pruned, pruned_betas, pruned_full_s, pruned_fit = fitted(
        lambda b: search_tip_x(model, val, yv, betas=b), grid["beta"], plan.get("pruned_betas", (nb,)), nb,
        strided)
    full, full_betas, full_s, full_fit = fitted(
        lambda b: reference_tip_x(model, val, yv, betas=b), pruned_betas, plan["full_betas"], nb)
    cols = [pruned_betas.index(b) for b in full_betas]
    pairs = [(a, b) for b in full_betas for a in spread(grid["alpha"], plan["tipx_pairs"])][: plan["tipx_pairs"]]
    (_, loop_cells), t_loop = timed(lambda: original_tipx_loop(model, val, yv, pairs, grid["gamma"]))
    loop_s = t_loop / len(pairs) * pairs_total
    pruned_cells = [int(pruned.correct[grid["alpha"].index(a), pruned_betas.index(b), k])
                    for a, b in pairs for k in range(len(grid["gamma"]))]
    return {
        "grid": {k: len(v) for k, v in grid.items()},
        "original_points_timed": len(pairs) * len(grid["gamma"]),
        "original_seconds_per_point": t_loop / (len(pairs) * len(grid["gamma"])) * scale,
        "original_seconds_full_grid": loop_s * scale,
        "full_betas_timed": plan["full_betas"], "full_fit": full_fit, "full_seconds_full_grid": full_s * scale,
        "pruned_betas_timed": plan.get("pruned_betas", nb), "pruned_fit": pruned_fit,
        "pruned_seconds_full_grid": pruned_full_s * scale,
        "speedup_vs_original": loop_s / pruned_full_s, "speedup_vs_full": full_s / pruned_full_s,
        "identical_cells": bool(torch.equal(full, pruned.correct[:, cols, :])),
        "original_cells_differing": sum(x != y for x, y in zip(loop_cells, pruned_cells)),
        "extrapolated": {"original": len(pairs) < pairs_total, "full": len(full_betas) < nb,
                         "pruned": len(pruned_betas) < nb, "rows_scale": scale},
        "result": pruned,
    }


# ------------------------------------------------------------------------------------------------ ties
def tied_test_accuracy(model, result: SearchResult, test: torch.Tensor, test_labels: torch.Tensor) -> dict:
    """Test top-1 at every tied-best validation point, and at the points the two tie-breaks keep."""
    f_zs = model.zero_shot_logits(test)
    cosine = model.cache_cosine(test)
    kl_term = None
    if isinstance(model, TipX):  # ψ's range over the test matrix, as TipX.predict_logits
        kl = model.kl_to_keys(test)
        a, b = minmax_coefficients(kl.min(), kl.max(), cosine.min(), cosine.max())
        kl_term = a * (kl @ model.values_) + b * model.values_.sum(dim=0)
    points = [tuple(int(i) for i in p) for p in result.tied.nonzero().tolist()]
    if len(points) > TIED_SAMPLE:  # a seeded sample of the tied set, plus the two kept points
        pick = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:TIED_SAMPLE].tolist()
        centre = SearchResult(result.params, result.grid, result.correct, result.n, tie_break="centre")
        points = sorted({points[i] for i in pick} | {result.best_index, centre.best_index})
    by_beta: dict[int, list] = {}
    for p in points:
        by_beta.setdefault(p[1], []).append(p)
    acc = {}
    for j, group in by_beta.items():
        cache = cache_affinity(cosine, result.grid["beta"][j]) @ model.values_
        for p in group:
            logits = f_zs + result.grid["alpha"][p[0]] * cache
            if kl_term is not None:
                logits = logits - result.grid["gamma"][p[2]] * kl_term
            acc[p] = 100.0 * float((logits.argmax(1) == test_labels).double().mean())
    values = list(acc.values())
    centre = SearchResult(result.params, result.grid, result.correct, result.n, tie_break="centre")
    return {"n_tied": result.n_tied, "test_top1_over": len(points), "val_top1": result.best_accuracy,
            "test_top1_min": min(values), "test_top1_max": max(values), "test_top1_mean": statistics.fmean(values),
            "test_top1_std": statistics.pstdev(values),
            "grid_order": {"best": result.best, "test_top1": acc[result.best_index]},
            "centre": {"best": centre.best, "test_top1": acc[centre.best_index]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="pets,caltech101,imagenet")
    parser.add_argument("--imagenet-rows", type=int, default=1000,
                        help="validation rows timed for imagenet (scaled to 50,000)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (data, model and searches on it)")
    parser.add_argument("--repeats", type=COUNT, default=3, help="runs per timing (the median is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fewshot_search.json")
    args = parser.parse_args()
    global DEVICE, REPEATS
    DEVICE = torch.device(args.device)
    REPEATS = args.repeats
    torch.set_num_threads(1)
    cuda = DEVICE.type == "cuda"
    record: dict = {"command": "python benchmarks/fewshot_search.py " + " ".join(sys.argv[1:]),
                    "schema": "clipadapt.bench.fewshot_search/3", "shots": 16, "dim": 512, "dtype": "float32",
                    "device": (torch.cuda.get_device_name(DEVICE) if cuda
                               else platform.processor() or platform.machine()),
                    "cpu_cores": os.cpu_count(), "torch": torch.__version__, "threads": 1,
                    "clock": ("wall time between CUDA synchronisations" if cuda
                              else "process CPU time (time.process_time)"),
                    "repeats": REPEATS, "timing": f"median of {REPEATS} runs of each timed call",
                    "data": "synthetic CLIP-like features, 20 % val/test label noise, seed 0 (see synthetic())",
                    "datasets": {}}
    start = time.perf_counter()
    for name in args.datasets.split(","):
        classes, n_val, n_test = DATASETS[name]
        rows = min(n_val, args.imagenet_rows) if name == "imagenet" else n_val
        if args.quick:
            classes, rows, n_test = min(classes, 20), min(rows, 200), 300
        data = tuple(t.to(DEVICE) for t in synthetic(classes, rows, n_test))
        scale = n_val / rows if not args.quick else 1.0
        with torch.no_grad():
            entry: dict = {"wall_start": time.perf_counter() - start, "classes": classes, "n_val": n_val,
                           "n_val_timed": rows, "n_test": n_test, "cache": classes * 16,
                           "load_average_before": os.getloadavg()}
            for method, bench in (("tip", bench_tip), ("tipx", bench_tipx)):
                out = bench(name, data, scale, args.quick)
                result = out.pop("result")
                if name != "imagenet":
                    model = (TipX() if method == "tipx" else TipAdapter()).fit(data[1], data[2], data[0])
                    out["ties"] = tied_test_accuracy(model, result, data[5], data[6])
                entry[method] = out
                print(name, method, json.dumps(out, indent=1), flush=True)
        record["datasets"][name] = entry
    record["wall_seconds"] = time.perf_counter() - start
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    key = ("cuda" if cuda else "cpu") + ("_quick" if args.quick else "")
    results = {k: v for k, v in results.items() if k != key and v.get("schema", "").endswith("/3")}  # older: replaced
    results[key] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out} ({record['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
