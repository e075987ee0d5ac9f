"""The IMO paper's few-shot protocol for Tip-X, search by search: 11 CoOp datasets × shots 1/2/4/8/16 × seeds 1/2/3
× (TX, TX++) = 330 searches on the IMO preset's grid (α linspace(0, 20, 200), β linspace(0, 20, 20),
γ linspace(0, 30, 50): 200,000 points, α outermost), on synthetic CoOp-shaped features (D = 512, the CoOp splits'
class counts and validation sizes). Issue 13's GPU target: the whole protocol for one backbone in under 5 minutes.

    python benchmarks/imo_protocol.py --device cuda --rows 0 --seeds 1,2,3   # the target: every search, every row
    python benchmarks/imo_protocol.py                                        # CPU: an estimate (below)

Only the searches are timed (`search_tip_x` with the preset's grid and loop order; data made and the model fitted
outside the clock). TX++ searches with adapted features: the same images moved by a fixed random perturbation
(an adapter changes the affinities, not the shapes or the work). CPU: CPU seconds of one torch thread; CUDA: wall
seconds between synchronisations. By default on CPU every dataset is timed on at most --rows validation rows and
seed 1 only, and the protocol's time is projected: each search's time × N_val / rows (every part of the search is
linear in the rows) × 3 seeds / seeds run. `projected` says which figures are measured and which are scaled.
Chunks: by default the search keeps the full search's chunk rule (its (α, γ, rows, C) logits block within 2^25
elements: 3 rows on ImageNet with this grid), computed chunk by chunk bit for bit as the full search does; larger
--chunk-size is faster (ImageNet-shaped 16-shot on 1,000 rows, CPU: 256 rows 9.6 s vs 19.5 s) and its grid equals
the full search's at that chunk size, which is not the default's grid bit for bit (BLAS rounding of the chunked
products moves near-tied cells: 25,277 of 200,000 cells by 1–4 of 1,000 rows there).
Results merge into benchmarks/results/imo_protocol.json under "cpu" or "cuda" ("+chunkN" with --chunk-size), written
after every dataset ("complete": false until the last), so a run cut short keeps what it measured.
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
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from fewshot_search import synthetic, timed  # noqa: E402

from clipadapt import __version__  # noqa: E402
from clipadapt.argtypes import COUNT, COUNTS, NON_NEGATIVE_INT  # noqa: E402
from clipadapt.argtypes import SEEDS as SEED_LIST  # noqa: E402
from clipadapt.eval.search import grid_preset, search_tip_x  # noqa: E402
from clipadapt.methods.tip_x import TipX  # noqa: E402

# CoOp's splits (Zhou et al.): classes and validation images (ImageNet validates on its test set); the two largest
# last, so that a run cut short by a timeout has measured the others
COOP_VAL = {"caltech101": (100, 1649), "oxford_pets": (37, 736), "stanford_cars": (196, 1635),
            "oxford_flowers": (102, 1633), "fgvc_aircraft": (100, 3333), "sun397": (397, 3970), "dtd": (47, 1128),
            "eurosat": (10, 5400), "ucf101": (101, 1898), "food101": (101, 20200), "imagenet": (1000, 50000)}
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (1, 2, 3)
TARGET_SECONDS = 300.0


def adapted(features: torch.Tensor, seed: int) -> torch.Tensor:
    """Stand-in adapter output: the same features plus a fixed seeded perturbation."""
    g = torch.Generator().manual_seed(10_000 + seed)
    noise = torch.randn(features.shape, generator=g) / features.shape[1] ** 0.5
    return features + 0.5 * features.norm(dim=1, keepdim=True) * noise.to(features.device)


def one_search(classes: int, rows: int, shots: int, seed: int, plus: bool, device: torch.device,
               chunk_size: int | None) -> dict:
    """Time one TX (or TX++) search of the protocol on `rows` validation rows."""
    text, keys, key_labels, val, val_labels = (t.to(device) for t in synthetic(classes, rows, 1, shots=shots,
                                                                               seed=seed)[:5])
    adapted_keys = adapted(keys, seed) if plus else None
    adapted_val = adapted(val, seed + 1) if plus else None
    model = TipX().fit(keys, key_labels, text, adapted_keys=adapted_keys)
    space = grid_preset("imo")["tipx"]
    result, seconds = timed(lambda: search_tip_x(model, val, val_labels, alphas=space.grid["alpha"],
                                                 betas=space.grid["beta"], gammas=space.grid["gamma"],
                                                 adapted_val_features=adapted_val, order=space.order,
                                                 chunk_size=chunk_size), device, repeats=1)
    return {"seconds": seconds, "val_top1": result.best_accuracy, "n_tied": result.n_tied}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--datasets", default=",".join(COOP_VAL), help="comma-separated CoOp dataset names")
    parser.add_argument("--shots", type=COUNTS, default=list(SHOTS))
    parser.add_argument("--seeds", type=SEED_LIST, default=None, help="default: 1 on CPU, 1,2,3 on CUDA")
    parser.add_argument("--rows", type=NON_NEGATIVE_INT, default=None,
                        help="validation rows timed per dataset, 0 = all (default: 1000 on CPU, all on CUDA)")
    parser.add_argument("--threads", type=COUNT, default=1, help="torch CPU threads")
    parser.add_argument("--chunk-size", type=COUNT, default=None,
                        help="validation rows per search chunk (default: the full search's rule; see the docstring)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "imo_protocol.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    seeds = args.seeds or ([1, 2, 3] if cuda else [1])
    shots = args.shots
    cap = args.rows if args.rows is not None else (0 if cuda else 1000)
    names = args.datasets.split(",")
    unknown = sorted(set(names) - set(COOP_VAL))
    if unknown:
        parser.error(f"--datasets: unknown {unknown}; expected some of {', '.join(COOP_VAL)}")
    start = time.perf_counter()
    key = ("cuda" if cuda else "cpu") + (f"+chunk{args.chunk_size}" if args.chunk_size else "")
    record: dict = {"schema": "clipadapt.bench.imo_protocol/1", "clipadapt": __version__,
                    "command": "python benchmarks/imo_protocol.py " + " ".join(sys.argv[1:]),
                    "device": (torch.cuda.get_device_name(device) if cuda
                               else platform.processor() or platform.machine()),
                    "torch": torch.__version__, "threads": args.threads, "cpu_count": os.cpu_count(),
                    "clock": "wall time between CUDA synchronisations" if cuda else "process CPU time",
                    "grid": "imo preset: α linspace(0, 20, 200), β linspace(0, 20, 20), γ linspace(0, 30, 50)",
                    "data": "synthetic CLIP-like features (benchmarks/fewshot_search.py synthetic()), D = 512",
                    "rows_cap": cap, "chunk_size": args.chunk_size, "seeds_run": seeds, "shots": shots,
                    "target_seconds": TARGET_SECONDS,
                    "datasets": {}}
    total = 0.0
    for name in names:
        classes, n_val = COOP_VAL[name]
        rows = n_val if cap == 0 else min(cap, n_val)
        scale = n_val / rows * len(SEEDS) / len(seeds)
        runs = {f"{variant} {k}-shot": [one_search(classes, rows, k, seed, variant == "TX++", device,
                                                   args.chunk_size) for seed in seeds]
                for k in shots for variant in ("TX", "TX++")}
        measured = sum(r["seconds"] for cell in runs.values() for r in cell)
        entry = {"classes": classes, "n_val": n_val, "rows_timed": rows, "scale": scale,
                 "seconds_measured": measured, "seconds_projected": measured * scale,
                 "searches": {label: {"seconds_mean": statistics.fmean(r["seconds"] for r in cell),
                                      "val_top1": [round(r["val_top1"], 2) for r in cell],
                                      "n_tied": [r["n_tied"] for r in cell]} for label, cell in runs.items()}}
        record["datasets"][name] = entry
        total += entry["seconds_projected"]
        save(args.out, key, {**record, "complete": False, "protocol_seconds_so_far": total})  # a timeout keeps these
        print(f"{name:15s} C={classes:4d} N_val={n_val:6d} rows={rows:6d}  measured {measured:8.1f} s  "
              f"projected {entry['seconds_projected']:8.1f} s", flush=True)
    searches = len(names) * len(shots) * 2 * len(SEEDS)
    record.update({"searches": searches, "protocol_seconds": total,
                   "projected": any(e["scale"] != 1.0 for e in record["datasets"].values()),
                   "meets_target": total < TARGET_SECONDS, "wall_seconds": time.perf_counter() - start})
    print(f"{searches} searches: {total:.0f} s ({'projected' if record['projected'] else 'measured'}); "
          f"target < {TARGET_SECONDS:.0f} s")
    save(args.out, key, {**record, "complete": True})
    print(f"wrote {args.out}")


def save(path: Path, key: str, record: dict) -> None:
    """Merge `record` into the results file under `key` (written after every dataset)."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = record
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
