"""Exact hyper-parameter search for Tip-Adapter(-F) and Tip-X on a validation split (docs/methods.md §3, §4).

The search takes a *fitted* estimator (its cache comes from the training shots) and the validation features
and labels — nothing else; it has no access path to a test split. The grid is scored as the full search does
(tests/_search_reference.py): per β the cache term a = exp(−β (1 − f Fᵀ)) L, then at every (α, γ)

    logit_c(α, γ) = (z_c + α·a_c) − γ·k_c,   z = s·f Wᵀ, k = ψ(M) L (k = 0 for Tip)

and the count of rows whose first maximum is the label. The count grid returned is that one, cell for cell.

Matmul-free path (L one-hot, finite data, α, β, γ ≥ 0, no TF32/bf16 products): no (N × NK)·(NK × C) product.
Each class's cache term ã_c is the sum of its own K exp terms: on a uniform β grid stepped from β to β with one
multiplication per term (`_SteppedTerms`, the reference's own exp every 32nd β; where ã is monotone in β it leaps
8 β at a time and only the rows a group's range leaves open are stepped), else the reference's exp input op for
op, summed by halving. ã differs from the reference's a by at most `rel`·ã (`_stepped_slack`,
`_relative_slack`), and the reference's logits differ from the real z + α·a − γ·k by their rounding (≤ 3u·bound).
So a decision that holds with that margin holds for the reference: classes the label beats at all corners of the
(α, γ) box are dropped, rows settle as always or never correct, and for the contested rows the label's lead over
each survivor, linear in (α, γ), gives intervals of sure wins and of not-sure-losses (`_interval_wins`); the grid
points between the two are left open, one by one. Open points get bounds on the reference's cache term from the
exact exp terms, pushed through its own monotone logit arithmetic (`_logit_bounds_look`). A point still undecided
— near-ties within ulps, exact ties — is scored with the reference's own product for its chunk (the same call on
the same shapes as the full search) and its own logit arithmetic, so ties and rounding come out exactly as there.
tests/test_search_pruned.py pins the grid against the reference and a literal argmax, and the decisions against
perturbed cache terms. Other inputs take the product path: per β the product, then the same bounded plane with
rounding margins alone (`_plane_correct`; points left open scored on every class).

Tie-breaking (deterministic): the correct-count grid is indexed (alpha, beta[, gamma]); among points with the
most correct predictions the first in the search's loop `order` wins (default: alpha outermost, then beta,
then gamma, i.e. C order — with ascending grids the weakest cache influence). A paper's preset
(`GRID_PRESETS`) sets its own order: Tip-Adapter loops β outermost (the smallest β wins), SuS-X and IMO α
outermost. `tie_break="centre"` instead keeps the centre of the largest connected region of tied points.
"""

from __future__ import annotations

import bisect
import math
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
BLOCK_ELEMENTS = 2**23  # exp terms per step of the matmul-free path (β batch × rows × NK): 32 MiB in float32
SCORE_BUDGET = 2**21  # (α, γ, rows) elements per scoring step of the matmul-free path
STEP_ELEMENTS = 2**18  # exp terms per sub-block of the stepped path (its terms and ratios: 2 MiB, near the caches)
STEP_BATCH = 2**21  # cache terms (β × rows × C) per batch of the stepped path, settled together (`_settle_batch`)
CORNER_ELEMENTS = 2**17  # corner logits per step of `_settle_corners` (its temporaries stay near the caches)
SETTLE_GROUP = 8  # β settled together on the range of their cache terms (`_open_plane`); a power of two
ANCHOR_EVERY = 32  # stepped path: the full search's own exp every 32nd β, multiplications by the ratio in between
assert ANCHOR_EVERY % SETTLE_GROUP == 0 and SETTLE_GROUP & (SETTLE_GROUP - 1) == 0  # leaps land on anchors


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
    tip_adapter = SearchSpace({"alpha": linear_grid(0.1, 3.0, 20), "beta": linear_grid(0.1, 7.0, 200)},
                              ("beta", "alpha"))
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
    """(z + α·a) − γ·k, op for op the arithmetic of `predict_logits` and of the full search; α, γ broadcast (a
    grid's axes, a box's corners, or one (α, γ) per row)."""
    out = z + alpha * a
    return out if k is None else out - gamma * k


def _all_classes(z, a, k, labels, alpha, gamma) -> Tensor:
    """(na, ng) correct counts scoring every class (the fallback, and the definition the pruning must equal)."""
    return (_logits(z, a, k, alpha, gamma).argmax(dim=-1) == labels).sum(dim=-1)


def _plane_correct(z: Tensor, a: Tensor, k: Tensor | None, labels: Tensor, alpha: Tensor, gamma: Tensor,
                   budget: int = DEFAULT_BUDGET) -> Tensor:
    """(na, ng) counts of rows whose first-maximum class is the label, at every (α, γ); alpha (na,1,1,1),
    gamma (1,ng,1,1). Equal to `_all_classes` cell for cell: `a` is the reference's own cache term here, so
    `_bounded_plane` decides with rounding margins alone (rel = 0), and the rows it leaves open are scored on
    every class. Small planes, negative or non-finite inputs: every class at once."""
    na, ng = alpha.shape[0], gamma.shape[1]
    if na * ng < PRUNE_MIN_POINTS:
        return _all_classes(z, a, k, labels, alpha, gamma)
    inputs = (z, a, alpha, gamma) + ((k,) if k is not None else ())
    if not all(bool(torch.isfinite(t).all()) for t in inputs) or any(bool((t < 0).any()) for t in (a, alpha, gamma)):
        return _all_classes(z, a, k, labels, alpha, gamma)
    group = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    counts, (rows, ai, gi) = _bounded_plane(z, a, k, labels, group, 1, alpha, gamma, 0.0, min(budget, SCORE_BUDGET))
    for part in _chunks(rows.numel(), max(1, budget // z.shape[1])):
        hit = _points_correct(z, a, k, labels, alpha, gamma, rows[part], ai[part], gi[part])
        counts[0].index_put_((ai[part], gi[part]), hit.long(), accumulate=True)
    return counts[0]


def _points_correct(z: Tensor, a: Tensor, k: Tensor | None, labels: Tensor, alpha: Tensor, gamma: Tensor,
                    rows: Tensor, ai: Tensor, gi: Tensor) -> Tensor:
    """(P,) whether the label is the first maximum of (z + α·a) − γ·k at each point (row, α_ai, γ_gi), on every
    class: `_logits`' arithmetic element for element."""
    logits = _logits(z[rows], a[rows], None if k is None else k[rows], alpha.flatten()[ai].view(-1, 1),
                     gamma.flatten()[gi].view(-1, 1))
    return logits.argmax(dim=1) == labels[rows]


def _space(order: Sequence[str] | None, params: tuple[str, ...]) -> tuple[str, ...]:
    return check_order(order, params) if order else params


# ------------------------------------------------------------------------------------------------ matmul-free path
def _class_layout(values: Tensor) -> tuple[Tensor, Tensor | None, int] | None:
    """For a one-hot label matrix L (every key row a single 1, the rest 0): the key columns of each class as a
    (C, Kmax) index (padded with column 0), the padding mask (None when every class has Kmax shots) and Kmax.
    None when L is anything else (the search then multiplies by L as the reference does)."""
    if values.ndim != 2 or values.shape[0] == 0 or values.dtype not in (torch.float32, torch.float64):
        return None
    ones = values == 1
    if not bool(((values == 0) | ones).all()) or not bool((ones.sum(dim=1) == 1).all()):
        return None
    cls = ones.to(torch.int8).argmax(dim=1)
    counts = torch.bincount(cls, minlength=values.shape[1])
    kmax = int(counts.max())
    perm = torch.argsort(cls, stable=True)
    j = torch.arange(1 << (kmax - 1).bit_length(), device=values.device)  # padded to a power of two (`_halving_sum`)
    mask = j < counts.view(-1, 1)
    pos = ((torch.cumsum(counts, 0) - counts).view(-1, 1) + j).clamp(max=len(perm) - 1)
    index = torch.where(mask, perm[pos], torch.zeros_like(pos))
    return index, (None if bool(mask.all()) else mask), kmax


def _halving_sum(terms: Tensor) -> Tensor:
    """Sum over axis 1 (a power of two long) by halving: each term goes through log2(K) roundings."""
    width = terms.shape[1]
    while width > 1:
        width //= 2
        terms[:, :width] += terms[:, width:2 * width]
    return terms[:, 0]


def _matmul_is_plain(dtype: torch.dtype, device: torch.device) -> bool:
    """The reference's products are plain float sums (no TF32/bf16 reduced precision), on CPU or CUDA."""
    if device.type not in ("cpu", "cuda"):
        return False
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return False
    return not (device.type == "cuda" and dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32)


def _relative_slack(kmax: int, dtype: torch.dtype) -> float:
    """A bound, 5 % over, on |a_ref − ã| / ã, where ã is `_halving_sum` of a class's K ≤ kmax non-negative exp
    terms and a_ref the reference's cache term for that class.

    The reference's (N × NK)·(NK × C) product adds each class's K terms (its other products are exact zeros, and
    x·1 is exact) in an order of the BLAS's choosing: any order is within γ_{K−1} = (K−1)u/(1−(K−1)u) of the exact
    sum of its terms; the halving sum is within γ_{log2 K'} (K' = K rounded up to a power of two). Two evaluations
    of exp of the same float input (vectorised and scalar code, or two libraries) are each within 2 ulp of e^x
    (ATen's SLEEF u10 and glibc: 1 ulp; CUDA expf: 2 ulp), so within 8u relative of each other.
    """
    u = torch.finfo(dtype).eps / 2

    def gamma_n(n: int) -> float:
        return n * u / (1 - n * u)

    g_ref, g_ours = gamma_n(kmax - 1), gamma_n((kmax - 1).bit_length())
    true = (1 + g_ref) * (1 + g_ours) * (1 + 8 * u) / ((1 - g_ref) * (1 - g_ours) * (1 - 8 * u)) - 1 + 1e-12
    return 1.05 * true


def _bounded_plane(z: Tensor, a: Tensor, k: Tensor | None, labels: Tensor, group: Tensor, n_groups: int,
                   alpha: Tensor, gamma: Tensor, rel: float, budget: int) -> tuple[Tensor, Points]:
    """(n_groups, na, ng) counts of the (row, α, γ) points where the label is surely the reference's first maximum,
    and the points left undecided (counted nowhere: the caller looks at them again or scores them exactly).

    `a` is ã, within `rel` (relative) of the reference's cache term a_ref. The reference computes
    ℓ = fl(fl(z + fl(α·a_ref)) − fl(γ·k)), within 3u·(|z| + α·a_ref + γ|k|) of the real z + α·a_ref − γ·k, so the
    difference of two of its logits is within 6u·bound + α·(|a_ref,y − ã_y| + |a_ref,j − ã_j|) of the real
    difference with ã. Margins here take 7u·bound (bound: the row's largest |z|, α·a and γ|k|) plus
    α·rel·(ã_y + ã_j) (or 2·α·rel·max ã), evaluated in float64.
    """
    na, ng = alpha.shape[0], gamma.shape[1]
    box = _Box.of(alpha, gamma, k is not None)
    margin, bound, base, slope, s_abs = _row_margins(z, a.amax(dim=1).double(), k, box, rel)
    reach, label_alive = _settle_corners(z, a, a, k, labels, box, margin, bound)
    others = reach.amax(dim=1) >= 0  # some other class alive
    counts = torch.zeros(n_groups, na, ng, dtype=torch.long, device=z.device)
    counts += torch.bincount(group[label_alive & ~others], minlength=n_groups).view(-1, 1, 1)
    contested = (label_alive & others).nonzero().squeeze(1)
    points: list[Points] = []
    if contested.numel() == 0:
        return counts, _no_points(z.device)
    keep = reach[contested] >= 0
    n_alive = keep.sum(dim=1)
    order = torch.argsort(n_alive, stable=True)
    contested, keep, sizes = contested[order], keep[order], n_alive[order].tolist()
    per_column = na if k is not None else 1  # Tip's α intervals cost one column per row, Tip-X's one per α
    start = 0
    while start < len(sizes):
        # Tip-X: groups of widths up to a power of two (few calls, little padding); Tip: every width at once
        width = 1 << (sizes[start] - 1).bit_length() if k is not None else sizes[-1]
        end = bisect.bisect_right(sizes, width, lo=start)
        end = start + max(1, min(end - start, budget // (per_column * sizes[end - 1])))
        rows = contested[start:end]
        wins, open_points = _interval_wins(z, a, k, labels, keep[start:end], rows, sizes[end - 1], alpha, gamma,
                                           base, slope, rel, s_abs, group[rows], n_groups)
        counts += wins
        points.append(open_points)
        start = end
    return counts, _cat_points(points, z.device)


Points = tuple[Tensor, Tensor, Tensor]  # (row or pair, α index, γ index) of each undecided grid point


def _no_points(device: torch.device) -> Points:
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return empty, empty, empty


def _cat_points(parts: list[Points], device: torch.device) -> Points:
    return tuple(torch.cat(column) for column in zip(*parts)) if parts else _no_points(device)


def _gaps(nl: tuple[Tensor, Tensor, Tensor], win: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """(interval, sorted grid position) of every position inside the not-lost interval [start, stop) and outside
    the win interval (each given as (start, stop, count) per interval, count 0: empty)."""
    nl_start, nl_stop = nl[0], torch.where(nl[2] > 0, nl[1], nl[0])
    has_win = win[2] > 0
    left_stop = torch.where(has_win, torch.minimum(nl_stop, win[0]), nl_stop)
    right_start = torch.where(has_win, torch.maximum(nl_start, win[1]), nl_stop)
    starts = torch.stack([nl_start, right_start], dim=-1).flatten()
    lengths = (torch.stack([left_stop, nl_stop], dim=-1).flatten() - starts).clamp(min=0)
    owner = torch.arange(lengths.numel(), device=lengths.device).repeat_interleave(lengths) // 2
    first = (torch.cumsum(lengths, 0) - lengths).repeat_interleave(lengths)
    position = starts.repeat_interleave(lengths) + torch.arange(int(lengths.sum()), device=lengths.device) - first
    return owner, position


@dataclass(frozen=True)
class _Box:
    """The (α, γ) grid's box: its largest α and γ, and α, γ at each distinct corner as (n, 1, 1) tensors (γ = 0
    without k), made once per block of rows and passed down (`_settle_corners`, `_row_margins`)."""

    al_max: float
    ga_max: float
    al: Tensor
    ga: Tensor

    @staticmethod
    def of(alpha: Tensor, gamma: Tensor, with_k: bool) -> _Box:
        alphas = sorted({float(alpha.min()), float(alpha.max())})
        gammas = sorted({float(gamma.min()), float(gamma.max())}) if with_k else [0.0]
        corners = [(al, ga) for al in alphas for ga in gammas]
        al, ga = (torch.tensor(v, dtype=alpha.dtype, device=alpha.device).view(-1, 1, 1) for v in zip(*corners))
        return _Box(alphas[-1], gammas[-1], al, ga)


def _row_bounds(z: Tensor, k: Tensor | None) -> tuple[Tensor, Tensor]:
    """(max|z|, max|k|) per row in float64 (max|k| = 0 without k)."""
    big_z = z.abs().amax(dim=1).double()
    return big_z, (torch.zeros_like(big_z) if k is None else k.abs().amax(dim=1).double())


def _row_margins(z: Tensor, big_a: Tensor, k: Tensor | None, box: _Box, rel: float,
                 bounds: tuple[Tensor, Tensor] | None = None):
    """Per row (float64): the margin 7u·bound + 2·α_max·(rel·max ã + s_abs), the bound max|z| + α_max·max ã +
    γ_max·max|k|, the rounding margin's parts base + α·slope for `_interval_wins`, and s_abs (`_bounded_plane`).
    `bounds`: `_row_bounds(z, k)` where the caller has them."""
    u7 = 3.5 * torch.finfo(z.dtype).eps
    s_abs = 8 * torch.finfo(z.dtype).tiny * z.shape[1]  # subnormal exp terms: an absolute slack, far above need
    big_z, big_k = _row_bounds(z, k) if bounds is None else bounds
    fixed = big_z + box.ga_max * big_k
    margin = (u7 * (fixed + box.al_max * big_a * (1 + rel)) + 2 * box.al_max * (rel * big_a + s_abs)
              + torch.finfo(torch.float64).tiny)
    base, slope = u7 * fixed, u7 * big_a * (1 + rel)
    return margin, fixed + box.al_max * big_a, base, slope, s_abs


def _settle_corners(z: Tensor, a_low: Tensor, a_high: Tensor, k: Tensor | None, labels: Tensor, box: _Box,
                    margin: Tensor, bound: Tensor) -> tuple[Tensor, Tensor]:
    """(reach, label_alive) on the distinct corners of the (α, γ) box only (all corners at once); every cache term
    lies in [a_low, a_high] (the same tensor for one β, the range over a group of β). `margin` (rows,) bounds how
    far the reference's logit difference can be from the real one.

    Another class j is alive (reach ≥ 0, (rows, C) floats; the label's own column −inf) when at some corner its
    highest logit ≥ the label's lowest − margin; the label is lost when one class's lowest logit > the label's
    highest + margin at every corner. Corner logits z + α·a − γ·k are computed in the data's precision (at most 4
    roundings of size ≤ u·bound each, `bound` (rows,): the row's largest |z| + α·a + γ|k|), so the margin grows by
    12u·bound; each row's threshold t is rounded outward (to a float one step past the nearest), and fl(ℓ − t) has
    the sign of ℓ − t, so comparisons are float differences (faster than boolean ones in torch).
    """
    u = max(torch.finfo(z.dtype).eps, torch.finfo(a_high.dtype).eps) / 2
    m = ((margin.double() + 12 * u * bound.double()) * (1 + 4 * u)).view(-1, 1)
    n_rows, corners = z.shape[0], box.al.shape[0]
    reach = torch.empty_like(a_high)
    lead = torch.empty(n_rows, dtype=a_high.dtype, device=z.device)  # > 0: some class surely beats the label
    for rows in _chunks(n_rows, max(1, CORNER_ELEMENTS // (corners * z.shape[1]))):  # temporaries near the caches
        kr = None if k is None else k[rows]
        y = labels[rows].view(1, -1, 1).expand(corners, -1, 1)
        high = _logits(z[rows], a_high[rows], kr, box.al, box.ga)  # (corners, rows, C)
        low = high if a_low is a_high else _logits(z[rows], a_low[rows], kr, box.al, box.ga)
        reach_at = _step_down(low.gather(2, y).double() - m[rows], high.dtype)  # may tie or beat the label
        beat_at = _step_up(high.gather(2, y).double() + m[rows], high.dtype)  # surely beats it
        torch.amax((low - beat_at).amin(dim=0), dim=1, out=lead[rows])
        torch.amax(high.sub_(reach_at), dim=0, out=reach[rows])
    reach.scatter_(1, labels.view(-1, 1), -math.inf)  # the label's own column: not one of the others
    return reach, ~(lead > 0)


def _step_down(values: Tensor, dtype: torch.dtype) -> Tensor:
    """A `dtype` value below each float64 value: the nearest one, one step down (at most 1.5 ulp below)."""
    return torch.nextafter(values.to(dtype), torch.tensor(-math.inf, dtype=dtype, device=values.device))


def _step_up(values: Tensor, dtype: torch.dtype) -> Tensor:
    """A `dtype` value above each float64 value: the nearest one, one step up."""
    return torch.nextafter(values.to(dtype), torch.tensor(math.inf, dtype=dtype, device=values.device))


def _settle_batch(z: Tensor, a_low: Tensor, a_high: Tensor, k: Tensor | None, labels: Tensor, box: _Box, rel: float,
                  correct: Tensor, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Settle rows for a whole group of β at once, on the range [a_low, a_high] (rows, C) of each class's cache
    term over the group: rows whose label surely wins everywhere are counted into correct (na, nb, ng) at every
    point, rows that surely lose everywhere are dropped. Returns the indices of the rows left open."""
    margin, bound, *_ = _row_margins(z, a_high.amax(dim=1).double(), k, box, rel, bounds)
    reach, label_alive = _settle_corners(z, a_low, a_high, k, labels, box, margin, bound)
    wins = label_alive & (reach.amax(dim=1) < 0)
    correct += int(wins.sum())
    return (label_alive & ~wins).nonzero().squeeze(1)


def _interval_wins(z, a, k, labels, keep, rows, width, alpha, gamma, base, slope, rel, s_abs, group, n_groups):
    """((n_groups, na, ng) counts of the points of `rows` where the label is surely the reference's first maximum,
    the points left undecided (row index into z, α index, γ index)).

    In real arithmetic, with ã, the label's lead over survivor j at (α, γ) is c_j(α) − γ·d_j with
    c_j = (z_y − z_j) + α·(ã_y − ã_j), d_j = k_y − k_j. The reference's lead differs from it by at most
    m = base + α·slope + α·rel·(ã_y + ã_j) (`_bounded_plane`'s rounding, (rows,) base and slope), so a lead > m over
    every survivor is a sure win, a lead < −m over one a sure loss, anything else (ties included) undecided.
    Lead minus or plus margin is linear in γ for each α (Tip-X) and linear in α (Tip, no γ): the sure wins and the
    not-sure-losses are intervals, found with one division per survivor and counted on the sorted grid; the
    undecided points are the not-sure-losses outside the sure wins. Computed in float64, whose rounding is orders of
    magnitude below the margins' slack.
    """
    y = labels[rows].view(-1, 1)
    cand = _candidate_columns(keep, y, width)
    valid = cand != y  # (R, W)
    dz, da = ((t.gather(1, y) - t.gather(1, cand)) for t in (z[rows].double(), a[rows].double()))  # exact in f64
    pair = a[rows].gather(1, y).double() + a[rows].gather(1, cand).double() + 2 * s_abs  # (R, W): ã_y + ã_j
    tiny = torch.finfo(torch.float64).tiny
    base, slope = base[rows].view(-1, 1) + tiny, slope[rows].view(-1, 1) + rel * pair
    na = alpha.numel()
    if k is None:  # Tip: win needs dz − base + α·(da − slope) > 0 for every survivor, not lost ≥ −(…)
        win = _on_grid(alpha.flatten(), *_half_lines(dz - base, da - slope, valid, strict=True), strict=True)
        nl = _on_grid(alpha.flatten(), *_half_lines(dz + base, da + slope, valid, strict=False), strict=False)
        counts = _interval_counts(win[0], win[1], win[2] > 0, group, n_groups, alpha.flatten())
        owner, position = _gaps(nl, win)
        open_points = rows[owner], torch.argsort(alpha.flatten())[position], torch.zeros_like(owner)
        return counts.view(n_groups, na, 1).expand(n_groups, na, gamma.numel()).clone(), open_points
    alpha64 = alpha.double().flatten()
    d = k[rows].double().gather(1, y) - k[rows].double().gather(1, cand)  # (R, W), exact in f64
    # lead ∓ margin = (dz ∓ base) + α·(da ∓ slope) − γ·d: for each α, half-lines in γ (`_sweep_half_lines`)
    win = _on_grid(gamma.flatten(), *_sweep_half_lines(dz - base, da - slope, -d, valid, alpha64, strict=True),
                   strict=True)  # (R, na) each
    nl = _on_grid(gamma.flatten(), *_sweep_half_lines(dz + base, da + slope, -d, valid, alpha64, strict=False),
                  strict=False)
    cells = group.view(-1, 1) * na + torch.arange(na, device=z.device)
    counts = _interval_counts(win[0], win[1], win[2] > 0, cells, n_groups * na, gamma.flatten())
    owner, position = _gaps(tuple(t.flatten() for t in nl), tuple(t.flatten() for t in win))
    open_points = rows[owner // na], owner % na, torch.argsort(gamma.flatten())[position]
    return counts.view(n_groups, na, -1), open_points


def _half_lines(p: Tensor, q: Tensor, valid: Tensor, *, strict: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Where p_j + x·q_j > 0 (strict; else ≥ 0) for every valid j along the last axis: x above `low`, below `high`
    (bounds included when not strict), and nowhere where `never` (a q_j = 0 whose p_j fails). (R, W) inputs,
    (R,) outputs: `_sweep_half_lines` with one sweep value and p not depending on it."""
    zero = torch.zeros(1, dtype=p.dtype, device=p.device)
    return tuple(t.squeeze(1) for t in _sweep_half_lines(p, torch.zeros_like(p), q, valid, zero, strict=strict))


def _sweep_half_lines(p0: Tensor, p1: Tensor, q: Tensor, valid: Tensor, alpha: Tensor, *,
                      strict: bool) -> tuple[Tensor, Tensor, Tensor]:
    """`_half_lines` of p = p0 + α·p1 for every α at once ((R, W) inputs, (R, na) outputs): each survivor's root
    −p/q = r0 + α·r1 is linear in α, so one division per survivor, not per (survivor, α); survivors of the wrong
    sign are set to ∓inf before the sweep instead of masked in it."""
    inf = torch.tensor(float("inf"), dtype=p0.dtype, device=p0.device)
    r0, r1 = -p0 / q, -p1 / q  # q = 0: inf or nan, never selected below
    low = _sweep(torch.where(valid & (q > 0), r0, -inf), torch.where(valid & (q > 0), r1, 0.0), alpha).amax(-1)
    high = _sweep(torch.where(valid & (q < 0), r0, inf), torch.where(valid & (q < 0), r1, 0.0), alpha).amin(-1)
    flat = valid & (q == 0)  # p must hold at every α on its own
    p = _sweep(torch.where(flat, p0, inf), torch.where(flat, p1, 0.0), alpha).amin(-1)
    return low, high, (p <= 0) if strict else (p < 0)


def _sweep(v0: Tensor, v1: Tensor, alpha: Tensor) -> Tensor:
    """(R, na, W) v0 + α·v1 for (R, W) inputs and (na,) α."""
    return torch.addcmul(v0.unsqueeze(1), alpha.view(1, -1, 1), v1.unsqueeze(1))


def _on_grid(grid: Tensor, low: Tensor, high: Tensor, never: Tensor, *, strict: bool):
    """(start, stop, count): the sorted grid's indices start ≤ i < stop of the values inside (low, high) (strict)
    or [low, high]."""
    values = torch.sort(grid.double()).values.contiguous()
    start = torch.searchsorted(values, low.contiguous(), right=strict)
    stop = torch.searchsorted(values, high.contiguous(), right=not strict)
    return start, stop, torch.where(never, 0, (stop - start).clamp(min=0))


def _interval_counts(start: Tensor, stop: Tensor, use: Tensor, cell: Tensor, n_cells: int, grid: Tensor) -> Tensor:
    """(n_cells, len(grid)) counts, in grid order: +1 at the sorted grid indices start ≤ i < stop of each used
    interval, in its cell (a difference array: two bincounts and a cumulative sum)."""
    n = grid.numel()
    offset = cell.expand_as(start) * (n + 1)
    size = n_cells * (n + 1)
    diff = torch.bincount((offset + start)[use], minlength=size) - torch.bincount((offset + stop)[use], minlength=size)
    counts_sorted = diff.view(n_cells, n + 1)[:, :n].cumsum(dim=-1)
    counts = torch.empty_like(counts_sorted)
    counts[:, torch.argsort(grid)] = counts_sorted
    return counts


def _score_exact(model: TipAdapter, z: Tensor, k: Tensor | None, labels: Tensor, distance: Tensor, beta: float,
                 alpha: Tensor, gamma: Tensor, buffer: Tensor, rows: Tensor | None = None,
                 points: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """(na, ng) counts of a reference chunk at one β with the reference's own cache term; with `rows` and
    `points` (α, γ indices), the (P,) correctness of the points (row, α, γ) only."""
    cache = _affinity(distance, beta, buffer[: distance.shape[0]]) @ model.values_
    if rows is None:
        return _plane_correct(z, cache, k, labels, alpha, gamma)
    return _points_correct(z, cache, k, labels, alpha, gamma, rows, *points)


def _score_parts_exactly(model: TipAdapter, parts, labels: Tensor, betas: Sequence[float], alpha: Tensor,
                         gamma: Tensor, correct: Tensor, buffer: Tensor | None = None) -> None:
    """Add every β's (na, ng) counts of every reference chunk in `parts` into correct[:, j, :], each with the
    reference's own product (`_score_exact`); `buffer`: for the exp terms (default: one per chunk)."""
    for rows, z, k, distance in parts:
        scratch = torch.empty_like(distance) if buffer is None else buffer
        for j, beta in enumerate(betas):
            correct[:, j, :] += _score_exact(model, z, k, labels[rows], distance, beta, alpha, gamma, scratch)


def _search_betas(model: TipAdapter, parts, labels: Tensor, betas: Sequence[float], alpha: Tensor, gamma: Tensor,
                  correct: Tensor) -> None:
    """Add every β's (na, ng) counts into correct[:, j, :]. `parts` yields (rows, z, k | None, 1 − f Fᵀ) per
    reference chunk (the reference's chunks, so that its products can be repeated exactly where needed).

    One-hot L, finite data and non-negative grids: the matmul-free path. Each class's cache term is the sum of its
    own K exp terms (no (N × NK)·(NK × C) product), several β at a time over blocks of chunks; rows it cannot
    decide at some point are scored with the reference's product of their chunk. Otherwise: the product per β.
    """
    delta = _uniform_step(betas)
    if delta is not None and delta < 0:  # a descending grid is searched ascending: stepped terms only ever shrink
        ascending = torch.zeros_like(correct)  # (stepping up from a large β would grow exp terms from subnormals)
        _search_betas(model, parts, labels, betas[::-1], alpha, gamma, ascending)
        correct += ascending.flip(1)
        return
    values = model.values_
    layout = _class_layout(values) if _matmul_is_plain(values.dtype, values.device) else None
    if layout is not None:
        grids_ok = all(bool(torch.isfinite(t).all()) and bool((t >= 0).all()) for t in (alpha, gamma))
        layout = layout if grids_ok and all(b >= 0 and b < float("inf") for b in betas) else None
    if layout is None:
        _score_parts_exactly(model, parts, labels, betas, alpha, gamma, correct)
        return
    block: list = []
    size = 0
    for part in parts:
        block.append(part)
        size += part[3].numel()
        if size >= BLOCK_ELEMENTS:
            _bounded_block(model, block, labels, betas, alpha, gamma, correct, layout)
            block, size = [], 0
    if block:
        _bounded_block(model, block, labels, betas, alpha, gamma, correct, layout)


def _uniform_step(betas: Sequence[float]) -> float | None:
    """Δ when the β grid is β_0 + j·Δ up to rounding (the linear and linspace grids; ≥ 3 values), else None."""
    if len(betas) < 3:
        return None
    delta = (betas[-1] - betas[0]) / (len(betas) - 1)
    scale = max(abs(b) for b in betas) + abs(delta)
    if all(abs(b - (betas[0] + j * delta)) <= 1e-9 * scale for j, b in enumerate(betas)):
        return delta
    return None


def _stepped_slack(kmax: int, dtype: torch.dtype, betas: Sequence[float], delta: float, dmax: float, j: int,
                   anchor: int | None = None) -> float:
    """A bound, 5 % over, on |a_ref − ã| / ã for β_j when ã comes from `_SteppedTerms` (terms |d| ≤ dmax).

    Both sides are compared with the real sum A of e^{−β_j d} over the class's K terms:
    - the full search: exp of its float input fl(fl(−β)·d), which is within 2u·β·|d| of −β·d (a factor
      e^{2u·β·dmax}), 2 ulp (4u) for the exp, γ_{K−1} for its sum in any order;
    - the stepped terms: the anchor β_a (the same mul and exp: as above), then s = j − a multiplications by the
      ratio rounded once (each (1 + u)²), which stand for e^{−(β_a + sΔ) d}: the grid's own β_j differs by
      |β_j − β_a − sΔ| (a factor e^{that·dmax}); torch.sum over K: γ_{K−1}.
    With e_r, e_o those relative errors, |a_ref − ã| ≤ (e_r + e_o)·A ≤ (e_r + e_o)/(1 − e_o)·ã. Subnormal terms
    (β·d > 87 in float32) are covered by the absolute slack of `_bounded_plane`.
    """
    u = torch.finfo(dtype).eps / 2
    g = (kmax - 1) * u / (1 - (kmax - 1) * u)

    def one_exp(beta: float) -> float:
        return (1 + 4 * u) * math.exp(2.0000001 * abs(beta) * dmax * u)

    a = j - j % ANCHOR_EVERY if anchor is None else anchor
    s = j - a
    e_ref = (1 + g) * one_exp(betas[j]) - 1
    drift = abs(betas[j] - (betas[a] + s * delta)) * dmax
    e_ours = (1 + g) * one_exp(betas[a]) * (1 + u) ** (2 * s) * math.exp(drift) - 1
    return 1.05 * (e_ref + e_ours) / (1 - e_ours) + 1e-12


def _group_slack(kmax: int, dtype: torch.dtype, betas: Sequence[float], delta: float, dmax: float, j0: int,
                 j1: int) -> float:
    """`_stepped_slack` over β_{j0} … β_{j1} (the last grid β at most), both for each β's own chain and for the
    chain of the first one's anchor: a group's range comes from the sums at its first β and at the next group's
    (an anchor, or the same chain one leap on), and holds the real cache term at every β between them (monotone)."""
    start = j0 - j0 % ANCHOR_EVERY
    return max(max(_stepped_slack(kmax, dtype, betas, delta, dmax, j),
                   _stepped_slack(kmax, dtype, betas, delta, dmax, j, anchor=start))
               for j in range(j0, min(j1, len(betas) - 1) + 1))


class _Scratch:
    """Named buffers reused from call to call, grown on demand: a fresh multi-MB tensor pays its page faults again
    (the allocator hands large freed blocks back to the system), a reused one does not."""

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def take(self, name: str, shape: Sequence[int], like: Tensor) -> Tensor:
        """An uninitialised contiguous (shape) tensor of like's dtype and device; valid until `name` is taken again."""
        numel = math.prod(shape)
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self.buffers[name] = torch.empty(max(numel, 1), dtype=like.dtype, device=like.device)
        return buffer[:numel].view(tuple(shape))


class _SteppedTerms:
    """Each class's cache term on a uniform β grid with one multiplication per exp term and β:
    e^{−β_{j+1} d} = e^{−β_j d}·e^{−Δ d}, served a group of SETTLE_GROUP β at a time (`group`, then `values`).

    Where every d ≥ 0 (`monotone`) each class's real cache term Σ_k e^{−β d_k} is non-increasing in β, so over a
    group it lies between its values at the group's first β and at the next group's: the terms leap a whole
    group at a time (ratio e^{−GΔd}), the group's range comes from two sums, and only the rows that range leaves
    open are stepped β by β. Otherwise, and for the last group, every row is stepped at every β.
    Every ANCHOR_EVERY-th β starts again from the full search's own mul and exp, which bounds what the steps
    accumulate (`_stepped_slack`). Ratios are computed in float64 and rounded once. Groups must come in order.
    """

    def __init__(self, d3: Tensor, pad: Tensor | None, betas: Sequence[float], delta: float, *, monotone: bool):
        k, rows, c = d3.shape
        self.d, self.pad, self.betas = d3, pad, betas
        self.block_rows = max(1, STEP_ELEMENTS // (k * c))  # rows per sub-block near a core's cache
        self.blocks = _chunks(rows, self.block_rows)
        self.ratio = torch.empty_like(d3)
        self.leap = torch.empty_like(d3) if monotone else None
        for part in self.blocks:  # float64 temporaries one sub-block at a time
            ratio = torch.exp(d3[:, part].double() * -delta)
            self.ratio[:, part] = ratio
            if self.leap is not None:  # e^{−GΔd} by squaring (G a power of two), rounded once
                for _ in range(SETTLE_GROUP.bit_length() - 1):
                    ratio = ratio.mul_(ratio)
                self.leap[:, part] = ratio
        self.terms = _exp_terms(d3, betas[0], pad)  # at β_{self.at}
        self.sums = self.terms.sum(0)
        self.at = 0
        self.free = torch.empty_like(self.terms)  # the other terms buffer: the next group's terms go there
        self.ahead: tuple[Tensor, Tensor] | None = None  # terms and sums at the next group's first β
        self.dense: Tensor | None = None  # the group's ã for every row, where it was stepped β by β
        self.scratch = _Scratch()

    def group(self, j: int, n: int) -> tuple[Tensor, Tensor]:
        """(a_low, a_high) (rows, C): a range holding ã at β_j … β_{j+n−1}."""
        assert j == self.at and n <= SETTLE_GROUP
        nxt = j + SETTLE_GROUP
        more = nxt < len(self.betas)
        if self.leap is not None and more:
            self.ahead, self.dense = self._move(nxt, self.terms, self.leap, self.free), None
            sums = self.ahead[1]
            return torch.minimum(self.sums, sums), torch.maximum(self.sums, sums)
        work = self.free.copy_(self.terms)
        self.dense = torch.empty((n,) + tuple(self.sums.shape), dtype=self.sums.dtype, device=self.sums.device)
        self.dense[0] = self.sums
        for rows in self.blocks:  # work: at β_{j+n−1} after these; one more step is β_nxt
            _steps(work[:, rows], self.dense[:, rows], self.ratio[:, rows])
        anchor = nxt % ANCHOR_EVERY == 0
        self.ahead = self._move(nxt, work, self.ratio, self.terms if anchor else work) if more else None
        low, high = self.dense[0].clone(), self.dense[0].clone()
        for i in range(1, n):
            torch.minimum(low, self.dense[i], out=low)
            torch.maximum(high, self.dense[i], out=high)
        return low, high

    def values(self, rows: Tensor, out: Tensor) -> Tensor:
        """out (n, len(rows), C) = ã of `rows` at the group's n β; moves on to the next group."""
        if self.dense is not None:
            torch.index_select(self.dense, 1, rows, out=out)
        else:  # gathered and stepped a cache-sized sub-block of rows at a time
            k, _, c = self.terms.shape
            torch.index_select(self.sums, 0, rows, out=out[0])
            for part in _chunks(rows.numel(), self.block_rows):
                shape = (k, part.stop - part.start, c)
                terms = torch.index_select(self.terms, 1, rows[part], out=self.scratch.take("terms", shape, out))
                ratio = torch.index_select(self.ratio, 1, rows[part], out=self.scratch.take("ratio", shape, out))
                _steps(terms, out[:, part], ratio)
        if self.ahead is not None:
            buffers = (self.terms, self.free)
            (self.terms, self.sums), self.ahead = self.ahead, None
            self.free = buffers[1] if self.terms is buffers[0] else buffers[0]
        self.at += SETTLE_GROUP
        return out

    def _move(self, j: int, base: Tensor, ratio: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """(terms, sums) at β_j into `out`: the full search's own exp at an anchor, else `base` times `ratio` (a
        leap, or one more step after a group stepped β by β; `out` may be `base`)."""
        if j % ANCHOR_EVERY == 0:
            _exp_terms(self.d, self.betas[j], self.pad, out=out)
            return out, out.sum(0)
        sums = torch.empty_like(self.sums)
        for rows in self.blocks:
            torch.sum(torch.mul(base[:, rows], ratio[:, rows], out=out[:, rows]), 0, out=sums[rows])
        return out, sums


def _steps(terms: Tensor, out: Tensor, ratio: Tensor) -> None:
    """out[1:] (n, R, C): the sums over K of (K, R, C) `terms` after each of n − 1 steps by `ratio`, in place
    (out[0] holds their sums); one cache-sized sub-block of rows."""
    for i in range(1, out.shape[0]):
        torch.sum(terms.mul_(ratio), 0, out=out[i])


class _DirectTerms:
    """A batch's ã for every row and β (nb, R, C), served as `_SteppedTerms` serves its groups."""

    def __init__(self, a: Tensor, j0: int):
        self.a, self.j0, self.part = a, j0, slice(0, 0)
        self.scratch = _Scratch()

    def group(self, j: int, n: int) -> tuple[Tensor, Tensor]:
        self.part = slice(j - self.j0, j - self.j0 + n)
        return torch.aminmax(self.a[self.part], dim=0)

    def values(self, rows: Tensor, out: Tensor) -> Tensor:
        return torch.index_select(self.a[self.part], 1, rows, out=out)


def _exp_terms(d: Tensor, beta: float, pad: Tensor | None, out: Tensor | None = None) -> Tensor:
    """The full search's exp terms exp(−β·d) of (…, K, rows, C) inputs (its `mul` and `exp`), padding zeroed."""
    terms = torch.mul(d, -beta, out=out).exp_()  # the reference's exp input, element for element
    return terms if pad is None else terms.masked_fill_(~pad, 0.0)


def _bounded_block(model, block, labels, betas, alpha, gamma, correct, layout) -> None:
    """Add the counts of a block of reference chunks at every β into `correct` (see `_search_betas`).

    ã per β batch: on a uniform β grid stepped (`_SteppedTerms`, a wider slack), else the full search's exp terms
    summed by halving. Rows are settled SETTLE_GROUP β at a time, then per β (`_open_plane`); the grid points ã
    leaves undecided get the logit bounds of the exact exp terms, and the points still undecided are scored with the
    reference's product of their chunk (`_score_with_products`).
    """
    index, pad, kmax = layout
    first, last = block[0][0], block[-1][0]
    y = labels[first.start:last.stop]
    z = torch.cat([p[1] for p in block])
    k = None if block[0][2] is None else torch.cat([p[2] for p in block])
    finite = all(bool(torch.isfinite(t).all()) for t in [z] + [p[3] for p in block] + ([k] if k is not None else []))
    buffer = torch.empty_like(max((p[3] for p in block), key=lambda d: d.shape[0]))
    if not finite:
        _score_parts_exactly(model, block, labels, betas, alpha, gamma, correct, buffer)
        return
    d3 = torch.cat([p[3] for p in block])[:, index].permute(2, 0, 1).contiguous()  # (K, R, C): shot j of each class
    n_rows, c = z.shape
    pad = None if pad is None else pad.T.unsqueeze(1)  # (K, 1, C)
    rel = _relative_slack(kmax, z.dtype)
    d_low, d_high = (float(v) for v in torch.aminmax(d3))
    dmax = max(-d_low, d_high)
    # every exp term ≤ e^{β·max(−d, 0)}: far from overflow, ã is finite without looking (else checked per batch)
    bounded = max(abs(b) for b in betas) * max(-d_low, 0.0) <= 80.0 and kmax < 1000
    delta = _uniform_step(betas) if bounded else None
    stepped = None if delta is None else _SteppedTerms(d3, pad, betas, delta, monotone=d_low >= 0.0)
    # β per batch: the exp terms of the batch (direct), or only its cache terms (stepped), whole groups
    step = max(1, BLOCK_ELEMENTS // d3.numel()) if stepped is None else max(1, STEP_BATCH // (n_rows * c))
    step = step if stepped is None else max(SETTLE_GROUP, step - step % SETTLE_GROUP)
    for j0 in range(0, len(betas), step):
        bs = betas[j0:j0 + step]
        nb = len(bs)
        if stepped is not None:
            source, rel_batch = stepped, _group_slack(kmax, z.dtype, betas, delta, dmax, j0, j0 + nb)
        else:
            a = _batch_terms(d3, bs, pad)
            if not bounded and not bool(torch.isfinite(a).all()):  # exp overflow: the reference's products
                _score_parts_exactly(model, block, labels, bs, alpha, gamma, correct[:, j0:j0 + nb], buffer)
                continue
            source, rel_batch = _DirectTerms(a, j0), rel
        batch = correct[:, j0:j0 + nb]
        points = _open_plane(z, k, y, source, j0, nb, alpha, gamma, rel_batch, batch)
        if points[0].numel():
            points = _logit_bounds_look(d3, pad, kmax, z, k, y, bs, points, n_rows, alpha, gamma, batch)
        if points[0].numel():
            _score_with_products(model, block, labels, bs, points, alpha, gamma, buffer, batch)


def _open_plane(z: Tensor, k: Tensor | None, y: Tensor, source, j0: int, nb: int, alpha: Tensor, gamma: Tensor,
                rel: float, correct: Tensor) -> Points:
    """Count a batch of β (β_{j0} … β_{j0+nb−1}) into correct (na, nb, ng): rows settled SETTLE_GROUP β at a time on
    the range of their cache terms (`_settle_batch`; a few β keep each range narrow), then each β's plane on the
    rows left open, with their ã from `source` (`_SteppedTerms` or `_DirectTerms`). Returns the grid points left
    undecided: (β-major pair β·rows + row, α index, γ index)."""
    n_rows, c = z.shape
    box, bounds = _Box.of(alpha, gamma, k is not None), _row_bounds(z, k)
    values = source.scratch.take("values", (nb * n_rows, c), z)
    pairs, filled = [], 0
    for start in range(0, nb, SETTLE_GROUP):
        n = min(SETTLE_GROUP, nb - start)
        a_low, a_high = source.group(j0 + start, n)
        open_rows = _settle_batch(z, a_low, a_high, k, y, box, rel, correct[:, start:start + n], bounds)
        source.values(open_rows, values[filled:filled + n * open_rows.numel()].view(n, -1, c))
        filled += n * open_rows.numel()
        betas = torch.arange(start, start + n, device=z.device).view(-1, 1)
        pairs.append((betas * n_rows + open_rows).flatten())  # (β, row), β-major
    pairs = torch.cat(pairs)
    rows = pairs % n_rows
    counts, open_points = _bounded_plane(z.index_select(0, rows), values[:filled],
                                        None if k is None else k.index_select(0, rows), y.index_select(0, rows),
                                        pairs // n_rows, nb, alpha, gamma, rel, SCORE_BUDGET)
    correct += counts.permute(1, 0, 2)
    return pairs[open_points[0]], open_points[1], open_points[2]


def _score_with_products(model, block, labels, betas, points: Points, alpha, gamma, buffer, correct) -> None:
    """Score the undecided grid points of a batch (β-major pairs over the block's rows, α, γ indices) with the
    reference's own product of each row's chunk at that β, into correct (na, nb, ng)."""
    pairs, ai, gi = points
    n_rows = block[-1][0].stop - block[0][0].start
    offsets = [p[0].start - block[0][0].start for p in block] + [n_rows]
    which, rows = pairs // n_rows, pairs % n_rows
    for i in which.unique().tolist():
        at = which == i
        for p, (chunk, z, k, distance) in enumerate(block):
            sel = (at & (rows >= offsets[p]) & (rows < offsets[p + 1])).nonzero().squeeze(1)
            if sel.numel():
                hit = _score_exact(model, z, k, labels[chunk], distance, betas[i], alpha, gamma, buffer,
                                   rows=rows[sel] - offsets[p], points=(ai[sel], gi[sel]))
                correct[:, i, :].index_put_((ai[sel], gi[sel]), hit.long(), accumulate=True)


def _batch_terms(d3: Tensor, betas: Sequence[float], pad: Tensor | None) -> Tensor:
    """(nb, R, C) ã: the full search's exp terms of each β (its mul, then exp), summed by halving over K."""
    terms = torch.empty((len(betas),) + tuple(d3.shape), dtype=d3.dtype, device=d3.device)
    for i, beta in enumerate(betas):
        torch.mul(d3, -beta, out=terms[i])  # the reference's exp input, element for element
    terms.exp_()
    if pad is not None:
        terms.masked_fill_(~pad, 0.0)
    return _halving_sum(terms)


def _pair_inputs(d3: Tensor, betas: Sequence[float], which: Tensor, rows: Tensor) -> Tensor:
    """(K, P, C) the full search's exp inputs fl(−β·d) of P (β, row) pairs (β_which, row): the same float32
    product as its `mul` by the scalar −β (tests/test_search_pruned.py checks it bit for bit)."""
    minus_beta = torch.tensor([-b for b in betas], dtype=d3.dtype, device=d3.device)[which]
    return d3.index_select(1, rows).mul_(minus_beta.view(1, -1, 1))


def _pair_parts(d3: Tensor, n_pairs: int) -> list[slice]:
    """Pairs per step of the looks below: their (K, P, C) exp terms within BLOCK_ELEMENTS."""
    return _chunks(n_pairs, max(1, BLOCK_ELEMENTS // (d3.shape[0] * d3.shape[2])))


def _logit_bounds_look(d3, pad, kmax, z, k, y, betas, points: Points, n_rows, alpha, gamma, correct) -> Points:
    """A last look at the grid points still undecided, before the reference's product: bound the reference's cache
    term a_ref of each class by two float values and push both through the reference's own logit arithmetic,
    monotone in a (α, γ ≥ 0): ℓ(a_lo) ≤ ℓ_ref ≤ ℓ(a_hi) exactly, without a rounding margin. Adds the sure counts
    into correct (na, nb, ng); returns the points still undecided (β-major pair, α index, γ index).

    a_ref is the BLAS's sum, in an order of its own, of exp terms of the full search's inputs x = fl(−β·d), each
    within 2 ulp of e^x. With T_lo, T_hi the sums of the terms' lowest and highest values, any order of K
    non-negative float additions is within (K − 1)·½ulp(T_hi) of the exact sum of its terms (every partial sum is at
    most the total; plus (K − 1)·tiny where subnormals flush), so a_ref ∈ [T_lo − that, T_hi + that], widened
    outward to float values. The label is surely the first maximum at a point when its lowest logit beats every
    other class's highest (ties allowed with classes after it), surely not when some class's lowest beats its
    highest; anything else stays undecided.
    """
    pairs, ai, gi = points
    unique, owner = torch.unique(pairs, return_inverse=True)  # the bounds once per (β, row) pair
    which, rows = unique // n_rows, unique % n_rows
    dtype = d3.dtype
    u = torch.finfo(dtype).eps / 2
    low = torch.empty(len(unique), z.shape[1], dtype=torch.float64, device=z.device)
    high = torch.empty_like(low)
    for part in _pair_parts(d3, len(unique)):
        exact = _pair_inputs(d3, betas, which[part], rows[part]).double().exp_()  # e^x of the reference's inputs
        ulp = _ulp(exact, dtype)
        t_low, t_high = (exact - 2 * ulp).clamp(min=0.0), exact + 2 * ulp
        if pad is not None:
            t_low, t_high = t_low.masked_fill(~pad, 0.0), t_high.masked_fill(~pad, 0.0)
        s_low, s_high = t_low.sum(0), t_high.sum(0)
        order = (kmax - 1) * (_ulp(s_high * (1 + 2 * kmax * u), dtype) / 2 + torch.finfo(dtype).tiny)
        low[part] = s_low * (1 - 1e-12) - order
        high[part] = s_high * (1 + 1e-12) + order
    a_low, a_high = _float_below(low.clamp(min=0.0), dtype), _float_above(high, dtype)
    zr, kr, yr = z[rows], None if k is None else k[rows], y[rows]
    cand, width = _bounds_candidates(zr, a_low, a_high, kr, yr, alpha, gamma)
    still = torch.zeros(len(pairs), dtype=torch.bool, device=z.device)
    for part in _chunks(len(pairs), max(1, SCORE_BUDGET // width)):
        q = owner[part]
        cols, label = cand[q], yr[q].view(-1, 1)
        y_col = (cols == label).to(torch.int8).argmax(dim=1, keepdim=True)  # the label's column
        before, after = cols < label, cols > label  # the first maximum wins ties
        al, ga = alpha.flatten()[ai[part]].view(-1, 1), gamma.flatten()[gi[part]].view(-1, 1)
        z_cols, k_cols = zr[q].gather(1, cols), None if kr is None else kr[q].gather(1, cols)
        lo, hi = (_logits(z_cols, t[q].gather(1, cols), k_cols, al, ga) for t in (a_low, a_high))
        lo_y, hi_y = lo.gather(1, y_col), hi.gather(1, y_col)
        win = ((lo_y > hi) | (after & (lo_y >= hi)) | ~(before | after)).all(1)
        lost = ((before & (lo >= hi_y)) | (after & (lo > hi_y))).any(1)
        still[part] = ~(win | lost)
        correct.index_put_((ai[part], which[q], gi[part]), win.long(), accumulate=True)
    return pairs[still], ai[still], gi[still]


def _bounds_candidates(z, a_low, a_high, k, labels, alpha, gamma) -> tuple[Tensor, int]:
    """((P, W) class columns, W): per row its label and every class whose highest logit may reach the label's lowest
    somewhere on the (α, γ) box, in ascending class order (padded with the label). The others are surely beaten:
    z_c − z_y + α·(a_hi,c − a_lo,y) − γ·(k_c − k_y), linear in (α, γ), stays below −8u·bound at the box's corners
    (float64), more than the rounding of the two logits."""
    y = labels.view(-1, 1)
    u = torch.finfo(z.dtype).eps / 2
    z64, lo64, hi64 = z.double(), a_low.double(), a_high.double()
    dz, da = z64 - z64.gather(1, y), hi64 - lo64.gather(1, y)
    dk = None if k is None else k.double() - k.double().gather(1, y)
    a0, a1 = float(alpha.min()), float(alpha.max())
    reach = torch.maximum(dz + a0 * da, dz + a1 * da)
    bound = z64.abs().amax(1) + a1 * hi64.amax(1)
    if dk is not None:
        g0, g1 = float(gamma.min()), float(gamma.max())
        reach = reach - torch.minimum(g0 * dk, g1 * dk)
        bound = bound + g1 * k.double().abs().amax(1)
    keep = (reach + 8 * u * bound.view(-1, 1) >= 0) | (torch.arange(z.shape[1], device=z.device) == y)
    width = int(keep.sum(1).max())
    return _candidate_columns(keep, y, width), width


def _candidate_columns(keep: Tensor, y: Tensor, width: int) -> Tensor:
    """(rows, width) the class indices where `keep` (rows, C) is True, in ascending order, padded with the row's
    label y (rows, 1) after them (`width` ≥ every row's count)."""
    cols = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
    return torch.where(torch.arange(width, device=keep.device) < keep.sum(1, keepdim=True), cols, y)


def _ulp(values: Tensor, dtype: torch.dtype) -> Tensor:
    """A bound on the spacing of `dtype` floats near non-negative float64 `values`: the spacing one binade up
    where a value is within 2^-20 of the next power of two, and never below the smallest normal (so that a
    flush of subnormals to zero stays within it)."""
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(values * (1 + 2.0**-20))
    spacing = torch.ldexp(torch.ones_like(values), exponent - _DIGITS[dtype])
    return torch.where(values > 0, spacing, 0.0).clamp(min=info.tiny)


_DIGITS = {torch.float32: 24, torch.float64: 53, torch.float16: 11, torch.bfloat16: 8}  # significand bits


def _float_below(values: Tensor, dtype: torch.dtype) -> Tensor:
    """The largest `dtype` value ≤ each float64 value."""
    out = values.to(dtype)
    return torch.where(out.double() > values, torch.nextafter(out, torch.full_like(out, -math.inf)), out)


def _float_above(values: Tensor, dtype: torch.dtype) -> Tensor:
    """The smallest `dtype` value ≥ each float64 value."""
    out = values.to(dtype)
    return torch.where(out.double() < values, torch.nextafter(out, torch.full_like(out, math.inf)), out)


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
    parts = ((rows, model.zero_shot_logits(val_features[rows]), None,
              1.0 - model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows)))
             for rows in _chunks(n, _chunk_size(chunk_size, per_row, n)))
    _search_betas(model, parts, labels, grid["beta"], alpha_t, gamma_t, correct.unsqueeze(-1))
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
    parts = ((rows, zs_parts[part], a * kl_parts[part] + b * counts,
              1.0 - model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows)))
             for part, rows in enumerate(_chunks(n, size)))
    _search_betas(model, parts, labels, grid["beta"], alpha_t, gamma_t, correct)
    return SearchResult(params=params, grid=grid, correct=correct.cpu(), n=n, order=_space(order, params),
                        tie_break=tie_break)
