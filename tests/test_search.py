"""Vectorised grid search against a brute-force loop over every grid point (docs/methods.md §3, §4)."""

from __future__ import annotations

import inspect

import pytest
import torch

from clipadapt.errors import ConfigError
from clipadapt.eval.search import linear_grid, parse_grid, search_tip_adapter, search_tip_x
from clipadapt.methods.tip_adapter import TipAdapter
from clipadapt.methods.tip_x import TipX

C, D, K = 5, 12, 2


def _data(seed=0, n_val=40, views=3, noise=1.4):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=g)
    yk = torch.arange(C).repeat_interleave(K)
    keys = protos[yk].unsqueeze(1) + noise * torch.randn(C * K, views, D, generator=g)
    yv = torch.randint(C, (n_val,), generator=g)
    val = protos[yv] + noise * torch.randn(n_val, D, generator=g)
    return protos, keys, yk, val, yv


def _brute_force(model, val, yv, grid, adapted=None):
    """Every grid point through predict_logits; the first strictly better point (C order) wins."""
    names = list(grid)
    best, best_correct, table = None, -1, {}

    def visit(i, params):
        nonlocal best, best_correct
        if i == len(names):
            logits = model.with_params(**params).predict_logits(val, adapted)
            correct = int((logits.argmax(1) == yv).sum())
            table[tuple(params.values())] = correct
            if correct > best_correct:
                best, best_correct = dict(params), correct
            return
        for v in grid[names[i]]:
            visit(i + 1, {**params, names[i]: v})

    visit(0, {})
    return best, best_correct, table


def test_tip_search_equals_brute_force_loop():
    protos, keys, yk, val, yv = _data()
    grid = {"alpha": [0.1, 0.8, 2.0, 6.0], "beta": [0.5, 1.0, 3.0, 7.0, 12.0]}
    model = TipAdapter().fit(keys, yk, protos)
    result = search_tip_adapter(model, val, yv, alphas=grid["alpha"], betas=grid["beta"])
    best, best_correct, table = _brute_force(model, val, yv, grid)
    assert result.best == best
    assert result.best_accuracy == pytest.approx(100.0 * best_correct / len(yv))
    for i, a in enumerate(grid["alpha"]):
        for j, b in enumerate(grid["beta"]):
            assert int(result.correct[i, j]) == table[(a, b)]


def test_tip_x_search_equals_brute_force_loop_and_does_not_depend_on_chunking():
    protos, keys, yk, val, yv = _data(1)
    grid = {"alpha": [0.1, 1.0, 5.0], "beta": [1.0, 5.0, 20.0], "gamma": [0.1, 2.0, 10.0, 30.0]}
    model = TipX().fit(keys, yk, protos)
    result = search_tip_x(model, val, yv, alphas=grid["alpha"], betas=grid["beta"], gammas=grid["gamma"])
    chunked = search_tip_x(model, val, yv, alphas=grid["alpha"], betas=grid["beta"], gammas=grid["gamma"], chunk_size=7)
    best, best_correct, table = _brute_force(model, val, yv, grid)
    assert result.best == best and chunked.best == best
    assert torch.equal(result.correct, chunked.correct)
    assert {k: int(result.correct[tuple(g.index(v) for g, v in zip(grid.values(), k))]) for k in table} == table


def test_plus_plus_search_equals_brute_force_loop():
    protos, keys, yk, val, yv = _data(2)
    adapted_keys, adapted_val = keys + 0.7 * torch.randn_like(keys), val + 0.7 * torch.randn_like(val)
    grid = {"alpha": [0.5, 3.0], "beta": [1.0, 4.0, 9.0], "gamma": [0.5, 5.0]}
    tx = TipX().fit(keys, yk, protos, adapted_keys=adapted_keys)
    result = search_tip_x(tx, val, yv, alphas=grid["alpha"], betas=grid["beta"], gammas=grid["gamma"],
                          adapted_val_features=adapted_val, chunk_size=9)
    assert result.best == _brute_force(tx, val, yv, grid, adapted_val)[0]
    ta = TipAdapter().fit(keys, yk, protos, adapted_keys=adapted_keys)
    tip_grid = {"alpha": grid["alpha"], "beta": grid["beta"]}
    ta_result = search_tip_adapter(ta, val, yv, alphas=tip_grid["alpha"], betas=tip_grid["beta"],
                                   adapted_val_features=adapted_val)
    assert ta_result.best == _brute_force(ta, val, yv, tip_grid, adapted_val)[0]


def test_ties_go_to_the_first_grid_point_in_alpha_beta_order():
    protos, keys, yk, val, yv = _data(3)
    model = TipAdapter().fit(keys, yk, protos)
    # α = 0 makes every β equally good (pure zero-shot); tiny α do not change the argmax either
    result = search_tip_adapter(model, val, yv, alphas=[0.0, 1e-9], betas=[3.0, 1.0, 2.0])
    assert (result.correct == result.correct[0, 0]).all()
    assert result.best == {"alpha": 0.0, "beta": 3.0}


def test_search_accepts_only_validation_data():
    params = set(inspect.signature(search_tip_adapter).parameters) | set(inspect.signature(search_tip_x).parameters)
    assert not any("test" in p for p in params)


def test_default_grids_are_the_originals():
    betas = linear_grid(0.1, 7.0, 200)
    assert len(betas) == 200 and betas[0] == 0.1 and betas[-1] < 7.0
    assert betas[17] == pytest.approx(17 * (7.0 - 0.1) / 200 + 0.1)
    assert parse_grid("1:3:4") == pytest.approx([1.0, 1.5, 2.0, 2.5])
    assert parse_grid("0.5,2") == [0.5, 2.0]
    with pytest.raises(ConfigError, match="LOW:HIGH:N"):
        parse_grid("1:x:3")


def test_validation_labels_must_match_rows():
    protos, keys, yk, val, yv = _data()
    with pytest.raises(ConfigError, match="validation labels"):
        search_tip_adapter(TipAdapter().fit(keys, yk, protos), val, yv[:3], alphas=[1.0], betas=[1.0])
