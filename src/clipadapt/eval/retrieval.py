"""Image↔text retrieval recall, computed in query chunks (never the full (Q, G) score matrix at once).

Ground truth `gt` for Q queries is either a (Q,) int64 tensor (one correct gallery item per query, e.g.
text→image with `text_to_image`) or a (Q, G) int64 tensor padded with −1 (several correct items, e.g.
image→text: every caption of the image; build it with `image_to_texts`).

Scoring goes through the chunked top-k engine of `clipadapt.eval.topk` (one convention for the whole project):
a gallery item's rank is the number of items scoring strictly higher plus the tied items of lower gallery
index (ties: lower index first, as a stable descending sort); a query's rank is that of its best correct item
(0 = a hit at R@1). `chunk_size` is the number of queries scored at once against the whole gallery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.eval.metrics import mean_std
from clipadapt.eval.topk import _gt_matrix, chunked_ranks, chunked_recall_at_k
from clipadapt.methods.dn import DistributionNormalizer
from clipadapt.ops import check_same_dim, l2_normalize, pool_views

DEFAULT_KS = (1, 5, 10)


def image_to_texts(text_to_image: Tensor, n_images: int) -> Tensor:
    """(N, G) padded (−1) indices of each image's captions, from the (M,) caption→image map."""
    text_to_image = text_to_image.long()
    if text_to_image.numel() and (text_to_image.min() < 0 or text_to_image.max() >= n_images):
        raise ConfigError(
            f"text_to_image must hold image indices in [0, {n_images}); got "
            f"[{int(text_to_image.min())}, {int(text_to_image.max())}]"
        )
    counts = torch.bincount(text_to_image, minlength=n_images)
    if counts.numel() and int(counts.min()) == 0:
        missing = int((counts == 0).sum())
        raise ConfigError(f"{missing} of {n_images} images have no caption in text_to_image")
    order = torch.argsort(text_to_image, stable=True)
    width = int(counts.max()) if counts.numel() else 0
    out = torch.full((n_images, width), -1, dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(order.numel()) - starts[text_to_image[order]]
    out[text_to_image[order], slot] = order
    return out


def _as_padded(gt: Tensor | Sequence[Sequence[int]], n_queries: int, n_gallery: int) -> Tensor:
    """`clipadapt.eval.topk`'s (Q, G) −1-padded ground truth, with every index checked against the gallery size."""
    gt = _gt_matrix(gt, n_queries)
    if (gt >= n_gallery).any() or ((gt < 0) & (gt != -1)).any():
        raise ConfigError(f"ground-truth gallery indices must lie in [0, {n_gallery}) (−1 = padding)")
    return gt


def retrieval_ranks(
    query: Tensor, gallery: Tensor, gt: Tensor | Sequence[Sequence[int]], *, chunk_size: int = 1024
) -> Tensor:
    """(Q,) rank of each query's best correct gallery item under dot-product scores (0 = top; ties: lower
    gallery index first). `chunked_ranks` over gallery chunks of `chunk_size` rows."""
    check_same_dim(query, gallery, "queries", "gallery")
    gt = _as_padded(gt, query.shape[0], gallery.shape[0]).to(query.device)
    return chunked_ranks(query, gallery, gt, chunk_size=chunk_size)


def retrieval_recall(
    query: Tensor,
    gallery: Tensor,
    gt: Tensor | Sequence[Sequence[int]],
    ks: Iterable[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k (percent) of `query` against `gallery` with dot-product scores (see module docstring):
    `chunked_recall_at_k` with `chunk_size` queries at a time against the whole gallery."""
    check_same_dim(query, gallery, "queries", "gallery")
    if query.shape[0] == 0 or gallery.shape[0] == 0:
        raise ConfigError(f"recall needs queries and a gallery; got {query.shape[0]} queries and "
                          f"{gallery.shape[0]} gallery items (an empty split)")
    gt = _as_padded(gt, query.shape[0], gallery.shape[0]).to(query.device)
    ks = tuple(ks)
    n_gallery = gallery.shape[0]
    within = tuple(min(k, n_gallery) for k in ks)  # R@k for k beyond the gallery = R@(gallery size)
    recall = chunked_recall_at_k(query, gallery, gt, within, chunk_size=max(n_gallery, 1), query_chunk_size=chunk_size)
    return {f"R@{k}": recall[f"R@{w}"] for k, w in zip(ks, within)}


def evaluate_retrieval(
    image: Tensor,
    text: Tensor,
    text_to_image: Tensor,
    *,
    normalizer=None,
    ks: Iterable[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """Image→text and text→image recall on raw embeddings: plain cosine, or a fitted DN `normalizer`.

    With DN the scores are S_λ = (norm(f) − λμ_img)·(norm(t) − λμ_txt) (retrieval task, no re-normalisation).
    """
    ks = tuple(ks)
    if text_to_image.shape[0] != text.shape[0]:
        raise ConfigError(f"text_to_image has {text_to_image.shape[0]} entries but there are {text.shape[0]} captions")
    if normalizer is None:
        img, txt = l2_normalize(pool_views(image)), l2_normalize(text)  # (N, V, D): views averaged raw (TTA)
    else:
        if normalizer.task == "classification":
            raise ConfigError("evaluate_retrieval needs a DistributionNormalizer with task='retrieval'")
        img, txt = normalizer.transform_image(image), normalizer.transform_text(text)
    i2t = retrieval_recall(img, txt, image_to_texts(text_to_image, image.shape[0]), ks, chunk_size)
    t2i = retrieval_recall(txt, img, text_to_image, ks, chunk_size)
    return {"i2t": i2t, "t2i": t2i, "rsum": sum(i2t.values()) + sum(t2i.values())}


def summarize_draws(draws: Sequence[dict], directions: Sequence[str] = ("i2t", "t2i")) -> dict[str, dict[str, float]]:
    """Mean and std over seeded DN draws of every recall: {'mean': {'i2t R@1': ..}, 'std': {...}}."""
    mean, std = {}, {}
    for d in directions:
        for k in draws[0][d]:
            mean[f"{d} {k}"], std[f"{d} {k}"] = mean_std(draw[d][k] for draw in draws)
    mean["rsum"], std["rsum"] = mean_std(draw["rsum"] for draw in draws)
    return {"mean": mean, "std": std}


def retrieval_with_dn(
    image: Tensor,
    text: Tensor,
    text_to_image: Tensor,
    pool_image: Tensor,
    pool_text: Tensor,
    *,
    lam: float,
    n_samples: int | None,
    seeds: Sequence[int] = (0,),
    ks: Iterable[int] = DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict:
    """Plain and DN recall on the evaluated set; DN's means from (`pool_image`, `pool_text`), one fit per seed."""
    ks = tuple(ks)
    plain = evaluate_retrieval(image, text, text_to_image, ks=ks, chunk_size=chunk_size)
    draws = []
    for seed in seeds:
        dn = DistributionNormalizer(lam=lam, n_samples=n_samples, seed=seed, task="retrieval").fit(pool_image, pool_text)
        result = evaluate_retrieval(image, text, text_to_image, normalizer=dn, ks=ks, chunk_size=chunk_size)
        draws.append({"seed": seed, **result, "n_image_samples": dn.n_image_samples_, "n_text_samples": dn.n_text_samples_})
    return {"plain": plain, "dn": {"lambda": lam, **summarize_draws(draws), "draws": draws}}
