"""The pruned search returns the full search's correct-count grid cell for cell, ties and rounding included.

Compared against tests/_search_reference.py (the search as it was: every class scored, argmax) and against a
literal argmax over every class, on random data and on inputs built to tie exactly or to round together.
"""

from __future__ import annotations

import pytest
import torch
from _search_reference import reference_tip_adapter, reference_tip_x

from clipadapt.eval import search
from clipadapt.eval.search import _plane_correct, search_tip_adapter, search_tip_x
from clipadapt.methods.tip_adapter import TipAdapter
from clipadapt.methods.tip_x import TipX


@pytest.fixture(autouse=True)
def always_prune(monkeypatch):
    """Prune even the small planes used here (by default planes under 100 points score every class)."""
    monkeypatch.setattr(search, "PRUNE_MIN_POINTS", 0)


def _literal(z, a, k, labels, alphas, gammas):
    """Every (α, γ) point, every class: (z + α·a) − γ·k, first maximum, compared with the label."""
    out = torch.zeros(len(alphas), len(gammas), dtype=torch.long)
    for i, al in enumerate(alphas):
        for j, ga in enumerate(gammas):
            logits = z + torch.tensor(al, dtype=z.dtype) * a
            if k is not None:
                logits = logits - torch.tensor(ga, dtype=z.dtype) * k
            out[i, j] = int((logits.argmax(1) == labels).sum())
    return out


def _plane(z, a, k, labels, alphas, gammas, budget=2**25):
    al = torch.tensor(alphas, dtype=z.dtype).view(-1, 1, 1, 1)
    ga = torch.tensor(gammas, dtype=z.dtype).view(1, -1, 1, 1)
    return _plane_correct(z, a, k, labels, al, ga, budget)


def _data(seed, c=9, k_shots=3, n_val=120, d=16, noise=1.2, dup=False):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(c, d, generator=g)
    if dup:  # classes 1 and 4 identical to 0 and 3 (same text, same shots): exact ties everywhere
        protos[1], protos[4] = protos[0], protos[3]
    yk = torch.arange(c).repeat_interleave(k_shots)
    keys = protos[yk] + noise * torch.randn(c * k_shots, d, generator=g)
    if dup:
        for src, dst in ((0, 1), (3, 4)):
            keys[yk == dst] = keys[yk == src]
    yv = torch.randint(c, (n_val,), generator=g)
    val = protos[yv] + noise * torch.randn(n_val, d, generator=g)
    return protos, keys, yk, val, yv


@pytest.mark.parametrize("seed,dup", [(0, False), (1, False), (2, True), (3, True)])
def test_tip_x_grid_equals_the_full_search_every_cell(seed, dup):
    protos, keys, yk, val, yv = _data(seed, dup=dup)
    grid = dict(alphas=[0.0, 0.1, 1.0, 5.0, 50.0], betas=[0.0, 1.0, 5.5, 30.0], gammas=[0.0, 0.1, 3.0, 30.0])
    model = TipX().fit(keys, yk, protos)
    for chunk in (None, 17):
        new = search_tip_x(model, val, yv, chunk_size=chunk, **grid)
        assert torch.equal(new.correct, reference_tip_x(model, val, yv, chunk_size=chunk, **grid))


@pytest.mark.parametrize("seed,dup", [(0, False), (5, True)])
def test_tip_grid_equals_the_full_search_every_cell(seed, dup):
    protos, keys, yk, val, yv = _data(seed, dup=dup)
    grid = dict(alphas=[0.0, 0.05, 0.5, 1.17, 3.0, 20.0], betas=[0.0, 0.1, 1.0, 7.0, 20.0])
    model = TipAdapter().fit(keys, yk, protos)
    assert torch.equal(search_tip_adapter(model, val, yv, **grid).correct, reference_tip_adapter(model, val, yv, **grid))


def test_plus_plus_grids_equal_the_full_search():
    protos, keys, yk, val, yv = _data(6)
    a_keys, a_val = keys + 0.5 * torch.randn_like(keys), val + 0.5 * torch.randn_like(val)
    grid = dict(alphas=[0.0, 1.0, 9.0], betas=[1.0, 8.0], gammas=[0.0, 2.0, 25.0])
    tx = TipX().fit(keys, yk, protos, adapted_keys=a_keys)
    assert torch.equal(search_tip_x(tx, val, yv, adapted_val_features=a_val, **grid).correct,
                       reference_tip_x(tx, val, yv, adapted_val_features=a_val, **grid))
    ta = TipAdapter().fit(keys, yk, protos, adapted_keys=a_keys)
    tip = dict(alphas=grid["alphas"], betas=grid["betas"])
    assert torch.equal(search_tip_adapter(ta, val, yv, adapted_val_features=a_val, **tip).correct,
                       reference_tip_adapter(ta, val, yv, adapted_val_features=a_val, **tip))


@pytest.mark.parametrize("seed", range(6))
def test_plane_equals_literal_argmax_on_integer_ties(seed):
    """z, a, k from a few integers: many classes tie exactly at many (α, γ), in every index order."""
    g = torch.Generator().manual_seed(seed)
    rows, c = 300, 7
    z, a, k = (torch.randint(0, 3, (rows, c), generator=g).float() for _ in range(3))
    labels = torch.randint(c, (rows,), generator=g)
    alphas, gammas = [0.0, 0.5, 1.0, 2.0, 3.0], [0.0, 0.5, 1.0, 2.0]
    assert torch.equal(_plane(z, a, k, labels, alphas, gammas), _literal(z, a, k, labels, alphas, gammas))
    assert torch.equal(_plane(z, a, None, labels, alphas, [0.0]), _literal(z, a, None, labels, alphas, [0.0]))
    # tiny budget: contested rows split into many groups of different widths
    assert torch.equal(_plane(z, a, k, labels, alphas, gammas, budget=1), _literal(z, a, k, labels, alphas, gammas))


@pytest.mark.parametrize("seed", range(4))
def test_plane_equals_literal_argmax_when_rounding_merges_logits(seed):
    """Large α·a absorbs 1-ulp differences of z: classes strictly ahead in z tie after rounding."""
    g = torch.Generator().manual_seed(seed)
    rows, c = 400, 6
    base = torch.full((rows, c), 24.0)
    z = base + torch.randint(0, 3, (rows, c), generator=g).float() * torch.finfo(torch.float32).eps * 24.0
    a = torch.randint(0, 2, (rows, c), generator=g).float() * 4096.0 + 8192.0
    k = torch.randint(0, 2, (rows, c), generator=g).float() * 0.5
    labels = torch.randint(c, (rows,), generator=g)
    alphas, gammas = [0.0, 1.0, 1.5, 3.0], [0.0, 1e-7, 1.0]
    assert torch.equal(_plane(z, a, k, labels, alphas, gammas), _literal(z, a, k, labels, alphas, gammas))


@pytest.mark.parametrize("seed", range(4))
def test_plane_equals_literal_argmax_when_gamma_k_rounds_away(seed):
    """γ·k below half an ulp of z + α·a: classes apart in k tie after the subtraction."""
    g = torch.Generator().manual_seed(seed)
    rows, c = 400, 5
    ulp = 2.0**-9  # float32 spacing at 2**14
    z = 2.0**14 + torch.randint(0, 2, (rows, c), generator=g).float() * ulp
    a = torch.randint(0, 2, (rows, c), generator=g).float() * ulp
    k = torch.rand(rows, c, generator=g) * ulp
    labels = torch.randint(c, (rows,), generator=g)
    alphas, gammas = [0.0, 0.5, 1.0], [0.0, 0.25, 0.5, 1.0, 2.0]
    assert torch.equal(_plane(z, a, k, labels, alphas, gammas), _literal(z, a, k, labels, alphas, gammas))


def test_plane_equals_literal_argmax_on_random_float64_and_fallbacks():
    g = torch.Generator().manual_seed(9)
    z, a, k = (torch.randn(200, 30, generator=g, dtype=torch.float64) for _ in range(3))
    labels = torch.randint(30, (200,), generator=g)
    for alphas, gammas in (([0.0, 0.3, 2.0, 9.0], [0.0, 0.7, 4.0]), ([-1.0, 0.5], [0.2, -3.0])):  # negatives: fallback
        assert torch.equal(_plane(z, a, k, labels, alphas, gammas), _literal(z, a, k, labels, alphas, gammas))
    a_inf = a.clone()
    a_inf[3, 4] = float("inf")
    assert torch.equal(_plane(z, a_inf, k, labels, [0.5, 2.0], [1.0]), _literal(z, a_inf, k, labels, [0.5, 2.0], [1.0]))
