"""IMO metric throughput: exact chunked computation vs seeded pair sampling, and vs a naive numpy reference.

    PYTHONPATH=src python benchmarks/imo_overlap.py [--sizes 2000,10000,20000] [--dim 512] [--device cpu]

Clustered synthetic embeddings (C classes, Gaussian around class prototypes). Prints a table and writes
benchmarks/results/imo_overlap.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from clipadapt.adapters import imo_overlap
from clipadapt.report import markdown_table, write_json


def clustered(n: int, dim: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, dim, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return protos[labels] + 3.0 * torch.randn(n, dim, generator=g), labels


def naive_numpy(x: torch.Tensor, y: torch.Tensor, bins: int) -> float:
    """Full N x N matrix, boolean masks, np.histogram(density=True): the textbook way (O(N^2) memory)."""
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    sims = xn @ xn.T
    iu = np.triu_indices(len(xn), k=1)
    s, same = sims[iu], (y.numpy()[:, None] == y.numpy()[None, :])[iu]
    edges = np.linspace(-1, 1, bins + 1)
    p, _ = np.histogram(s[same], bins=edges, density=True)
    u, _ = np.histogram(s[~same], bins=edges, density=True)
    return float(np.sum(np.minimum(p, u) * np.diff(edges)))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,10000,20000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--max-pairs", type=int, default=2_000_000)
    ap.add_argument("--naive-up-to", type=int, default=5000, help="run the numpy reference only up to this N")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "imo_overlap.json")
    args = ap.parse_args()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        x, y = clustered(n, args.dim, args.classes)
        x, y = x.to(args.device), y.to(args.device)
        imo_overlap(x[:200], y[:200])  # warm-up
        exact, t_exact = timed(partial(imo_overlap, x, y, bins=args.bins))
        sampled, t_sampled = timed(partial(imo_overlap, x, y, bins=args.bins, max_pairs=args.max_pairs, seed=0))
        row = {"N": n, "pairs": exact.total_pairs, "exact_s": t_exact,
               "exact_Mpairs_per_s": exact.total_pairs / t_exact / 1e6, "overlap_exact": exact.overlap,
               "sampled_pairs": sampled.n_same + sampled.n_diff if sampled.sampled else None,
               "sampled_s": t_sampled, "overlap_sampled": sampled.overlap,
               "abs_err_sampled": abs(sampled.overlap - exact.overlap)}
        if n <= args.naive_up_to:
            ref, t_ref = timed(partial(naive_numpy, x.cpu(), y.cpu(), args.bins))
            row.update(naive_s=t_ref, abs_diff_naive=abs(ref - exact.overlap))
        rows.append(row)
        print(markdown_table([row], digits=4), flush=True)
    results = {"benchmark": "imo_overlap", "dim": args.dim, "classes": args.classes, "bins": args.bins,
               "max_pairs": args.max_pairs, "device": args.device, "torch_threads": torch.get_num_threads(),
               "machine": platform.machine(), "processor": platform.processor(), "rows": rows}
    write_json(args.out, results)
    print(markdown_table(rows, digits=4))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
