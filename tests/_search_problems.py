"""Random small search problems and the comparison of the pruned search with the full search on them, shared by
tests/test_search_pruned.py and benchmarks/search_device_check.py."""

from __future__ import annotations

import random

import torch
from _search_reference import reference_tip_adapter, reference_tip_x

from clipadapt.eval import search
from clipadapt.methods.tip_adapter import TipAdapter
from clipadapt.methods.tip_x import TipX


def random_problem(seed: int):
    """A small random search problem: class count, feature size, shot counts (an empty class now and then), data
    scale, validation rows equal to cache keys, a duplicated class, the β grid's shape, the chunk size and the method
    (Tip-Adapter, or Tip-X with γ in the grid) all drawn."""
    rnd, g = random.Random(seed), torch.Generator().manual_seed(seed)
    c, d, n_val = rnd.choice([2, 3, 5, 9]), rnd.choice([4, 8, 16]), rnd.choice([1, 7, 40, 120])
    shots = [rnd.randint(1, 6) for _ in range(c)]
    if rnd.random() < 0.2:
        shots[-1] = 0
    protos = torch.randn(c, d, generator=g)
    if rnd.random() < 0.2:
        protos[1] = protos[0]
    yk = torch.cat([torch.full((s,), i) for i, s in enumerate(shots)])
    noise = rnd.choice([0.3, 1.0, 2.0])
    keys = protos[yk] + noise * torch.randn(len(yk), d, generator=g)
    yv = torch.randint(c, (n_val,), generator=g)
    val = protos[yv] + noise * torch.randn(n_val, d, generator=g)
    if n_val > 3 and rnd.random() < 0.3:
        val[:3] = keys[:3] * rnd.choice([1.0, 2.5])  # cosine 1 within rounding: 1 − cosine may be < 0
    low, high = rnd.choice([(0.1, 7.0), (0.0, 20.0), (1.0, 50.0)])
    n_betas = rnd.choice([3, 9, 17, 40])
    betas = {"linear": search.linear_grid(low, high, n_betas), "linspace": search.linspace_grid(low, high, n_betas),
             "descending": search.linspace_grid(low, high, n_betas)[::-1],
             "uneven": sorted(rnd.uniform(0, 10) for _ in range(n_betas))}[rnd.choice(["linear", "linspace",
                                                                                       "descending", "uneven"])]
    grid = dict(alphas=rnd.choice([search.linspace_grid(0.0, 20.0, 30), [0.0, 0.5, 3.0]]), betas=betas)
    chunk, tip = rnd.choice([None, 7, 64]), rnd.random() < 0.5
    if not tip:
        grid["gammas"] = [0.0, 1.0, 7.5, 30.0]
    return protos, keys, yk, val, yv, grid, chunk, tip


def both_searches(tip: bool, data, grid: dict, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pruned, full) correct-count grids of Tip-Adapter (`tip`) or Tip-X fitted on data = (text, keys, key labels,
    val, val labels), on the data's device."""
    text, keys, key_labels, val, val_labels = data
    if tip:
        model = TipAdapter().fit(keys, key_labels, text)
        return (search.search_tip_adapter(model, val, val_labels, chunk_size=chunk, **grid).correct,
                reference_tip_adapter(model, val, val_labels, chunk_size=chunk, **grid))
    model = TipX().fit(keys, key_labels, text)
    return (search.search_tip_x(model, val, val_labels, chunk_size=chunk, **grid).correct,
            reference_tip_x(model, val, val_labels, chunk_size=chunk, **grid))
