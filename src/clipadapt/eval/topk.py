"""Chunked similarity search with a running top-k: retrieval and cache scoring without the full Q×M matrix.

`chunked_topk(queries, gallery, k)` scores the gallery one chunk at a time (and the queries one block at a
time) and merges each chunk's scores into a running (Q, k) top-k, so peak memory is
O(query_block × (chunk_size + k)) instead of O(Q × M). The gallery may be a tensor or an iterator of chunks
(e.g. `ShardedSplit.iter_chunks`, memory-mapped shards), so galleries larger than memory work too.

Scores are inner products `q · g` of the vectors as given: L2-normalise both sides first for cosine similarity.

Ties: among equal scores the lower gallery index ranks first. The result is therefore identical to a stable
descending sort of the full score matrix (`torch.sort(S, descending=True, stable=True)[:, :k]`); the scores
are identical to `torch.topk(S, k).values`, and the indices equal `torch.topk(S, k).indices` wherever scores
are distinct (`torch.topk` leaves the order among ties unspecified).

`backend="faiss"` uses a faiss index instead (exact `IndexFlatIP` by default, any index factory string
otherwise); install it with `pip install clipadapt[faiss]` (faiss-cpu). faiss computes in float32 and does
not promise an order among tied scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clipadapt.constants import TOPK_BACKENDS as BACKENDS  # re-exported; defined there so the CLI parser is torch-free
from clipadapt.errors import ConfigError
from clipadapt.methods.tip_adapter import cache_affinity

Gallery = Tensor | Iterable[Tensor] | Iterable[tuple[Tensor, Tensor | None]]


# ----------------------------------------------------------------------------------------- gallery chunks
def iter_gallery_chunks(gallery: Gallery, chunk_size: int) -> Iterator[Tensor]:
    """Yield (c, D) chunks of a tensor gallery (views of it, no copy) or pass an iterator's chunks through."""
    if isinstance(gallery, Tensor):
        if gallery.ndim != 2:
            raise ConfigError(f"gallery must be (M, D) (pool views first), got {tuple(gallery.shape)}")
        for start in range(0, gallery.shape[0], chunk_size):
            yield gallery[start : start + chunk_size]
    else:
        for item in gallery:  # a (c, D) tensor, or an (image, label) pair
            chunk = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(chunk, Tensor) or chunk.ndim != 2:
                shape = tuple(chunk.shape) if isinstance(chunk, Tensor) else type(chunk).__name__
                raise ConfigError(f"gallery chunks must be (rows, D) tensors (pool views first), got {shape}")
            yield chunk


def _check_args(queries: Tensor, k: int, chunk_size: int, query_chunk_size: int | None) -> None:
    if queries.ndim != 2:
        raise ConfigError(f"queries must be (Q, D) (pool views first), got {tuple(queries.shape)}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    if query_chunk_size is not None and query_chunk_size < 1:
        raise ConfigError(f"query_chunk_size must be >= 1, got {query_chunk_size}")


# ----------------------------------------------------------------------------------------- merge
def merge_topk(
    best_scores: Tensor, best_index: Tensor, scores: Tensor, index: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Merge a running top-k with a new block of candidates, keeping the k best per row.

    `best_*` (Q, k0) hold earlier gallery rows, `scores`/`index` (Q, c) later ones (larger indices) in increasing
    index order, so a stable descending sort of their concatenation breaks ties by the lower gallery index.
    """
    all_scores = torch.cat([best_scores, scores], dim=1)
    all_index = torch.cat([best_index, index], dim=1)
    order = torch.sort(all_scores, dim=1, descending=True, stable=True).indices[:, :k]
    return all_scores.gather(1, order), all_index.gather(1, order)


def chunk_candidates(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best columns of each row of one chunk's scores, as (scores, local indices) in increasing index order.

    `torch.topk` picks the right set of values but, among columns tied with the k-th value, not necessarily the
    lowest indices; rows where that happens (more columns equal the k-th value than were picked) are redone
    with a stable sort. Returning candidates in index order lets `merge_topk` break ties by lower index.
    """
    kk = min(k, scores.shape[1])
    top = scores.topk(kk, dim=1)
    kth = top.values[:, -1:]
    ambiguous = (scores == kth).sum(1) > (top.values == kth).sum(1)
    index = top.indices
    if ambiguous.any():
        rows = ambiguous.nonzero().squeeze(1)
        index[rows] = torch.sort(scores[rows], dim=1, descending=True, stable=True).indices[:, :kk]
    index = index.sort(dim=1).values
    return scores.gather(1, index), index


def _topk_torch(
    queries: Tensor, chunks: Iterable[Tensor], k: int, query_chunk_size: int | None
) -> tuple[Tensor, Tensor]:
    if queries.shape[0] == 0:
        return queries.new_empty((0, k)), torch.empty((0, k), dtype=torch.long, device=queries.device)
    q_block = query_chunk_size or queries.shape[0]
    blocks = [queries[s : s + q_block] for s in range(0, queries.shape[0], q_block)]
    best_s = [queries.new_empty((b.shape[0], 0)) for b in blocks]
    best_i = [torch.empty((b.shape[0], 0), dtype=torch.long, device=queries.device) for b in blocks]
    offset = 0
    for chunk in chunks:
        if chunk.shape[1] != queries.shape[1]:
            raise ConfigError(
                f"gallery has D={chunk.shape[1]} but queries have D={queries.shape[1]}: "
                "were they computed with the same model?"
            )
        chunk = chunk.to(device=queries.device, dtype=queries.dtype)
        for b, q in enumerate(blocks):
            cand_s, cand_i = chunk_candidates(q @ chunk.T, k)
            best_s[b], best_i[b] = merge_topk(best_s[b], best_i[b], cand_s, cand_i + offset, k)
        offset += chunk.shape[0]
    if offset < k:
        raise ConfigError(f"k={k} is larger than the gallery ({offset} rows)")
    return torch.cat(best_s), torch.cat(best_i)


def _topk_faiss(queries: Tensor, chunks: Iterable[Tensor], k: int, index_factory: str) -> tuple[Tensor, Tensor]:
    try:
        import faiss  # noqa: PLC0415 - optional extra, imported only when asked for
    except ImportError as e:
        raise ConfigError(
            "backend 'faiss' needs the faiss package: pip install 'clipadapt[faiss]' (or pip install faiss-cpu; "
            "faiss-gpu from conda for GPUs), or use backend 'torch'"
        ) from e
    dim = queries.shape[1]
    index = faiss.index_factory(dim, index_factory, faiss.METRIC_INNER_PRODUCT)
    total = 0
    for chunk in chunks:
        if chunk.shape[1] != dim:
            raise ConfigError(f"gallery has D={chunk.shape[1]} but queries have D={dim}")
        x = chunk.detach().to("cpu", torch.float32).contiguous().numpy()
        if not index.is_trained:  # approximate indexes (IVF, PQ, ...) train on the first chunk
            index.train(x)
        index.add(x)
        total += chunk.shape[0]
    if total < k:
        raise ConfigError(f"k={k} is larger than the gallery ({total} rows)")
    scores, ids = index.search(queries.detach().to("cpu", torch.float32).contiguous().numpy(), k)
    return torch.from_numpy(scores).to(queries.device), torch.from_numpy(ids).long().to(queries.device)


def chunked_topk(
    queries: Tensor,
    gallery: Gallery,
    k: int,
    *,
    chunk_size: int = 4096,
    query_chunk_size: int | None = None,
    backend: str = "torch",
    faiss_index: str = "Flat",
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """The k highest inner products of each query over the gallery: (scores (Q, k), indices (Q, k)).

    `gallery` is an (M, D) tensor (scored `chunk_size` rows at a time) or an iterable of (c, D) chunks /
    (image, label) pairs in gallery order. `query_chunk_size` bounds the query rows scored at once.
    Ties: lower gallery index first (see the module docstring). Never builds the (Q, M) matrix.
    """
    _check_args(queries, k, chunk_size, query_chunk_size)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown top-k backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    chunks = iter_gallery_chunks(gallery, chunk_size)
    if progress:
        total = -(-gallery.shape[0] // chunk_size) if isinstance(gallery, Tensor) else None
        chunks = tqdm(chunks, total=total, desc="scoring gallery", unit="chunk")
    if backend == "faiss":
        return _topk_faiss(queries, chunks, k, faiss_index)
    return _topk_torch(queries, chunks, k, query_chunk_size)


# ----------------------------------------------------------------------------------------- retrieval
def _gt_matrix(gt: Tensor | Sequence[Sequence[int]] | Sequence[int], num_queries: int) -> Tensor:
    """Ground truth as a (Q, G) long tensor, padded with -1: one or several correct gallery rows per query."""
    if isinstance(gt, Tensor):
        gt_t = gt.long().view(-1, 1) if gt.ndim == 1 else gt.long()
    else:
        rows = [[int(g)] if isinstance(g, int) else [int(x) for x in g] for g in gt]
        width = max((len(r) for r in rows), default=1) or 1
        gt_t = torch.full((len(rows), width), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            gt_t[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    if gt_t.ndim != 2:
        raise ConfigError("ground truth must be (Q,), (Q, G) padded with -1, or lists of indices; got "
                          f"{tuple(gt_t.shape)}")
    if gt_t.shape[0] != num_queries:
        raise ConfigError(f"ground truth lists {gt_t.shape[0]} queries but there are {num_queries} queries")
    if ((gt_t >= 0).sum(1) == 0).any():
        raise ConfigError("every query needs at least one correct gallery index")
    return gt_t


def chunked_recall_at_k(
    queries: Tensor,
    gallery: Gallery,
    gt: Tensor | Sequence[Sequence[int]] | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    *,
    chunk_size: int = 4096,
    query_chunk_size: int | None = None,
    backend: str = "torch",
    faiss_index: str = "Flat",
) -> dict[str, float]:
    """Recall@k in percent ({'R@1': ..., ...}): a query counts when any of its correct gallery rows is in its top k.

    `gt` is (Q,) (one correct gallery row per query), (Q, G) padded with -1, or a list of lists (several correct
    rows, e.g. the 5 captions of an image). One pass over the gallery with a running top-max(ks).
    """
    gt_t = _gt_matrix(gt, queries.shape[0]).to(queries.device)
    _, top = chunked_topk(
        queries, gallery, max(ks), chunk_size=chunk_size, query_chunk_size=query_chunk_size,
        backend=backend, faiss_index=faiss_index,
    )
    hit = (top.unsqueeze(2) == gt_t.unsqueeze(1)) & (gt_t.unsqueeze(1) >= 0)  # (Q, k, G)
    hit_at = hit.any(2)  # (Q, k): position j holds a correct row
    return {f"R@{k}": 100.0 * hit_at[:, :k].any(1).float().mean().item() for k in ks}


def chunked_ranks(
    queries: Tensor,
    gallery: Tensor | Iterable[Tensor],
    gt: Tensor | Sequence[Sequence[int]] | Sequence[int],
    *,
    chunk_size: int = 4096,
) -> Tensor:
    """(Q,) 0-based rank of the first correct gallery row of each query, in the order `chunked_topk` ranks.

    Rank of row j = #{m : s_m > s_j} + #{m < j : s_m = s_j} (ties: lower index first); the first correct row is
    the correct row of smallest rank. Two scans over the gallery (a tensor, or a re-iterable of chunks such as a
    list or `ShardedSplit.chunks(rows)`): the first collects the scores of the correct rows, the second counts
    the rows ranking before the best one. Both scans compute scores identically, so no rounding mismatch.
    """
    _check_args(queries, 1, chunk_size, None)
    gt_t = _gt_matrix(gt, queries.shape[0]).to(queries.device)
    valid = gt_t >= 0
    gt_scores = torch.full(gt_t.shape, float("-inf"), dtype=queries.dtype, device=queries.device)
    for start, s in _scan_scores(queries, gallery, chunk_size):
        local = gt_t - start
        inside = valid & (local >= 0) & (local < s.shape[1])
        picked = s.gather(1, local.clamp(0, s.shape[1] - 1))
        gt_scores = torch.where(inside, picked, gt_scores)
    best_score = gt_scores.max(1).values
    sentinel = torch.iinfo(torch.long).max
    best_index = gt_t.masked_fill(~valid | (gt_scores < best_score[:, None]), sentinel).min(1).values
    ranks = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
    for start, s in _scan_scores(queries, gallery, chunk_size):
        index = torch.arange(start, start + s.shape[1], device=queries.device)
        before = (s > best_score[:, None]) | ((s == best_score[:, None]) & (index[None] < best_index[:, None]))
        ranks += before.sum(1)
    return ranks


def _scan_scores(queries: Tensor, gallery: Tensor | Iterable[Tensor], chunk_size: int) -> Iterator[tuple[int, Tensor]]:
    """(first gallery row, (Q, c) scores) for each gallery chunk."""
    if not isinstance(gallery, Tensor) and iter(gallery) is gallery:
        raise ConfigError("chunked_ranks scans the gallery twice: pass a tensor or a re-iterable (not an iterator)")
    start = 0
    for chunk in iter_gallery_chunks(gallery, chunk_size):
        if chunk.shape[1] != queries.shape[1]:
            raise ConfigError(f"gallery has D={chunk.shape[1]} but queries have D={queries.shape[1]}")
        yield start, queries @ chunk.to(device=queries.device, dtype=queries.dtype).T
        start += chunk.shape[0]


# ----------------------------------------------------------------------------------------- cache affinity
def chunked_cache_affinity(
    queries: Tensor,
    keys: Gallery,
    values: Tensor | Iterable[Tensor],
    *,
    beta: float = 1.0,
    chunk_size: int = 4096,
) -> Tensor:
    """Tip-Adapter's cache term `exp(−β(1 − f Fᵀ)) L` (docs/methods.md §3), summed over key chunks: (Q, C).

    `queries` (Q, D) and `keys` (M, D) (or an iterable of key chunks / (key, label) pairs) are used as given
    (normalise them first). `values` is (M, C) one-hot, or an iterable of (c, C) chunks aligned with the key
    chunks. The product is additive over key rows, so chunking is exact up to float summation order; memory
    O(Q × chunk_size) instead of O(Q × M).
    """
    out = None
    value_chunks = iter_gallery_chunks(values, chunk_size) if isinstance(values, Tensor) else iter(values)
    for key_chunk in iter_gallery_chunks(keys, chunk_size):
        v = next(value_chunks, None)
        if v is None or v.shape[0] != key_chunk.shape[0]:
            raise ConfigError("cache values must have one row per key, chunked like the keys")
        term = cache_affinity(queries @ key_chunk.to(queries.dtype).T, beta) @ v.to(queries.dtype)
        out = term if out is None else out + term
    if out is None:
        raise ConfigError("cache affinity over an empty cache")
    return out
