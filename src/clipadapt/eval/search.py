"""Exact, pruned hyper-parameter search for Tip-Adapter(-F) and Tip-X on a validation split (docs/methods.md §3, §4).

The search takes a *fitted* estimator (its cache comes from the training shots) and the validation features
and labels — nothing else; it has no access path to a test split. Per β the work is one (N × NK) exp and one
(N × NK)·(NK × C) product: the cosine matrix f Fᵀ and Tip-X's ψ(M) L are computed once, the affinity
exp(−β (1 − f Fᵀ)) L once per β. The (α, γ) plane is then scored on each row's *candidate* classes only:

    logit_c(α, γ) = (z_c + α·a_c) − γ·k_c,   z = s·f Wᵀ, a = exp(−β(1 − f Fᵀ)) L, k = ψ(M) L (k = 0 for Tip)

Candidate pruning is exact, not an approximation. With α, γ ≥ 0 every float operation above is monotone, so if
class c is at least as good as class d in all of z, a and −k, then c's *computed* logit is ≥ d's at every grid
point. Class d is dropped when such a c exists and either comes first (argmax keeps the first maximum, so d can
never be the first maximum) or leads in z by more than the worst float rounding (then c is strictly ahead
everywhere). The dominating classes tried are the argmaxes at a few corner grid points. A row whose label is
dropped scores 0 everywhere; a row where only the label survives scores 1 everywhere; the others compare the
label's logit with the surviving classes' logits, computed with exactly the reference arithmetic, so equal
values stay equal and the count grid is identical, cell for cell, to scoring all C classes
(tests/_search_reference.py, tests/test_search_pruned.py). Negative or non-finite values fall back to
scoring every class. Rows are processed in chunks chosen by the same rule as before, so every matrix product
is the same call on the same shapes.

Tie-breaking (deterministic): the correct-count grid is indexed (alpha, beta[, gamma]); among points with the
most correct predictions the first in the search's loop `order` wins (default: alpha outermost, then beta,
then gamma, i.e. C order — with ascending grids the weakest cache influence). A paper's preset
(`GRID_PRESETS`) sets its own order: Tip-Adapter loops β outermost (the smallest β wins), SuS-X and IMO α
outermost. `tie_break="centre"` instead keeps the centre of the largest connected region of tied points.
"""

from __future__ import annotations

import math

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clipadapt.constants import GRID_PRESETS as PRESET_NAMES
from clipadapt.constants import TIE_BREAKS
from clipadapt.errors import ConfigError
from clipadapt.methods.tip_adapter import TipAdapter
from clipadapt.methods.tip_x import TipX, minmax_coefficients

# (low, high, n): n values low + (high − low)·i/n, i = 0..n−1 — the original's grids, high excluded.
TIP_GRID = {"alpha": (0.1, 3.0, 20), "beta": (0.1, 7.0, 200)}
TIPX_GRID = {"alpha": (0.1, 50.0, 20), "beta": (1.0, 50.0, 200), "gamma": (0.1, 30.0, 50)}
DEFAULT_BUDGET = 2**25  # elements per chunk: the (α, γ, rows, C) logits block plus (rows, NK) matrices (128 MiB f32)
PRUNE_MIN_POINTS = 100  # smaller (α, γ) planes (Tip's 20 α) are cheaper to score on every class than to prune


@dataclass
class SearchResult:
    """The validation correct-count grid and its best point.

    `order` is the search's loop nesting, outermost first (default: `params`); among tied best points the first
    in that order wins, or with `tie_break="centre"` the centre of the largest tied region (`tied_centre`).
    """

    params: tuple[str, ...]  # axis names of `accuracy`, e.g. ("alpha", "beta")
    grid: dict[str, list[float]]
    correct: Tensor  # int64 counts of correct validation predictions, one axis per param
    n: int  # validation rows
    order: tuple[str, ...] = ()
    tie_break: str = "grid-order"

    def __post_init__(self) -> None:
        self.order = check_order(self.order or self.params, self.params)
        if self.tie_break not in TIE_BREAKS:
            raise ConfigError(f"unknown tie_break '{self.tie_break}'; available: {', '.join(TIE_BREAKS)}")

    @property
    def accuracy(self) -> Tensor:
        """Top-1 validation accuracy in percent over the grid."""
        return 100.0 * self.correct.double() / max(self.n, 1)

    @property
    def tied(self) -> Tensor:
        """Boolean grid of the points with the most correct predictions."""
        return self.correct == self.correct.max()

    @property
    def n_tied(self) -> int:
        """How many grid points share the best validation count."""
        return int(self.tied.sum())

    @property
    def best_index(self) -> tuple[int, ...]:
        """The kept best point (index per param, in `params` order)."""
        if self.tie_break == "centre":
            return tied_centre(self.tied, self.params, self.order)
        return first_in_order(self.tied, self.params, self.order)

    @property
    def best(self) -> dict[str, float]:
        return {p: self.grid[p][i] for p, i in zip(self.params, self.best_index)}

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy[self.best_index])

    def to_dict(self, *, with_grid: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"best": self.best, "val_top1": self.best_accuracy, "n_val": self.n,
                               "grid_size": {p: len(self.grid[p]) for p in self.params}, "n_tied": self.n_tied,
                               "tie_break": self.tie_break, "order": list(self.order)}
        if with_grid:
            out["grid"] = self.grid
            out["accuracy"] = self.accuracy.tolist()
        return out


# ------------------------------------------------------------------------------------------------ ties
def check_order(order: Sequence[str], params: Sequence[str]) -> tuple[str, ...]:
    """A loop order must name every param once."""
    if sorted(order) != sorted(params):
        raise ConfigError(f"search order {list(order)} must name each of {list(params)} once")
    return tuple(order)


def first_in_order(mask: Tensor, params: Sequence[str], order: Sequence[str]) -> tuple[int, ...]:
    """Index (in `params` axis order) of the first True point when the loops nest as `order` (outermost first)."""
    perm = [list(params).index(p) for p in order]
    looped = mask.permute(*perm)
    at = _unravel(int(looped.flatten().nonzero()[0, 0]), tuple(looped.shape))
    out = [0] * len(params)
    for axis, i in zip(perm, at):
        out[axis] = i
    return tuple(out)


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    """C-order index of a flat position (torch.unravel_index imports sympy on first use: seconds at start-up)."""
    out = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        out.append(i)
    return out[::-1]


def tied_centre(mask: Tensor, params: Sequence[str], order: Sequence[str]) -> tuple[int, ...]:
    """The tied point nearest the centroid (in grid-index units) of the largest face-connected tied region.

    Regions are found in loop order, so of equally large regions the one reached first wins; of points equally
    near the centroid the first in loop order wins. A region is a plateau of the validation accuracy, and its
    centre is the point farthest (on average) from where the accuracy drops — less tuned to validation noise
    than the plateau's corner that grid order picks.
    """
    perm = [list(params).index(p) for p in order]
    looped = mask.permute(*perm).contiguous()
    shape = tuple(looped.shape)
    points = [tuple(int(i) for i in p) for p in looped.nonzero().tolist()]  # already in loop (C) order
    todo = set(points)
    best: list[tuple[int, ...]] = []
    for start in points:
        if start not in todo:
            continue
        todo.discard(start)
        region, queue = [], deque([start])
        while queue:
            p = queue.popleft()
            region.append(p)
            for axis in range(len(shape)):
                for step in (-1, 1):
                    q = p[:axis] + (p[axis] + step,) + p[axis + 1:]
                    if q in todo:
                        todo.discard(q)
                        queue.append(q)
        if len(region) > len(best):
            best = region
    centroid = [sum(p[axis] for p in best) / len(best) for axis in range(len(shape))]
    pick = min(sorted(best), key=lambda p: sum((i - c) ** 2 for i, c in zip(p, centroid)))
    out = [0] * len(params)
    for axis, i in zip(perm, pick):
        out[axis] = i
    return tuple(out)


# ------------------------------------------------------------------------------------------------ grids
def linear_grid(low: float, high: float, n: int) -> list[float]:
    """n values low + (high − low)·i/n for i = 0..n−1 (the original's `search_scale`/`search_step` grids)."""
    if n < 1:
        raise ConfigError(f"a grid needs at least one value, got n={n}")
    return [low + (high - low) * i / n for i in range(n)]


def linspace_grid(low: float, high: float, n: int) -> list[float]:
    """n values from low to high, both included (numpy.linspace, float64) — the IMO paper's grids."""
    import numpy as np

    if n < 1:
        raise ConfigError(f"a grid needs at least one value, got n={n}")
    return [float(v) for v in np.linspace(low, high, n)]


def parse_grid(spec: str) -> list[float]:
    """'LOW:HIGH:N' (N values, HIGH excluded) or a comma list 'v1,v2,...'."""
    try:
        if ":" in spec:
            low, high, n = spec.split(":")
            low, high, n = float(low), float(high), int(n)
        else:
            values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"grid '{spec}': expected LOW:HIGH:N or a comma-separated list of numbers") from e
    if ":" in spec:
        _finite_grid(spec, [low, high])
        return linear_grid(low, high, n)
    if not values:
        raise ConfigError(f"grid '{spec}' is empty")
    return _finite_grid(spec, values)


def _finite_grid(spec: str, values: list[float]) -> list[float]:
    """A grid of finite values, or a ConfigError naming the spec (nan/inf would search nothing and pick anything)."""
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"grid '{spec}': every value must be a finite number, got {bad[0]}")
    return values


def resolve_grid(defaults: dict[str, Any], given: dict[str, Sequence[float] | None]) -> dict[str, list[float]]:
    """Default grids ((low, high, n) linear grids or value lists) with user-given axes substituted."""
    out = {}
    for name, default in defaults.items():
        values = given.get(name)
        if values is None:
            values = linear_grid(*default) if isinstance(default, tuple) else default
        out[name] = [float(v) for v in values]
        if not out[name]:
            raise ConfigError(f"the {name} grid is empty")
    return out


@dataclass(frozen=True)
class SearchSpace:
    """A paper's search: its grid values and its loop order (outermost first), which decides ties."""

    grid: dict[str, list[float]]
    order: tuple[str, ...]


def grid_preset(name: str) -> dict[str, SearchSpace]:
    """{'tip': ..., 'tipx': ...} search spaces of a paper (docs/methods.md §3–§5).

    - `tip-adapter`: Tip-Adapter's search (β: 200 values in [0.1, 7), α: 20 in [0.1, 3), the original's grids
      with high excluded), loops **β outermost**, so among ties the smallest β wins. The original's per-dataset
      configs widen the range on some datasets (e.g. DTD [0.1, 13)): override with `--grid tip.beta=...`.
      Tip-X (not in that paper) keeps SuS-X's search.
    - `sus-x`: SuS-X's Tip-X search (α: 20 in [0.1, 50), β: 200 in [1, 50), γ: 50 in [0.1, 30)), α outermost,
      then β, then γ; its Tip-Adapter baseline is Tip-Adapter's search (above).
    - `imo`: the IMO paper's searches: α linspace(0, 20, 200), β linspace(0, 20, 20), γ linspace(0, 30, 50)
      (0 and the end included), α outermost, then β, then γ, for TA/TA++ and TX/TX++ alike.
    """
    if name not in PRESET_NAMES:
        raise ConfigError(f"unknown grid preset '{name}'; available: {', '.join(PRESET_NAMES)}")
    tip_adapter = SearchSpace({"alpha": linear_grid(0.1, 3.0, 20), "beta": linear_grid(0.1, 7.0, 200)}, ("beta", "alpha"))
    sus_x = SearchSpace({"alpha": linear_grid(0.1, 50.0, 20), "beta": linear_grid(1.0, 50.0, 200),
                         "gamma": linear_grid(0.1, 30.0, 50)}, ("alpha", "beta", "gamma"))
    if name == "imo":
        alpha, beta = linspace_grid(0.0, 20.0, 200), linspace_grid(0.0, 20.0, 20)
        return {"tip": SearchSpace({"alpha": alpha, "beta": beta}, ("alpha", "beta")),
                "tipx": SearchSpace({"alpha": alpha, "beta": beta, "gamma": linspace_grid(0.0, 30.0, 50)},
                                    ("alpha", "beta", "gamma"))}
    return {"tip": tip_adapter, "tipx": sus_x}


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
    if features.shape[0] == 0:
        raise ConfigError("the hyper-parameter search got 0 validation rows: every grid point would tie at 0 "
                          "and the first would be reported as chosen; give a non-empty validation split")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ConfigError(f"validation labels must be (N,) with N={features.shape[0]}, got {tuple(labels.shape)}")
    if adapted is not None and adapted.shape[0] != features.shape[0]:
        raise ConfigError(f"adapted validation features have {adapted.shape[0]} rows, original {features.shape[0]}")


def _rows(x: Tensor | None, rows: slice) -> Tensor | None:
    return None if x is None else x[rows]


def _affinity(distance: Tensor, beta: float, out: Tensor) -> Tensor:
    """exp(−β (1 − f Fᵀ)) into `out`, from the β-independent 1 − f Fᵀ: `cache_affinity`'s operations (bit for
    bit), one pass and one allocation fewer per β."""
    return torch.mul(distance, -beta, out=out).exp_()


def _logits(z: Tensor, a: Tensor, k: Tensor | None, alpha: Tensor, gamma: Tensor) -> Tensor:
    """(z + α·a) − γ·k, op for op the arithmetic of `predict_logits` and of the full search."""
    out = z + alpha * a
    return out if k is None else out - gamma * k


def _all_classes(z, a, k, labels, alpha, gamma) -> Tensor:
    """(na, ng) correct counts scoring every class (the fallback, and the definition the pruning must equal)."""
    return (_logits(z, a, k, alpha, gamma).argmax(dim=-1) == labels).sum(dim=-1)


def _margin(z: Tensor, a: Tensor, k: Tensor, alpha: Tensor, gamma: Tensor) -> Tensor:
    """(rows,) a bound, 4× over, on how far rounding can move the difference of two computed logits of a row.

    Each of fl(z + fl(α·a)) and fl(that − fl(γ·k)) is off by at most eps/2 of a magnitude ≤ |z| + α|a| + γ|k|.
    """
    bound = z.abs().amax(1) + alpha.max() * a.abs().amax(1) + gamma.max() * k.abs().amax(1)
    return 8 * torch.finfo(z.dtype).eps * bound + torch.finfo(z.dtype).tiny


def _survivors(z: Tensor, a: Tensor, k: Tensor, alpha: Tensor, gamma: Tensor, margin: Tensor) -> Tensor:
    """(rows, C) mask of the classes that can be a row's first maximum at some grid point (a superset of them).

    Dominating classes tried: the argmaxes at the grid's corners. c removes d when
    z_c ≥ z_d, a_c ≥ a_d, k_c ≤ k_d and (c < d, or z_c − z_d exceeds the rounding `margin`).
    """
    pick_a = _spread(alpha.flatten())
    pick_g = _spread(gamma.flatten())
    pivots = _logits(z, a, k, alpha.flatten()[pick_a].view(-1, 1, 1, 1), gamma.flatten()[pick_g].view(1, -1, 1, 1))
    piv = pivots.argmax(dim=-1).reshape(-1, z.shape[0]).T  # (rows, P)
    zp, ap, kp = z.gather(1, piv).T.unsqueeze(-1), a.gather(1, piv).T.unsqueeze(-1), k.gather(1, piv).T.unsqueeze(-1)
    classes = torch.arange(z.shape[1], device=z.device)
    earlier = piv.T.unsqueeze(-1) < classes
    dominated = (zp >= z) & (ap >= a) & (kp <= k) & (earlier | (zp - z > margin.view(1, -1, 1)))
    return ~dominated.any(dim=0)


def _settle(z: Tensor, a: Tensor, k: Tensor, labels: Tensor, alive: Tensor, alpha: Tensor, gamma: Tensor,
            margin: Tensor) -> tuple[Tensor, Tensor]:
    """Use that logit_label − logit_c is linear in (α, γ): its extremes over the grid's box are at the corners.

    A class the label leads by more than `margin` at all four corners never blocks it: dropped from `alive`.
    A row whose label trails some surviving class by more than `margin` at all four corners never wins.
    Returns (alive, label_alive). Corners are evaluated in float64 (exact to far below the margin).
    """
    y = labels.view(-1, 1)
    dz, da, dk = ((t.gather(1, y) - t).double() for t in (z, a, k))  # float32 differences are exact in float64
    corners = [dz + al * da - ga * dk for al in (alpha.min().double(), alpha.max().double())
               for ga in (gamma.min().double(), gamma.max().double())]
    low, high = torch.stack(corners).aminmax(dim=0)
    m = margin.double().view(-1, 1)
    alive = alive & ~(low > m)  # the label's own column has d = 0 and stays
    label_alive = alive.gather(1, y).squeeze(1) & ~(alive & (high < -m)).any(dim=1)
    return alive, label_alive


def _spread(values: Tensor) -> Tensor:
    """Indices of the smallest and the largest value (the grid's corners)."""
    order = torch.argsort(values)
    return torch.unique(order[torch.tensor([0, len(order) - 1], device=values.device)])


def _plane_correct(z: Tensor, a: Tensor, k: Tensor | None, labels: Tensor, alpha: Tensor, gamma: Tensor,
                   budget: int = DEFAULT_BUDGET) -> Tensor:
    """(na, ng) counts of rows whose first-maximum class is the label, at every (α, γ); alpha (na,1,1,1),
    gamma (1,ng,1,1). Equal to `_all_classes` cell for cell (module docstring)."""
    na, ng = alpha.shape[0], gamma.shape[1]
    if na * ng < PRUNE_MIN_POINTS:
        return _all_classes(z, a, k, labels, alpha, gamma)
    finite = all(bool(torch.isfinite(t).all()) for t in (z, a, alpha, gamma) + ((k,) if k is not None else ()))
    if not finite or bool((alpha < 0).any()) or bool((gamma < 0).any()):
        return _all_classes(z, a, k, labels, alpha, gamma)
    kk = k if k is not None else torch.zeros_like(z)
    margin = _margin(z, a, kk, alpha, gamma)
    alive = _survivors(z, a, kk, alpha, gamma, margin)
    alive, label_alive = _settle(z, a, kk, labels, alive, alpha, gamma, margin)
    n_alive = alive.sum(dim=1)
    correct = torch.zeros(na, ng, dtype=torch.long, device=z.device)
    correct += int((label_alive & (n_alive == 1)).sum())
    contested = (label_alive & (n_alive > 1)).nonzero().squeeze(1)
    if contested.numel() == 0:
        return correct
    contested = contested[torch.argsort(n_alive[contested], stable=True)]
    sizes = n_alive[contested].tolist()  # ascending; a group is padded to its widest row, so group by width
    start, per_class = 0, na * ng
    while start < len(sizes):
        width = sizes[start] if sizes[start] < 8 else 2 * sizes[start]  # narrow rows: one exact width per group
        end = bisect.bisect_right(sizes, width, lo=start)
        end = start + max(1, min(end - start, budget // (per_class * sizes[end - 1])))
        correct += _label_wins(z, a, k, labels, alive, contested[start:end], sizes[end - 1], alpha, gamma)
        start = end
    return correct


def _label_wins(z, a, k, labels, alive, rows, width, alpha, gamma) -> Tensor:
    """(na, ng) counts of `rows` whose label is the first maximum among their surviving classes.

    The survivors are laid out in ascending class order (padded with copies of the label after them), so
    argmax over them — the first maximum — is the label's column exactly when the full argmax is the label.
    """
    keep = alive[rows]
    cand = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]  # survivors, ascending class
    y = labels[rows].view(-1, 1)
    cand = torch.where(torch.arange(width, device=z.device) < keep.sum(1, keepdim=True), cand, y)
    label_column = (cand < y).sum(dim=1)  # survivors before the label
    kr = k[rows].gather(1, cand) if k is not None else None
    t = _logits(z[rows].gather(1, cand), a[rows].gather(1, cand), kr, alpha, gamma)  # (na, ng, rows, width)
    return (t.argmax(dim=-1) == label_column).sum(dim=-1)


def _space(order: Sequence[str] | None, params: tuple[str, ...]) -> tuple[str, ...]:
    return check_order(order, params) if order else params


def search_tip_adapter(
    model: TipAdapter,
    val_features: Tensor,
    val_labels: Tensor,
    *,
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    adapted_val_features: Tensor | None = None,
    chunk_size: int | None = None,
    order: Sequence[str] | None = None,
    tie_break: str = "grid-order",
) -> SearchResult:
    """Grid-search α, β of a fitted TipAdapter / TipAdapterF / TA++ cache on validation data only.

    `order`: loop nesting deciding ties (default ("alpha", "beta")); `tie_break`: "grid-order" or "centre".
    """
    params = ("alpha", "beta")
    grid = resolve_grid(TIP_GRID, {"alpha": alphas, "beta": betas})
    _check_val(val_features, val_labels, adapted_val_features)
    n, c = val_features.shape[0], model.values_.shape[1]
    dtype, device = model.values_.dtype, model.values_.device
    alpha_t = torch.tensor(grid["alpha"], dtype=dtype, device=device).view(-1, 1, 1, 1)
    gamma_t = torch.zeros(1, 1, 1, 1, dtype=dtype, device=device)
    labels = val_labels.to(device)
    correct = torch.zeros(len(grid["alpha"]), len(grid["beta"]), dtype=torch.long, device=device)
    per_row = len(grid["alpha"]) * c + 2 * model.values_.shape[0]  # the chunking rule of the full search
    for rows in _chunks(n, _chunk_size(chunk_size, per_row, n)):
        zs = model.zero_shot_logits(val_features[rows])
        distance = 1.0 - model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        buffer = torch.empty_like(distance)
        for j, beta in enumerate(grid["beta"]):
            cache = _affinity(distance, beta, buffer) @ model.values_
            correct[:, j] += _plane_correct(zs, cache, None, labels[rows], alpha_t, gamma_t)[:, 0]
    return SearchResult(params=params, grid=grid, correct=correct.cpu(), n=n, order=_space(order, params),
                        tie_break=tie_break)


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
    order: Sequence[str] | None = None,
    tie_break: str = "grid-order",
) -> SearchResult:
    """Grid-search α, β, γ of a fitted TipX / TX++ cache on validation data only.

    ψ's range is taken over the whole validation matrix (first pass), as `TipX.predict_logits` does for the
    rows it is given; ψ(M) L is independent of α, β, γ and computed once. `order` / `tie_break`: as in
    `search_tip_adapter` (default order ("alpha", "beta", "gamma")).
    """
    params = ("alpha", "beta", "gamma")
    grid = resolve_grid(TIPX_GRID, {"alpha": alphas, "beta": betas, "gamma": gammas})
    _check_val(val_features, val_labels, adapted_val_features)
    n, c = val_features.shape[0], model.values_.shape[1]
    dtype, device = model.values_.dtype, model.values_.device
    na, ng = len(grid["alpha"]), len(grid["gamma"])
    size = _chunk_size(chunk_size, na * ng * c + 3 * model.values_.shape[0], n)  # the chunking rule of the full search
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
    # pass 2: per β the affinity term, then the (α, γ) plane on the candidate classes
    for part, rows in enumerate(_chunks(n, size)):
        zs = zs_parts[part]
        kl_term = a * kl_parts[part] + b * counts
        distance = 1.0 - model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        buffer = torch.empty_like(distance)
        for j, beta in enumerate(grid["beta"]):
            cache = _affinity(distance, beta, buffer) @ model.values_
            correct[:, j, :] += _plane_correct(zs, cache, kl_term, labels[rows], alpha_t, gamma_t)
    return SearchResult(params=params, grid=grid, correct=correct.cpu(), n=n, order=_space(order, params),
                        tie_break=tie_break)
