"""Reference-free and reference-based caption scores, with and without DN, and their Kendall τ to humans.

- CLIPScore (Hessel et al. 2021): ``CLIP-S(c, v) = w · max(cos(c, v), 0)``, w = 2.5.
- RefCLIPScore: harmonic mean of CLIP-S and ``max(max_r cos(c, r), 0)`` over the references r.
- DN-CLIPScore (docs/methods.md §2, caption task): ``(norm(v) − λμ_img)·(norm(c) − λμ_txt)``, means over the whole
  evaluated set by default, **no** 2.5 scale and **no** clamp. DN scores are not on CLIPScore's scale (they can be
  negative); only rank correlations (Kendall τ) are comparable across the two.
- DN-RefCLIPScore: the harmonic mean is undefined for signed scores, so DN's reference-based score is the
  arithmetic mean of DN-CLIPScore and the plain reference similarity ``max_r cos(c, r)`` (unclamped). DN is
  derived for the cross-modal score; the text–text term is left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.eval.metrics import mean_std
from clipadapt.methods.dn import DistributionNormalizer
from clipadapt.ops import l2_normalize

CLIPSCORE_W = 2.5


def _check_pairs(image: Tensor, caption: Tensor) -> None:
    if image.ndim != 2 or caption.ndim != 2 or image.shape != caption.shape:
        raise ConfigError(
            f"caption scoring needs one image row per caption: image {tuple(image.shape)}, caption "
            f"{tuple(caption.shape)}"
        )


def clip_score(image: Tensor, caption: Tensor, *, w: float = CLIPSCORE_W) -> Tensor:
    """(N,) CLIPScore of each (image_i, caption_i) pair from raw embeddings."""
    _check_pairs(image, caption)
    return w * (l2_normalize(image) * l2_normalize(caption)).sum(-1).clamp_min(0)


def reference_similarity(caption: Tensor, references: Tensor | Sequence[Tensor]) -> Tensor:
    """(N,) max over the references of cos(caption_i, reference) (unclamped).

    `references`: (N, R, D) (rows of zeros are padding and ignored) or a list of N (R_i, D) tensors.
    """
    if not isinstance(references, Tensor):
        if len(references) != caption.shape[0]:
            raise ConfigError(f"{len(references)} reference lists for {caption.shape[0]} captions")
        return torch.stack([reference_similarity(caption[i : i + 1], r.unsqueeze(0))[0]
                            for i, r in enumerate(references)])
    if references.ndim != 3 or references.shape[0] != caption.shape[0] or references.shape[-1] != caption.shape[-1]:
        raise ConfigError(f"references must be (N={caption.shape[0]}, R, D={caption.shape[-1]}), got "
                          f"{tuple(references.shape)}")
    valid = references.norm(dim=-1) > 0
    if not valid.any(dim=1).all():
        raise ConfigError("every caption needs at least one (non-zero) reference embedding")
    sims = torch.einsum("nd,nrd->nr", l2_normalize(caption), l2_normalize(references))
    return sims.masked_fill(~valid, float("-inf")).max(dim=1).values


def ref_clip_score(image: Tensor, caption: Tensor, references: Tensor | Sequence[Tensor], *,
                   w: float = CLIPSCORE_W) -> Tensor:
    """(N,) RefCLIPScore: harmonic mean of CLIP-S and the clamped best reference similarity."""
    a = clip_score(image, caption, w=w)
    b = reference_similarity(caption, references).clamp_min(0)
    denom = a + b
    return torch.where(denom > 0, 2 * a * b / denom.clamp_min(1e-12), torch.zeros_like(denom))


def dn_clip_score(image: Tensor, caption: Tensor, normalizer) -> Tensor:
    """(N,) DN caption score Σ (norm(v) − λμ_img)(norm(c) − λμ_txt): a fitted task='caption' normalizer."""
    _check_pairs(image, caption)
    if normalizer.task == "classification":
        raise ConfigError("dn_clip_score needs a DistributionNormalizer with task='caption' (or 'retrieval')")
    return normalizer.pair_score(image, caption)


def dn_ref_clip_score(image: Tensor, caption: Tensor, references: Tensor | Sequence[Tensor], normalizer) -> Tensor:
    """(N,) DN reference-based score: mean of DN-CLIPScore and max_r cos(c, r) (see the module docstring)."""
    return 0.5 * (dn_clip_score(image, caption, normalizer) + reference_similarity(caption, references))


def kendall_tau(scores: Tensor | Sequence[float], human: Tensor | Sequence[float],
                variant: Literal["b", "c"] = "c") -> dict:
    """Kendall τ-b or τ-c between metric scores and human judgments: {'tau', 'pvalue', 'variant', 'n'}.

    τ is NaN (null in JSON) when either side is constant — e.g. CLIP-S clamped to 0 for every pair of an
    untrained model.
    """
    from scipy.stats import kendalltau

    x = torch.as_tensor(scores, dtype=torch.float64).flatten().numpy()
    y = torch.as_tensor(human, dtype=torch.float64).flatten().numpy()
    if x.shape != y.shape:
        raise ConfigError(f"{x.shape[0]} metric scores but {y.shape[0]} human judgments")
    if variant not in ("b", "c"):
        raise ConfigError(f"Kendall τ variant must be 'b' or 'c', got '{variant}'")
    if x.shape[0] < 2:
        raise ConfigError("Kendall τ needs at least 2 judgments")
    res = kendalltau(x, y, variant=variant)
    return {"tau": float(res.statistic), "pvalue": float(res.pvalue), "variant": variant, "n": int(x.shape[0])}


def evaluate_caption_scores(
    image: Tensor,
    caption: Tensor,
    human: Tensor,
    references: Tensor | Sequence[Tensor] | None = None,
    *,
    lam: float = 0.25,
    n_samples: int | None = None,
    seeds: Sequence[int] = (0,),
    pool_image: Tensor | None = None,
    pool_text: Tensor | None = None,
) -> dict:
    """Per-judgment scores of every metric and their Kendall τ-b / τ-c against `human`.

    Rows i of `image`, `caption`, `human` (and `references`) form one judgment. DN's means come from
    (`pool_image`, `pool_text`); by default the distinct images and captions of the evaluated set itself.
    Returns {'scores': {metric: (N,) tensor}, 'correlations': {metric: {...}}, 'dn': {...}}.
    """
    if human.shape[0] != image.shape[0]:
        raise ConfigError(f"{human.shape[0]} human judgments for {image.shape[0]} (image, caption) pairs")
    pool_image = torch.unique(image, dim=0) if pool_image is None else pool_image
    pool_text = torch.unique(caption, dim=0) if pool_text is None else pool_text
    scores = {"CLIP-S": clip_score(image, caption)}
    if references is not None:
        scores["RefCLIP-S"] = ref_clip_score(image, caption, references)
    draws = []
    for r, seed in enumerate(seeds):
        dn = DistributionNormalizer(lam=lam, n_samples=n_samples, seed=seed, task="caption").fit(pool_image, pool_text)
        draw = {"DN-CLIP-S": dn_clip_score(image, caption, dn)}
        if references is not None:
            draw["DN-RefCLIP-S"] = dn_ref_clip_score(image, caption, references, dn)
        if r == 0:
            scores.update(draw)
            used = {"n_image_samples": dn.n_image_samples_, "n_text_samples": dn.n_text_samples_}
        draws.append({"seed": seed, **{m: {v: kendall_tau(s, human, v)["tau"] for v in ("b", "c")}
                                       for m, s in draw.items()}})
    correlations = {m: {f"tau_{v}": kendall_tau(s, human, v)["tau"] for v in ("b", "c")} for m, s in scores.items()}
    for m in correlations:
        if m.startswith("DN") and len(draws) > 1:
            for v in ("b", "c"):
                correlations[m][f"tau_{v}_mean"], correlations[m][f"tau_{v}_std"] = mean_std(d[m][v] for d in draws)
    dn_info = {"lambda": lam, "n_samples_requested": "all" if n_samples is None else n_samples, **used,
               "seeds": list(seeds), "draws": draws}
    return {"scores": scores, "correlations": correlations, "dn": dn_info, "n": int(human.shape[0])}
