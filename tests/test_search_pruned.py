"""The pruned search returns the full search's correct-count grid cell for cell, ties and rounding included.

Compared against tests/_search_reference.py (the search as it was: every class scored, argmax) and against a
literal argmax over every class, on random data and on inputs built to tie exactly or to round together.
"""

from __future__ import annotations

import pytest
import torch
from _search_problems import both_searches, random_problem
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
    return _literal_hits(z, a, k, labels, alphas, gammas).sum(-1)


def _literal_hits(z, a, k, labels, alphas, gammas):
    """(na, ng, rows) whether the label is the first maximum at each point, literally."""
    out = torch.zeros(len(alphas), len(gammas), z.shape[0], dtype=torch.bool)
    for i, al in enumerate(alphas):
        for j, ga in enumerate(gammas):
            logits = z + torch.tensor(al, dtype=z.dtype) * a
            if k is not None:
                logits = logits - torch.tensor(ga, dtype=z.dtype) * k
            out[i, j] = logits.argmax(1) == labels
    return out


def _decided(shape, points, rows_offset=0):
    """(na, ng, rows) True except at the undecided points (row − rows_offset, α index, γ index)."""
    mask = torch.ones(shape, dtype=torch.bool)
    rows, ai, gi = points
    mask[ai, gi, rows - rows_offset] = False
    return mask


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
    assert torch.equal(search_tip_adapter(model, val, yv, **grid).correct,
                       reference_tip_adapter(model, val, yv, **grid))


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


# ------------------------------------------------------------------------------------------------ matmul-free path
def _uneven(seed, shots=(1, 5, 2, 7, 3, 5, 4), n_val=150, d=12, noise=1.0):
    """Classes with different shot counts (not powers of two), one class without shots at the end."""
    g = torch.Generator().manual_seed(seed)
    c = len(shots) + 1
    protos = torch.randn(c, d, generator=g)
    yk = torch.cat([torch.full((s,), i) for i, s in enumerate(shots)])
    yk = yk[torch.randperm(len(yk), generator=g)]  # keys not sorted by class
    keys = protos[yk] + noise * torch.randn(len(yk), d, generator=g)
    yv = torch.randint(c, (n_val,), generator=g)
    val = protos[yv] + noise * torch.randn(n_val, d, generator=g)
    return protos, keys, yk, val, yv


@pytest.fixture
def exact_calls(monkeypatch):
    """Counts the reference-product fallbacks: (calls, rows) of `_score_exact` (a row per grid point scored)."""
    seen = {"calls": 0, "rows": 0}
    original = search._score_exact

    def counting(*args, rows=None, **kwargs):
        seen["calls"] += 1
        seen["rows"] += args[4].shape[0] if rows is None else rows.numel()
        return original(*args, rows=rows, **kwargs)

    monkeypatch.setattr(search, "_score_exact", counting)
    return seen


@pytest.mark.parametrize("seed", range(3))
def test_uneven_shot_counts_and_an_empty_class_equal_the_full_search(seed, exact_calls):
    protos, keys, yk, val, yv = _uneven(seed)
    grid = dict(alphas=[0.0, 0.3, 2.0, 40.0], betas=[0.0, 0.5, 3.0, 45.0], gammas=[0.0, 0.2, 7.0, 30.0])
    tx = TipX().fit(keys, yk, protos)
    assert search._class_layout(tx.values_) is not None  # the matmul-free path is the one tested
    assert torch.equal(search_tip_x(tx, val, yv, **grid).correct, reference_tip_x(tx, val, yv, **grid))
    tip = dict(alphas=grid["alphas"], betas=grid["betas"])
    ta = TipAdapter().fit(keys, yk, protos)
    assert torch.equal(search_tip_adapter(ta, val, yv, **tip).correct, reference_tip_adapter(ta, val, yv, **tip))
    assert exact_calls["rows"] < 2 * len(yv) * len(grid["betas"])  # most (row, β) decided without the product


def test_zero_only_axes_equal_the_full_search():
    """α = 0 (zero-shot only), β = 0 (every exp term 1), γ = 0 (no ψ term), alone and together."""
    protos, keys, yk, val, yv = _uneven(7)
    tx, ta = TipX().fit(keys, yk, protos), TipAdapter().fit(keys, yk, protos)
    for alphas, betas, gammas in (([0.0], [0.0], [0.0]), ([0.0], [2.0, 9.0], [0.0, 3.0]), ([1.0, 5.0], [0.0], [0.0]),
                                  ([0.0, 4.0], [0.0, 1.0], [0.0])):
        grid = dict(alphas=alphas, betas=betas, gammas=gammas)
        assert torch.equal(search_tip_x(tx, val, yv, **grid).correct, reference_tip_x(tx, val, yv, **grid))
        tip = dict(alphas=alphas, betas=betas)
        assert torch.equal(search_tip_adapter(ta, val, yv, **tip).correct, reference_tip_adapter(ta, val, yv, **tip))


def test_exact_ties_are_left_to_the_reference_product(exact_calls):
    """Duplicated classes tie exactly at every point: those rows must go to the fallback, and still match."""
    protos, keys, yk, val, yv = _data(2, dup=True)
    grid = dict(alphas=[0.0, 1.0, 5.0], betas=[1.0, 5.5], gammas=[0.0, 3.0])
    model = TipX().fit(keys, yk, protos)
    assert torch.equal(search_tip_x(model, val, yv, **grid).correct, reference_tip_x(model, val, yv, **grid))
    assert exact_calls["rows"] > 0


def test_everything_undecided_still_equals_the_full_search(monkeypatch, exact_calls):
    """A huge error bound (and no logit-bounds look) leaves every contested row to the fallback: the fallback alone
    is exact."""
    monkeypatch.setattr(search, "_relative_slack", lambda kmax, dtype: 1e3)
    monkeypatch.setattr(search, "_stepped_slack", lambda *args, **kwargs: 1e3)
    monkeypatch.setattr(search, "_logit_bounds_look", lambda *args: args[7])
    protos, keys, yk, val, yv = _uneven(3)
    grid = dict(alphas=[0.0, 0.5, 9.0], betas=[0.5, 6.0], gammas=[0.0, 1.0, 20.0])
    model = TipX().fit(keys, yk, protos)
    assert torch.equal(search_tip_x(model, val, yv, chunk_size=40, **grid).correct,
                       reference_tip_x(model, val, yv, chunk_size=40, **grid))
    assert exact_calls["rows"] > len(yv)


def test_soft_labels_and_negative_grids_take_the_product_path(exact_calls):
    protos, keys, yk, val, yv = _data(4)
    soft = TipAdapter().fit(keys, yk, protos)
    soft.values_ = 0.9 * soft.values_ + 0.1 / soft.values_.shape[1]  # label smoothing: not one-hot
    assert search._class_layout(soft.values_) is None
    grid = dict(alphas=[0.0, 1.0, 3.0], betas=[1.0, 5.0])
    assert torch.equal(search_tip_adapter(soft, val, yv, **grid).correct, reference_tip_adapter(soft, val, yv, **grid))
    tx = TipX().fit(keys, yk, protos)
    neg = dict(alphas=[-1.0, 2.0], betas=[1.0, 4.0], gammas=[0.5, -2.0])
    assert torch.equal(search_tip_x(tx, val, yv, **neg).correct, reference_tip_x(tx, val, yv, **neg))


def test_class_layout_and_halving_sum_literally():
    values = torch.zeros(6, 3)
    for row, cls in enumerate([2, 0, 2, 2, 0, 1]):
        values[row, cls] = 1.0
    index, pad, kmax = search._class_layout(values)
    assert kmax == 3 and index.shape == (3, 4)  # padded to a power of two
    assert index[0, :2].tolist() == [1, 4] and index[1, :1].tolist() == [5] and index[2, :3].tolist() == [0, 2, 3]
    assert pad.tolist() == [[True, True, False, False], [True, False, False, False], [True, True, True, False]]
    terms = torch.tensor([1.0, 2.0**-24, 2.0**-24, 0.0]).view(1, 4, 1, 1)
    # halving: (1 + 2^-24) rounds to 1, (2^-24 + 0) stays: 1 + 2^-24 again rounds to 1 — in that order
    assert float(search._halving_sum(terms.clone()).flatten()[0]) == 1.0
    assert float(1.0 + torch.tensor(2.0**-24) * 2) > 1.0  # (a different order would give more)


@pytest.mark.parametrize("seed", range(3))
def test_relative_slack_covers_every_summation_order(seed):
    """Sums of the same K non-negative float32 terms in many orders stay within the bound of the halving sum."""
    g = torch.Generator().manual_seed(seed)
    for kmax in (2, 5, 16):
        terms = torch.exp(-30 * torch.rand(400, kmax, generator=g))  # spread over many binades
        padded = torch.zeros(400, 1 << (kmax - 1).bit_length())
        padded[:, :kmax] = terms
        ours = search._halving_sum(padded.T.unsqueeze(0).unsqueeze(-1).clone()).flatten()
        rel = search._relative_slack(kmax, torch.float32)
        for _ in range(20):
            perm = torch.randperm(kmax, generator=g)
            acc = torch.zeros(400)
            for j in perm.tolist():
                acc = acc + terms[:, j]
            assert bool(((acc.double() - ours.double()).abs() <= rel * ours.double()).all())


@pytest.mark.parametrize("seed", range(4))
def test_bounded_plane_decisions_hold_for_any_cache_term_within_the_bound(seed):
    """Points the bounded plane decides are counted exactly as the literal argmax with a perturbed cache term
    a_ref = ã·(1 + δ), |δ| ≤ rel/1.05; undecided points are counted nowhere."""
    g = torch.Generator().manual_seed(seed)
    rows, c = 300, 6
    z = torch.randn(rows, c, generator=g) * 3
    a = torch.rand(rows, c, generator=g) * 4
    k = torch.randn(rows, c, generator=g)
    labels = torch.randint(c, (rows,), generator=g)
    twin = (labels[:20] + 1) % c  # 20 rows where another class ties the label exactly: open at every point
    for t in (z, a, k):
        t[torch.arange(20), twin] = t[torch.arange(20), labels[:20]]
    alphas, gammas = [0.0, 0.5, 1.0, 2.0, 4.0], [0.0, 0.5, 1.0, 3.0]
    rel = search._relative_slack(16, torch.float32)
    al = torch.tensor(alphas).view(-1, 1, 1, 1)
    ga = torch.tensor(gammas).view(1, -1, 1, 1)
    counts, points = search._bounded_plane(z, a, k, labels, torch.zeros(rows, dtype=torch.long), 1, al, ga, rel,
                                           2**20)
    decided = _decided((len(alphas), len(gammas), rows), points)
    hits = _literal_hits(z, a, k, labels, alphas, gammas)
    assert bool((~decided[:, :, :20]).any())  # an exact tie is never a sure win: open, or lost to a third class
    assert not bool((decided & hits)[:, :, :20].any())
    assert int((~decided[:, :, 20:]).sum()) < decided[:, :, 20:].numel() // 100  # elsewhere, a few points at most
    for _ in range(5):
        delta = (torch.rand(rows, c, generator=g) * 2 - 1) * rel / 1.05
        a_ref = (a.double() * (1 + delta.double())).float()
        want = (_literal_hits(z, a_ref, k, labels, alphas, gammas) & decided).sum(-1)
        assert torch.equal(counts[0], want)


# ------------------------------------------------------------------------------------------------ uniform β grids
UNIFORM_BETAS = [search.linear_grid(0.1, 7.0, 40), search.linspace_grid(0.0, 20.0, 20),
                 search.linear_grid(1.0, 50.0, 37)]


@pytest.mark.parametrize("betas", UNIFORM_BETAS, ids=["tip-like", "imo-with-zero", "sus-x-like"])
@pytest.mark.parametrize("seed,dup", [(0, False), (2, True)])
def test_stepped_path_on_uniform_grids_equals_the_full_search(betas, seed, dup):
    """Uniform β grids take the stepped path (one multiplication per exp term and β, anchors every 32nd β)."""
    assert search._uniform_step(betas) is not None
    protos, keys, yk, val, yv = _data(seed, dup=dup)
    tx, ta = TipX().fit(keys, yk, protos), TipAdapter().fit(keys, yk, protos)
    tip = dict(alphas=[0.0, 0.4, 1.5, 3.0, 9.0], betas=betas)
    assert torch.equal(search_tip_adapter(ta, val, yv, **tip).correct, reference_tip_adapter(ta, val, yv, **tip))
    tipx = dict(tip, gammas=[0.0, 0.5, 4.0, 30.0])
    assert torch.equal(search_tip_x(tx, val, yv, **tipx).correct, reference_tip_x(tx, val, yv, **tipx))


@pytest.mark.parametrize("leaps", [True, False])
@pytest.mark.parametrize("descending", [False, True])
def test_stepped_groups_leap_or_step_and_equal_the_full_search(monkeypatch, leaps, descending):
    """Every 1 − cosine ≥ 0: the terms leap a group of β at a time and only the rows its range leaves open are
    stepped β by β; with the leaps turned off every row is stepped at every β (as where some cosine exceeds 1).
    Both equal the full search, on ascending and descending grids."""
    made = []
    original = search._SteppedTerms

    def recording(*args, monotone):
        made.append(original(*args, monotone=monotone and leaps))
        return made[-1]

    monkeypatch.setattr(search, "_SteppedTerms", recording)
    protos, keys, yk, val, yv = _data(5, n_val=200)
    betas = search.linear_grid(0.1, 7.0, 70)
    betas = betas[::-1] if descending else betas
    ta, tx = TipAdapter().fit(keys, yk, protos), TipX().fit(keys, yk, protos)
    tip = dict(alphas=search.linear_grid(0.1, 3.0, 20), betas=betas)
    assert torch.equal(search_tip_adapter(ta, val, yv, **tip).correct, reference_tip_adapter(ta, val, yv, **tip))
    tipx = dict(tip, gammas=[0.0, 0.5, 4.0, 30.0])
    assert torch.equal(search_tip_x(tx, val, yv, **tipx).correct, reference_tip_x(tx, val, yv, **tipx))
    assert len(made) == 2 and all((m.leap is not None) == leaps for m in made)


def test_imo_grid_equals_the_full_search(exact_calls):
    """The IMO preset's own grid (200 α from 0, 20 β from 0, 50 γ): every cell equals the full search, the exact
    ties of duplicated classes left to the reference's products point by point."""
    protos, keys, yk, val, yv = _data(6, dup=True, n_val=60)
    space = search.grid_preset("imo")["tipx"]
    grid = {f"{name}s": values for name, values in space.grid.items()}
    model = TipX().fit(keys, yk, protos)
    ours = search_tip_x(model, val, yv, order=space.order, **grid)
    assert torch.equal(ours.correct, reference_tip_x(model, val, yv, **grid))
    assert exact_calls["rows"] > 0


@pytest.mark.parametrize("seed", range(3))
def test_descending_grid_up_to_large_beta_equals_the_full_search(seed):
    """β from 50 down to 1: exp terms at β = 50 are subnormal, and stepping upward from them would multiply their
    rounding by e^{49 d}; the grid is searched ascending and the counts flipped back."""
    protos, keys, yk, val, yv = _data(seed, c=3, n_val=150, d=4, noise=1.0)  # low D: cosines down to −1
    betas = search.linspace_grid(1.0, 50.0, 9)[::-1]
    model = TipAdapter().fit(keys, yk, protos)
    grid = dict(alphas=search.linspace_grid(0.0, 20.0, 30), betas=betas)
    assert torch.equal(search_tip_adapter(model, val, yv, chunk_size=7, **grid).correct,
                       reference_tip_adapter(model, val, yv, chunk_size=7, **grid))


@pytest.mark.parametrize("seed", range(60))
def test_random_problems_equal_the_full_search(seed):
    protos, keys, yk, val, yv, grid, chunk, tip = random_problem(seed)
    ours, reference = both_searches(tip, (protos, keys, yk, val, yv), grid, chunk)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("seed", range(2))
def test_stepped_path_with_uneven_shots_equals_the_full_search(seed):
    protos, keys, yk, val, yv = _uneven(seed)
    ta = TipAdapter().fit(keys, yk, protos)
    grid = dict(alphas=search.linear_grid(0.1, 3.0, 20), betas=search.linear_grid(0.1, 7.0, 50))
    assert torch.equal(search_tip_adapter(ta, val, yv, **grid).correct, reference_tip_adapter(ta, val, yv, **grid))


def test_uniform_step_literally():
    assert search._uniform_step([0.0, 0.5, 1.0, 1.5]) == 0.5
    assert search._uniform_step([3.0, 2.0, 1.0]) == -1.0  # descending grids step too
    assert search._uniform_step([0.0, 0.5, 1.5]) is None
    assert search._uniform_step([0.0, 1.0]) is None  # two values: nothing to step over


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_stepped_terms_cover_the_reference_product(seed, monotone):
    """ã from the stepped terms stays within `_stepped_slack` of the reference's exp(mul) @ L at every β (anchors
    and up to 31 steps after each), for exp inputs spread like 1 − cosine and β up to 50; each group's range holds
    the reference at every β of the group within `_group_slack` (leaps where every d ≥ 0, steps where some d < 0)."""
    g = torch.Generator().manual_seed(seed)
    c, shots, rows = 7, 5, 60
    values = torch.zeros(c * shots, c)
    values[torch.arange(c * shots), torch.arange(c).repeat_interleave(shots)] = 1.0
    index, pad, kmax = search._class_layout(values)
    distance = 2.0 * torch.rand(rows, c * shots, generator=g) ** 2
    if not monotone:
        distance[::7, ::3] = -1e-3 * torch.rand(distance[::7, ::3].shape, generator=g)  # cosines just over 1
    d3 = distance[:, index].permute(2, 0, 1).contiguous()
    pad = None if pad is None else pad.T.unsqueeze(1)
    betas = search.linear_grid(1.0, 50.0, 45)  # 5 full groups and a last one of 5
    delta = search._uniform_step(betas)
    stepped = search._SteppedTerms(d3, pad, betas, delta, monotone=monotone)
    assert (stepped.leap is not None) == monotone
    dmax = float(d3.abs().max())
    every_row = torch.arange(rows)
    for j0 in range(0, len(betas), search.SETTLE_GROUP):
        n = min(search.SETTLE_GROUP, len(betas) - j0)
        low, high = stepped.group(j0, n)
        ours = stepped.values(every_row, torch.empty(n, rows, c))
        group_rel = search._group_slack(kmax, torch.float32, betas, delta, dmax, j0, j0 + search.SETTLE_GROUP)
        for i in range(n):
            j = j0 + i
            reference = (torch.mul(distance, -betas[j]).exp_() @ values).double()
            rel = search._stepped_slack(kmax, torch.float32, betas, delta, dmax, j)
            assert bool(((reference - ours[i].double()).abs() <= rel * ours[i].double()).all()), j
            slack = group_rel * high.double()
            assert bool((reference >= low.double() - slack).all()) and bool((reference <= high.double() + slack).all())


def test_pair_inputs_are_the_reference_exp_inputs_bit_for_bit():
    """One float32 −β per (β, row) pair multiplies as the reference's `mul` by the scalar −β does."""
    g = torch.Generator().manual_seed(0)
    d3 = 2.0 * torch.rand(8, 300, 11, generator=g) - 0.01
    betas = search.linear_grid(0.1, 7.0, 200) + [1 / 3, 50 / 3, 7.123456789]
    which = torch.randint(len(betas), (500,), generator=g)
    rows = torch.randint(300, (500,), generator=g)
    ours = search._pair_inputs(d3, betas, which, rows)
    for p, (i, r) in enumerate(zip(which.tolist(), rows.tolist())):
        assert torch.equal(ours[:, p], torch.mul(d3[:, r], -betas[i]))


def test_ulp_and_outward_rounding_literally():
    one = torch.tensor([1.0, 0.75, 2.0**-130, 0.0], dtype=torch.float64)
    ulp = search._ulp(one, torch.float32)
    assert ulp.tolist() == [2.0**-23, 2.0**-24, 2.0**-126, 2.0**-126]  # at 1, in [0.5, 1), floored at tiny
    assert float(search._ulp(torch.tensor([1.0 - 2.0**-30], dtype=torch.float64), torch.float32)) == 2.0**-23
    v = torch.tensor([1.0 + 2.0**-30, 1.0, -3.0 - 2.0**-40], dtype=torch.float64)
    assert search._float_below(v, torch.float32).tolist() == [1.0, 1.0, -3.0 - 2.0**-22]
    assert search._float_above(v, torch.float32).tolist() == [1.0 + 2.0**-23, 1.0, -3.0]


@pytest.mark.parametrize("seed", range(3))
def test_logit_bounds_look_decisions_hold_for_every_reference_rounding(seed):
    """Points the logit-bounds look decides are counted exactly as a literal argmax over cache terms made as the
    reference may make them: each float32 exp term off by up to 2 ulp, the K terms summed in a random order."""
    g = torch.Generator().manual_seed(seed)
    c, shots, rows = 5, 4, 80
    values = torch.zeros(c * shots, c)
    values[torch.arange(c * shots), torch.arange(c).repeat_interleave(shots)] = 1.0
    index, pad, kmax = search._class_layout(values)
    distance = 0.6 * torch.rand(rows, c * shots, generator=g)
    distance[:, shots:2 * shots] = distance[:, :shots]  # class 1 ties class 0 exactly
    d3 = distance[:, index].permute(2, 0, 1).contiguous()
    z = torch.randn(rows, c, generator=g) * 0.05
    k = torch.randn(rows, c, generator=g)
    z[:, 1], k[:, 1] = z[:, 0], k[:, 0]
    labels = torch.randint(c, (rows,), generator=g)
    betas, alphas, gammas = [2.0, 6.0], [0.0, 0.3, 1.0, 2.0], [0.0, 0.01, 0.1]
    al = torch.tensor(alphas).view(-1, 1, 1, 1)
    ga = torch.tensor(gammas).view(1, -1, 1, 1)
    pairs, ai, gi = torch.meshgrid(torch.arange(len(betas) * rows), torch.arange(len(alphas)),
                                   torch.arange(len(gammas)), indexing="ij")  # every point of every (β, row)
    counts = torch.zeros(len(alphas), len(betas), len(gammas), dtype=torch.long)
    still = search._logit_bounds_look(d3, None, kmax, z, k, labels, betas, (pairs.flatten(), ai.flatten(),
                                      gi.flatten()), rows, al, ga, counts)
    assert 0 < len(still[0]) < pairs.numel() // 4  # the exact ties stay open, most points are decided
    for _ in range(4):
        for j, beta in enumerate(betas):
            exact = torch.mul(distance, -beta).exp_()
            ulps = torch.randint(-2, 3, exact.shape, generator=g)
            terms = exact
            for _ in range(2):  # move each term by up to 2 float32 steps
                step = torch.where(ulps > 0, torch.nextafter(terms, torch.full_like(terms, 9.0)),
                                   torch.nextafter(terms, torch.zeros_like(terms)))
                terms = torch.where(ulps != 0, step, terms)
                ulps = ulps - ulps.sign()
            a_ref = torch.zeros(rows, c)
            for cls in range(c):
                for col in (cls * shots + torch.randperm(shots, generator=g)).tolist():
                    a_ref[:, cls] = a_ref[:, cls] + terms[:, col]
            at_j = (still[0] >= j * rows) & (still[0] < (j + 1) * rows)
            decided = _decided((len(alphas), len(gammas), rows), tuple(t[at_j] for t in still), j * rows)
            want = (_literal_hits(z, a_ref, k, labels, alphas, gammas) & decided).sum(-1)
            assert torch.equal(counts[:, j, :], want)


def test_logit_bounds_look_decides_most_of_what_the_margins_leave(monkeypatch, exact_calls):
    """Huge margins in the first two looks: the logit-bounds look alone decides most pairs, exactly."""
    monkeypatch.setattr(search, "_relative_slack", lambda kmax, dtype: 1e3)
    monkeypatch.setattr(search, "_stepped_slack", lambda *args, **kwargs: 1e3)
    protos, keys, yk, val, yv = _uneven(3)
    grid = dict(alphas=[0.0, 0.5, 9.0], betas=search.linear_grid(0.5, 6.0, 8), gammas=[0.0, 1.0, 20.0])
    model = TipX().fit(keys, yk, protos)
    assert torch.equal(search_tip_x(model, val, yv, **grid).correct, reference_tip_x(model, val, yv, **grid))
    assert exact_calls["rows"] < len(yv) * len(grid["betas"]) / 10


@pytest.mark.parametrize("seed", range(3))
def test_settle_batch_counts_only_rows_that_win_at_every_beta(seed):
    """Rows settled for a whole batch of β: those counted win at every (α, β, γ) of the batch, those dropped win
    nowhere (literal argmax with each β's own cache term)."""
    g = torch.Generator().manual_seed(seed)
    nb, rows, c = 4, 200, 6
    z = torch.randn(rows, c, generator=g)
    a = torch.rand(nb, rows, c, generator=g) * 3
    k = torch.randn(rows, c, generator=g)
    labels = torch.randint(c, (rows,), generator=g)
    alphas, gammas = [0.0, 0.5, 2.0], [0.0, 0.3, 1.0]
    al, ga = torch.tensor(alphas).view(-1, 1, 1, 1), torch.tensor(gammas).view(1, -1, 1, 1)
    correct = torch.zeros(len(alphas), nb, len(gammas), dtype=torch.long)
    open_rows = search._settle_batch(z, *torch.aminmax(a, dim=0), k, labels, search._Box.of(al, ga, True), 1e-6,
                                     correct)
    closed = torch.ones(rows, dtype=torch.bool)
    closed[open_rows] = False
    assert 0 < int(closed.sum()) < rows
    for j in range(nb):
        literal = torch.stack([torch.stack([(z + al_ * a[j] - ga_ * k).argmax(1) == labels for ga_ in gammas])
                               for al_ in alphas])  # (na, ng, rows)
        always = literal.all(dim=(0, 1)) & closed
        never = (~literal).all(dim=(0, 1)) & closed
        assert bool((always | never)[closed].all())  # every settled row is one or the other
        assert bool((correct[:, j, :] == int(always.sum())).all())
