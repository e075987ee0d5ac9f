"""The intra-modal-overlap (IMO) metric (docs/methods.md §5).

On L2-normalised embeddings with labels, the cosine similarities of all pairs i<j are split into same-class
and different-class; both are histogrammed on common bins over [-1, 1] and turned into densities p, u;
`overlap = sum_b min(p_b, u_b) * width_b` in [0, 1] (1 = indistinguishable, 0 = separable; lower is better).

Exact for moderate N (pairs processed in row chunks, vectorised bucketing). With `max_pairs`, when there are
more pairs than that, pairs are sampled with a seed and the result says `sampled=True`: by default
(`sample="items"`) all pairs among a uniformly drawn subset of K items, K(K-1)/2 <= max_pairs — every pair is
equally likely to be included, and it runs at matrix-product speed; `sample="pairs"` draws `max_pairs`
independent uniform pairs (lower variance per pair, ~100x slower per pair: one gather per pair).
The building blocks (`imo_bin_edges`, `pair_histograms`, `overlap_from_counts`) are public so streaming
computations over sharded features can produce identical histograms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.ops import l2_normalize, pool_views

DEFAULT_BINS = 100
_CHUNK_ELEMENTS = 1 << 24  # similarities held at once (64 MiB in float32)


@dataclass(frozen=True)
class IMOResult:
    """Overlap of the same-class and different-class similarity densities, and the densities themselves."""

    overlap: float
    same_hist: Tensor  # (bins,) density of same-class similarities (sums to 1 / bin width)
    diff_hist: Tensor  # (bins,) density of different-class similarities
    bin_edges: Tensor  # (bins + 1,) from -1 to 1
    n_same: int  # number of same-class pairs counted
    n_diff: int  # number of different-class pairs counted
    sampled: bool  # True when pairs were sampled (max_pairs < total pairs)
    sample: str | None  # "items" or "pairs" when sampled
    total_pairs: int  # N(N-1)/2
    seed: int | None  # the sampling seed (None when exact)
    same_mean: float  # mean same-class cosine similarity
    diff_mean: float  # mean different-class cosine similarity

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary including the histograms as lists."""
        scalars = ("overlap", "n_same", "n_diff", "sampled", "sample", "total_pairs", "seed", "same_mean", "diff_mean")
        return {**{name: getattr(self, name) for name in scalars}, "bins": int(self.bin_edges.numel() - 1),
                **{name: getattr(self, name).tolist() for name in ("bin_edges", "same_hist", "diff_hist")}}


def imo_bin_edges(bins: int = DEFAULT_BINS) -> Tensor:
    """`bins + 1` equally spaced float64 edges over [-1, 1]."""
    if bins < 1:
        raise ConfigError(f"bins must be >= 1, got {bins}")
    return torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64)


def bucket_index(similarities: Tensor, edges: Tensor) -> Tensor:
    """Bin of each similarity with numpy.histogram's convention: [e_b, e_b+1), the last bin closed.

    Values outside [-1, 1] (rounding) fall into the first/last bin. The edges are cast to the similarities'
    dtype (float64 input gives numpy's float64 bins exactly).
    """
    inner = edges[1:-1].to(similarities.device, similarities.dtype)
    return torch.bucketize(similarities, inner, right=True, out_int32=True)


class PairHistogramAccumulator:
    """Same/different-class counts and similarity sums over chunks of pairs (one bincount per chunk).

    `add(similarities, same_class_mask)` any number of times (any shapes, same shape for both), then `result()`;
    streaming or distributed computations that feed it the same pairs get the same histograms as `imo_overlap`.
    """

    def __init__(self, edges: Tensor):
        self.edges, self.bins = edges, edges.numel() - 1
        self.counts = torch.zeros(2 * self.bins, dtype=torch.long)
        self.same_sum = self.total_sum = 0.0

    def add(self, sims: Tensor, same: Tensor) -> None:
        code = bucket_index(sims, self.edges).add_(same.int(), alpha=self.bins)
        self.counts += torch.bincount(code.flatten(), minlength=2 * self.bins).cpu()
        self.total_sum += float(sims.sum(dtype=torch.float64))
        self.same_sum += float((sims * same).sum(dtype=torch.float64))

    def result(self) -> tuple[Tensor, Tensor, float, float]:
        """(same_counts, diff_counts, same_sum, diff_sum)."""
        return (self.counts[self.bins:], self.counts[: self.bins], self.same_sum, self.total_sum - self.same_sum)


def pair_histograms(
    embeddings: Tensor, labels: Tensor, edges: Tensor, *, chunk_size: int | None = None
) -> tuple[Tensor, Tensor, float, float]:
    """Exact counts over all pairs i<j: (same_counts, diff_counts, same_sum, diff_sum).

    `embeddings` must already be L2-normalised. Rows are taken `chunk_size` at a time: the pairs inside the
    chunk (its upper triangle) and the pairs with every later row, so memory stays O(chunk_size * N).
    """
    n = embeddings.shape[0]
    # most pairs then fall in the rectangles (no index gathers); a chunk holds <= _CHUNK_ELEMENTS similarities
    chunk = chunk_size or max(1, min(_CHUNK_ELEMENTS // max(n, 1), max(1024, n // 8)))
    acc = PairHistogramAccumulator(edges)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block, block_labels = embeddings[start:stop], labels[start:stop]
        i, j = torch.triu_indices(stop - start, stop - start, offset=1, device=embeddings.device)
        acc.add((block @ block.T)[i, j], (block_labels[:, None] == block_labels[None, :])[i, j])
        if stop < n:
            acc.add(block @ embeddings[stop:].T, block_labels[:, None] == labels[None, stop:])
    return acc.result()


def sampled_pair_histograms(
    embeddings: Tensor, labels: Tensor, edges: Tensor, num_pairs: int, *, seed: int = 0
) -> tuple[Tensor, Tensor, float, float]:
    """Counts over `num_pairs` pairs {i, j}, i != j, drawn uniformly (with replacement) with a seeded generator."""
    n = embeddings.shape[0]
    g = torch.Generator().manual_seed(seed)
    acc = PairHistogramAccumulator(edges)
    chunk = max(1, _CHUNK_ELEMENTS // max(embeddings.shape[1], 1))
    for start in range(0, num_pairs, chunk):
        m = min(chunk, num_pairs - start)
        i = torch.randint(n, (m,), generator=g)
        j = torch.randint(n - 1, (m,), generator=g)
        j = j + (j >= i).long()  # uniform over j != i
        i, j = i.to(embeddings.device), j.to(embeddings.device)
        acc.add((embeddings[i] * embeddings[j]).sum(dim=-1), labels[i] == labels[j])
    return acc.result()


def items_for_pairs(max_pairs: int) -> int:
    """The largest K >= 2 with K(K-1)/2 <= max_pairs (at least 2)."""
    k = int((1 + math.isqrt(1 + 8 * max_pairs)) // 2)
    while k * (k - 1) // 2 > max_pairs:
        k -= 1
    return max(2, k)


def overlap_from_counts(same_counts: Tensor, diff_counts: Tensor) -> float:
    """sum_b min(p_b, u_b) * width_b, with p, u the densities of the two count histograms on the same bins."""
    p = same_counts.double() / same_counts.sum()
    u = diff_counts.double() / diff_counts.sum()
    return float(torch.minimum(p, u).sum())


def imo_overlap(
    embeddings: Tensor,
    labels: Tensor,
    *,
    bins: int = DEFAULT_BINS,
    max_pairs: int | None = None,
    seed: int = 0,
    sample: str = "items",
    chunk_size: int | None = None,
) -> IMOResult:
    """The IMO metric of raw (or normalised) embeddings (N, D) or (N, V, D) with integer labels (N,).

    Exact over all N(N-1)/2 pairs unless `max_pairs` is given and smaller; then at most `max_pairs` pairs are
    sampled with `seed` (`sample="items"`: all pairs among a random subset of items; `"pairs"`: independent
    uniform pairs) and the result has `sampled=True`. Needs a same-class and a different-class pair.
    """
    x, labels = _normalised_inputs(embeddings, labels, max_pairs=max_pairs, sample=sample)
    n = x.shape[0]
    total = n * (n - 1) // 2
    edges = imo_bin_edges(bins)
    sampled = max_pairs is not None and total > max_pairs
    budget = max_pairs if sampled else None
    same, diff, s_sum, d_sum = _pair_counts(x, labels, edges, budget, sample=sample, seed=seed, chunk_size=chunk_size)
    _check_both_pair_kinds(int(same.sum()), int(diff.sum()), labels)
    return _imo_result(same, diff, s_sum, d_sum, edges, total_pairs=total,
                       sample=sample if sampled else None, seed=seed if sampled else None)


def _normalised_inputs(embeddings: Tensor, labels: Tensor, *, max_pairs: int | None,
                       sample: str) -> tuple[Tensor, Tensor]:
    """Validated arguments: L2-normalised pooled embeddings (N, D) (float64 kept, else float32) and labels on
    their device; ConfigError naming the argument otherwise."""
    x = pool_views(embeddings)
    labels = torch.as_tensor(labels)
    if x.ndim != 2 or labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise ConfigError(
            f"imo_overlap needs embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if max_pairs is not None and max_pairs < 1:
        raise ConfigError(f"max_pairs must be >= 1 or None, got {max_pairs}")
    if sample not in ("items", "pairs"):
        raise ConfigError(f"sample must be 'items' or 'pairs', got {sample!r}")
    x = l2_normalize(x.double() if x.dtype == torch.float64 else x.float())
    return x, labels.to(x.device)


def _pair_counts(
    x: Tensor, labels: Tensor, edges: Tensor, max_pairs: int | None, *, sample: str, seed: int, chunk_size: int | None
) -> tuple[Tensor, Tensor, float, float]:
    """(same_counts, diff_counts, same_sum, diff_sum) over every pair (`max_pairs` None) or a seeded sample."""
    if max_pairs is None:
        return pair_histograms(x, labels, edges, chunk_size=chunk_size)
    if sample == "pairs":
        return sampled_pair_histograms(x, labels, edges, max_pairs, seed=seed)
    # item sampling: the `items_for_pairs(max_pairs)` items of a seeded permutation, in their original order
    keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[: items_for_pairs(max_pairs)]
    keep = keep.sort().values.to(x.device)
    return pair_histograms(x[keep], labels[keep], edges, chunk_size=chunk_size)


def _check_both_pair_kinds(n_same: int, n_diff: int, labels: Tensor) -> None:
    """The metric compares two densities: ConfigError when the same- or the different-class one is empty."""
    if n_same == 0 or n_diff == 0:
        kind = "same-class" if n_same == 0 else "different-class"
        raise ConfigError(
            f"imo_overlap: no {kind} pairs among {labels.shape[0]} embeddings with {labels.unique().numel()} distinct "
            "labels; it needs at least two classes and a class with two or more items"
        )


def _imo_result(same: Tensor, diff: Tensor, same_sum: float, diff_sum: float, edges: Tensor, *, total_pairs: int,
                sample: str | None, seed: int | None) -> IMOResult:
    """Counts and sums -> overlap, densities (counts / (pairs * bin width)) and mean similarities."""
    n_same, n_diff = int(same.sum()), int(diff.sum())
    width = edges[1:] - edges[:-1]
    return IMOResult(
        overlap=overlap_from_counts(same, diff),
        same_hist=same.double() / (n_same * width),
        diff_hist=diff.double() / (n_diff * width),
        bin_edges=edges,
        n_same=n_same,
        n_diff=n_diff,
        sampled=sample is not None,
        total_pairs=total_pairs,
        seed=seed,
        sample=sample,
        same_mean=same_sum / n_same,
        diff_mean=diff_sum / n_diff,
    )
