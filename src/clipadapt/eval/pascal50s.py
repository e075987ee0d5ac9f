"""Pascal-50S pairwise accuracy (HC / HI / HM / MM) of caption scores, with and without DN (docs/methods.md §2).

For each pair (image, candidate A, candidate B) a metric prefers A when score(A) > score(B); the pair counts as
correct when that matches the human majority, and a score tie counts one half. Pairs whose human vote is tied are
left out (reported as `n_tied_votes`). Accuracy in percent per category and their mean.
The scores are clipadapt.eval.captions': CLIP-S, RefCLIP-S, and DN-CLIP-S / DN-RefCLIP-S with a task='caption'
DistributionNormalizer whose means come from the distinct images and candidate captions of the evaluated pairs.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor

from clipadapt.errors import ConfigError

CATEGORIES = ("HC", "HI", "HM", "MM")


def pairwise_accuracy(score_a: Sequence[float] | Tensor, score_b: Sequence[float] | Tensor, winner: Sequence[str],
                      category: Sequence[str]) -> dict[str, Any]:
    """{'HC', 'HI', 'HM', 'MM', 'mean', 'n', 'n_tied_votes'}: % of pairs where the metric agrees with humans."""
    a, b = [float(x) for x in score_a], [float(x) for x in score_b]
    if not len(a) == len(b) == len(winner) == len(category):
        raise ConfigError(f"pairwise accuracy: {len(a)} A scores, {len(b)} B scores, {len(winner)} winners, "
                          f"{len(category)} categories")
    credit: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    tied = 0
    for sa, sb, w, c in zip(a, b, winner, category):
        if w == "tie":
            tied += 1
            continue
        if c not in credit:
            raise ConfigError(f"pairwise accuracy: unknown category {c!r}; expected one of {CATEGORIES}")
        credit[c].append(0.5 if sa == sb else float((sa > sb) == (w == "a")))
    out: dict[str, Any] = {c: 100.0 * sum(v) / len(v) if v else None for c, v in credit.items()}
    present = [v for v in out.values() if v is not None]
    out["mean"] = sum(present) / len(present) if present else None
    out["n"] = sum(len(v) for v in credit.values())
    out["n_tied_votes"] = tied
    return out


def pascal50s_accuracy(image: Tensor, cand_a: Tensor, cand_b: Tensor, references: Sequence[Tensor] | None,
                       winner: Sequence[str], category: Sequence[str], *, lam: float = 0.25,
                       n_samples: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Pairwise accuracy of every score, with and without DN. Rows i of image/cand_a/cand_b: pair i (raw)."""
    import torch

    from clipadapt.eval.captions import clip_score, dn_clip_score, dn_ref_clip_score, ref_clip_score
    from clipadapt.methods.dn import DistributionNormalizer

    pool_image = torch.unique(image, dim=0)
    pool_text = torch.unique(torch.cat([cand_a, cand_b]), dim=0)
    dn = DistributionNormalizer(lam=lam, n_samples=n_samples, seed=seed, task="caption").fit(pool_image, pool_text)
    scores = {"CLIP-S": (clip_score(image, cand_a), clip_score(image, cand_b)),
              "DN-CLIP-S": (dn_clip_score(image, cand_a, dn), dn_clip_score(image, cand_b, dn))}
    if references is not None:
        scores["RefCLIP-S"] = (ref_clip_score(image, cand_a, references), ref_clip_score(image, cand_b, references))
        scores["DN-RefCLIP-S"] = (dn_ref_clip_score(image, cand_a, references, dn),
                                  dn_ref_clip_score(image, cand_b, references, dn))
    return {"accuracy": {m: pairwise_accuracy(sa, sb, winner, category) for m, (sa, sb) in scores.items()},
            "dn": {"lambda": lam, "n_samples_requested": "all" if n_samples is None else n_samples, "seed": seed,
                   "n_image_samples": dn.n_image_samples_, "n_text_samples": dn.n_text_samples_,
                   "means_from": "the distinct images and candidate captions of the evaluated pairs"}}
