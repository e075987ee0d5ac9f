"""Vectorised hyper-parameter search for Tip-Adapter(-F) and Tip-X on a validation split (METHODS.md §3, §4).

The search takes a *fitted* estimator (its cache comes from the training shots) and the validation features
and labels — nothing else; it has no access path to a test split. Work per grid point is only what depends
on it: the cosine matrix f Fᵀ and Tip-X's ψ(M) L are computed once, the affinity exp(−β(1 − f Fᵀ)) L once per
β, and since the logits are linear in α (and γ) every α (× γ) is scored with one broadcast. Rows of the
validation split are processed in chunks so the (α, γ, rows, C) logits fit a memory budget; everything runs
on the features' device.

Tie-breaking (deterministic): the accuracy grid is indexed (alpha, beta[, gamma]) in the order the grids are
given; among equal best *counts of correct predictions* the first point in C order wins, i.e. the smallest α
index, then β, then γ. With the default ascending grids that is the weakest cache influence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.methods.tip_adapter import TipAdapter, cache_affinity
from clipadapt.methods.tip_x import TipX, minmax_coefficients

# (low, high, n): n values low + (high − low)·i/n, i = 0..n−1 — the original's grids, high excluded.
TIP_GRID = {"alpha": (0.1, 3.0, 20), "beta": (0.1, 7.0, 200)}
TIPX_GRID = {"alpha": (0.1, 50.0, 20), "beta": (1.0, 50.0, 200), "gamma": (0.1, 30.0, 50)}
DEFAULT_BUDGET = 2**25  # elements per chunk: the (α, γ, rows, C) logits block plus (rows, NK) matrices (128 MiB f32)


@dataclass
class SearchResult:
    """The validation accuracy grid and its best point."""

    params: tuple[str, ...]  # axis names of `accuracy`, e.g. ("alpha", "beta")
    grid: dict[str, list[float]]
    correct: Tensor  # int64 counts of correct validation predictions, one axis per param
    n: int  # validation rows

    @property
    def accuracy(self) -> Tensor:
        """Top-1 validation accuracy in percent over the grid."""
        return 100.0 * self.correct.double() / max(self.n, 1)

    @property
    def best_index(self) -> tuple[int, ...]:
        """First grid point (C order) with the most correct predictions."""
        flat = (self.correct.flatten() == self.correct.max()).nonzero()[0, 0]
        return tuple(int(i) for i in torch.unravel_index(flat, self.correct.shape))

    @property
    def best(self) -> dict[str, float]:
        return {p: self.grid[p][i] for p, i in zip(self.params, self.best_index)}

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy[self.best_index])

    def to_dict(self, *, with_grid: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"best": self.best, "val_top1": self.best_accuracy, "n_val": self.n,
                               "grid_size": {p: len(self.grid[p]) for p in self.params}}
        if with_grid:
            out["grid"] = self.grid
            out["accuracy"] = self.accuracy.tolist()
        return out


# ------------------------------------------------------------------------------------------------ grids
def linear_grid(low: float, high: float, n: int) -> list[float]:
    """n values low + (high − low)·i/n for i = 0..n−1 (the original's `search_scale`/`search_step` grids)."""
    if n < 1:
        raise ConfigError(f"a grid needs at least one value, got n={n}")
    return [low + (high - low) * i / n for i in range(n)]


def parse_grid(spec: str) -> list[float]:
    """'LOW:HIGH:N' (N values, HIGH excluded) or a comma list 'v1,v2,...'."""
    try:
        if ":" in spec:
            low, high, n = spec.split(":")
            return linear_grid(float(low), float(high), int(n))
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"grid '{spec}': expected LOW:HIGH:N or a comma-separated list of numbers") from e
    if not values:
        raise ConfigError(f"grid '{spec}' is empty")
    return values


def resolve_grid(defaults: dict[str, tuple[float, float, int]], given: dict[str, Sequence[float] | None]) -> dict[str, list[float]]:
    """Default grids with user-given axes substituted."""
    out = {}
    for name, default in defaults.items():
        values = given.get(name)
        out[name] = [float(v) for v in values] if values is not None else linear_grid(*default)
        if not out[name]:
            raise ConfigError(f"the {name} grid is empty")
    return out


# ------------------------------------------------------------------------------------------------ search
def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _chunk_size(chunk_size: int | None, points_per_row: int, n: int) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, min(n, DEFAULT_BUDGET // max(points_per_row, 1)))


def _check_val(features: Tensor, labels: Tensor, adapted: Tensor | None) -> None:
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ConfigError(f"validation labels must be (N,) with N={features.shape[0]}, got {tuple(labels.shape)}")
    if adapted is not None and adapted.shape[0] != features.shape[0]:
        raise ConfigError(f"adapted validation features have {adapted.shape[0]} rows, original {features.shape[0]}")


def _rows(x: Tensor | None, rows: slice) -> Tensor | None:
    return None if x is None else x[rows]


def search_tip_adapter(
    model: TipAdapter,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    adapted_val_features: Tensor | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """Grid-search α, β of a fitted TipAdapter / TipAdapterF / TA++ cache on validation data only."""
    grid = resolve_grid(TIP_GRID, {"alpha": alphas, "beta": betas})
    _check_val(val_features, val_labels, adapted_val_features)
    n, c = val_features.shape[0], model.values_.shape[1]
    dtype, device = model.values_.dtype, model.values_.device
    alpha_t = torch.tensor(grid["alpha"], dtype=dtype, device=device).view(-1, 1, 1)
    labels = val_labels.to(device)
    correct = torch.zeros(len(grid["alpha"]), len(grid["beta"]), dtype=torch.long, device=device)
    per_row = len(grid["alpha"]) * c + 2 * model.values_.shape[0]  # logits block + cosine and affinity rows
    for rows in _chunks(n, _chunk_size(chunk_size, per_row, n)):
        zs = model.zero_shot_logits(val_features[rows])
        cosine = model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        for j, beta in enumerate(grid["beta"]):
            cache = cache_affinity(cosine, beta) @ model.values_
            logits = zs + alpha_t * cache  # (α, rows, C): every α in one broadcast
            correct[:, j] += (logits.argmax(dim=-1) == labels[rows]).sum(dim=-1)
    return SearchResult(params=("alpha", "beta"), grid=grid, correct=correct.cpu(), n=n)


def search_tip_x(
    model: TipX,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    gammas: Sequence[float] | None = None,
    adapted_val_features: Tensor | None = None,
    chunk_size: int | None = None,
) -> SearchResult:
    """Grid-search α, β, γ of a fitted TipX / TX++ cache on validation data only.

    ψ's range is taken over the whole validation matrix (first pass), as `TipX.predict_logits` does for the
    rows it is given; ψ(M) L is independent of α, β, γ and computed once.
    """
    grid = resolve_grid(TIPX_GRID, {"alpha": alphas, "beta": betas, "gamma": gammas})
    _check_val(val_features, val_labels, adapted_val_features)
    n, c = val_features.shape[0], model.values_.shape[1]
    dtype, device = model.values_.dtype, model.values_.device
    na, ng = len(grid["alpha"]), len(grid["gamma"])
    size = _chunk_size(chunk_size, na * ng * c + 3 * model.values_.shape[0], n)
    # pass 1: the ranges of M and T over the whole matrix, and M L, zs per row
    zs_parts, kl_parts, ranges = [], [], []
    for rows in _chunks(n, size):
        zs_parts.append(model.zero_shot_logits(val_features[rows]))
        cosine = model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        kl = model.kl_to_keys(val_features[rows])
        kl_parts.append(kl @ model.values_)
        ranges.append(torch.stack([kl.min(), kl.max(), cosine.min(), cosine.max()]))
    r = torch.stack(ranges)
    a, b = minmax_coefficients(r[:, 0].min(), r[:, 1].max(), r[:, 2].min(), r[:, 3].max())
    alpha_t = torch.tensor(grid["alpha"], dtype=dtype, device=device).view(-1, 1, 1, 1)
    gamma_t = torch.tensor(grid["gamma"], dtype=dtype, device=device).view(1, -1, 1, 1)
    counts = model.values_.sum(dim=0)
    labels = val_labels.to(device)
    correct = torch.zeros(na, len(grid["beta"]), ng, dtype=torch.long, device=device)
    # pass 2: per β the affinity term, then every (α, γ) in one broadcast
    for part, rows in enumerate(_chunks(n, size)):
        zs = zs_parts[part]
        kl_term = (a * kl_parts[part] + b * counts).unsqueeze(0).unsqueeze(0)
        cosine = model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        for j, beta in enumerate(grid["beta"]):
            cache = cache_affinity(cosine, beta) @ model.values_
            logits = (zs + alpha_t * cache) - gamma_t * kl_term  # (α, γ, rows, C)
            correct[:, j, :] += (logits.argmax(dim=-1) == labels[rows]).sum(dim=-1)
    return SearchResult(params=("alpha", "beta", "gamma"), grid=grid, correct=correct.cpu(), n=n)
