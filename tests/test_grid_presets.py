"""Grid presets reproduce each paper's grid and tie order; tie counting and the 'centre' tie-break
(docs/methods.md §5)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipadapt.cli import main
from clipadapt.errors import ConfigError
from clipadapt.eval.fewshot import FewShotConfig
from clipadapt.eval.search import SearchResult, grid_preset, search_tip_adapter
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.methods.tip_adapter import TipAdapter


def test_tip_adapter_preset_is_its_grid_with_beta_outermost():
    space = grid_preset("tip-adapter")["tip"]
    # the original's list comprehensions: i * (scale - 0.1) / step + 0.1
    assert space.grid["beta"] == [i * (7 - 0.1) / 200 + 0.1 for i in range(200)]
    assert space.grid["alpha"] == [i * (3 - 0.1) / 20 + 0.1 for i in range(20)]
    assert space.order == ("beta", "alpha")


def test_sus_x_preset_is_its_grid_with_alpha_then_beta_then_gamma():
    space = grid_preset("sus-x")["tipx"]
    assert space.grid["alpha"] == [i * (50 - 0.1) / 20 + 0.1 for i in range(20)]
    assert space.grid["beta"] == [i * (50 - 1) / 200 + 1 for i in range(200)]
    assert space.grid["gamma"] == [i * (30 - 0.1) / 50 + 0.1 for i in range(50)]
    assert space.order == ("alpha", "beta", "gamma")
    assert grid_preset("sus-x")["tip"] == grid_preset("tip-adapter")["tip"]


def test_imo_preset_is_linspace_with_zero_and_alpha_outermost():
    spaces = grid_preset("imo")
    for family in ("tip", "tipx"):
        assert spaces[family].grid["alpha"] == np.linspace(0, 20, 200).tolist()
        assert spaces[family].grid["beta"] == np.linspace(0, 20, 20).tolist()
        assert spaces[family].order[0] == "alpha"
    assert spaces["tipx"].grid["gamma"] == np.linspace(0, 30, 50).tolist()
    assert spaces["tipx"].grid["gamma"][0] == 0.0 and spaces["tipx"].grid["gamma"][-1] == 30.0
    with pytest.raises(ConfigError, match="unknown grid preset"):
        grid_preset("coop")


def _paper_loop(correct: torch.Tensor, params, order):
    """The papers' nested loops in `order`, keeping a point only when strictly better."""
    best, best_index = -1, None
    shape = dict(zip(params, correct.shape))
    for idx in np.ndindex(*[shape[p] for p in order]):
        at = dict(zip(order, idx))
        full = tuple(at[p] for p in params)
        if int(correct[full]) > best:
            best, best_index = int(correct[full]), full
    return best_index


@pytest.mark.parametrize("order", [("alpha", "beta", "gamma"), ("beta", "alpha", "gamma"), ("gamma", "beta", "alpha")])
def test_grid_order_tie_rule_is_the_papers_strict_loop(order):
    g = torch.Generator().manual_seed(3)
    params = ("alpha", "beta", "gamma")
    for _ in range(20):
        correct = torch.randint(0, 3, (4, 5, 3), generator=g)  # many tied maxima
        grid = {p: list(range(n)) for p, n in zip(params, correct.shape)}
        result = SearchResult(params, grid, correct, n=10, order=order)
        assert result.best_index == _paper_loop(correct, params, order)
        assert result.n_tied == int((correct == correct.max()).sum())


def test_tip_adapter_order_keeps_the_smallest_beta_where_alpha_major_keeps_the_smallest_alpha():
    correct = torch.tensor([[0, 5, 1], [5, 0, 0]])  # (alpha, beta): ties at (0, 1) and (1, 0)
    grid = {"alpha": [1.0, 2.0], "beta": [1.0, 2.0, 3.0]}
    assert SearchResult(("alpha", "beta"), grid, correct, 10).best == {"alpha": 1.0, "beta": 2.0}
    assert SearchResult(("alpha", "beta"), grid, correct, 10,
                        order=("beta", "alpha")).best == {"alpha": 2.0, "beta": 1.0}


def test_centre_tie_break_keeps_the_middle_of_the_largest_tied_region():
    correct = torch.zeros(7, 6, dtype=torch.long)
    correct[0, 0:2] = 9  # a region of 2, first in grid order
    correct[2:5, 2:5] = 9  # a 3 × 3 plateau: centre (3, 3)
    correct[6, 5] = 9
    grid = {"alpha": list(range(7)), "beta": list(range(6))}
    result = SearchResult(("alpha", "beta"), grid, correct, 10, tie_break="centre")
    assert result.best_index == (3, 3) and result.n_tied == 12
    assert SearchResult(("alpha", "beta"), grid, correct, 10).best_index == (0, 0)
    correct[2:5, 2:5] = 0
    correct[3, 1:5] = 9  # a 1 × 4 strip: two points equally near its centroid, the first in loop order wins
    assert SearchResult(("alpha", "beta"), grid, correct, 10, tie_break="centre").best_index == (3, 2)
    with pytest.raises(ConfigError, match="tie_break"):
        SearchResult(("alpha", "beta"), grid, correct, 10, tie_break="middle")


def test_search_applies_order_and_tie_break():
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 8, generator=g)
    yk = torch.arange(4).repeat_interleave(2)
    model = TipAdapter().fit(protos[yk] + torch.randn(8, 8, generator=g), yk, protos)
    yv = torch.randint(4, (30,), generator=g)
    val = protos[yv] + torch.randn(30, 8, generator=g)
    # α = 0 ties every β; the tip-adapter order keeps the smallest β of the tie, clipadapt's the first α
    result = search_tip_adapter(model, val, yv, alphas=[0.0, 1e-9], betas=[3.0, 1.0, 2.0], order=("beta", "alpha"))
    assert result.n_tied >= 6 and result.best == {"alpha": 0.0, "beta": 3.0}
    assert result.to_dict()["order"] == ["beta", "alpha"] and result.to_dict()["n_tied"] == result.n_tied


def test_config_takes_a_preset_by_name_and_overrides_single_axes():
    config = FewShotConfig(shots=[1], seeds=[1], methods=["tip", "tipx++"], grid_preset="imo",
                           grids={"tip": {"beta": [1.0, 2.0]}}, tie_break="centre")
    assert config.grid("tip") == {"alpha": np.linspace(0, 20, 200).tolist(), "beta": [1.0, 2.0]}
    assert config.search_options("tipx++") == {"order": ("alpha", "beta", "gamma"), "tie_break": "centre"}
    assert FewShotConfig(shots=[1], seeds=[1], methods=["tip"]).search_options("tip")["order"] is None
    with pytest.raises(ConfigError, match="grid preset"):
        FewShotConfig(shots=[1], seeds=[1], methods=["tip"], grid_preset="paper")


def test_cli_records_preset_tie_break_and_tied_optima(tmp_path):
    g = torch.Generator().manual_seed(1)
    protos = torch.randn(3, 6, generator=g)

    def split(n):
        y = torch.arange(3).repeat_interleave(n)
        return FeatureSplit(protos[y] + torch.randn(len(y), 6, generator=g), y)

    save_feature_dir(FeatureSet(["a", "b", "c"], protos, {"train": split(4), "val": split(3), "test": split(3)},
                                {"model": "synthetic"}), tmp_path / "feats")
    assert main(["fewshot", "--features", str(tmp_path / "feats"), "--shots", "1", "--seeds", "1", "--methods", "tip",
                 "--grid-preset", "tip-adapter", "--grid", "tip.beta=1,2", "--tie-break", "centre",
                 "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["grid_preset"] == "tip-adapter" and results["config"]["tie_break"] == "centre"
    hp = results["runs"][0]["hyperparameters"]
    assert hp["order"] == ["beta", "alpha"] and hp["tie_break"] == "centre" and hp["n_tied"] >= 1
    assert hp["grid_size"] == {"alpha": 20, "beta": 2}
