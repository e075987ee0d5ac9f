"""Backbone synergy, the normalisation study (docs/methods.md §6): top-1 of every backbone × normalisation of the raw
image embeddings (raw, l2, centred_l2, standardised), zero-shot against the prompt-ensembled, L2-normalised text
classifier and with a linear probe fitted on the training split."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.features.featureset import FeatureSet
from clipadapt.ops import l2_normalize

NORMALISATIONS = ("raw", "l2", "centred_l2", "standardised")


def feature_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of raw embeddings (N, D)."""
    return x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)


def normalise_features(x: Tensor, kind: str, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Apply one normalisation to raw embeddings (N, D).

    raw: unchanged; l2: x/‖x‖; centred_l2: (x − μ)/‖x − μ‖; standardised: (x − μ)/σ per dimension.
    μ, σ come from `stats` (computed by the caller on the set it chooses; see docs/backbones.md).
    """
    if kind == "raw":
        return x
    if kind == "l2":
        return l2_normalize(x)
    if kind not in NORMALISATIONS:
        raise ConfigError(f"unknown normalisation {kind!r}; choose from {', '.join(NORMALISATIONS)}")
    mu, sigma = stats if stats is not None else feature_statistics(x)
    return l2_normalize(x - mu) if kind == "centred_l2" else (x - mu) / sigma


def fit_linear_probe(x: Tensor, y: Tensor, num_classes: int, *, weight_decay: float = 1e-4,
                     max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression (weights W (C, D), bias b) by full-batch L-BFGS on CE + wd·‖W‖².

    The objective is convex and the start is zero, so the fit is deterministic: nothing is drawn at random
    and the caller's global RNG is left alone.
    """
    x, y = x.double(), y.long()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def normalisation_study(
    feature_sets: dict[str, FeatureSet],
    *,
    eval_split: str = "test",
    train_split: str | None = "train",
    stats_split: str | None = None,
    probe_weight_decay: float = 1e-4,
    probe_max_iter: int = 100,
) -> list[dict[str, Any]]:
    """Top-1 of every backbone × normalisation, zero-shot and (when `train_split` is present) linear probe.

    Zero-shot: the transform is applied to the image embeddings only; W stays the prompt-ensembled,
    L2-normalised text classifier. μ/σ come from `stats_split` (default: 'unlabeled' when present, else the
    evaluated split's images — transductive like DN, labels never read). Linear probe: μ/σ from the
    training images, applied to train and evaluated images alike.
    """
    rows = []
    for name, fs in feature_sets.items():
        ev = fs.split(eval_split)
        x_eval, y_eval = ev.pooled(), ev.labels(eval_split)
        zs_source = stats_split or ("unlabeled" if fs.has_split("unlabeled") else eval_split)
        zs_stats = feature_statistics(fs.split(zs_source).pooled())
        w = fs.classifier()
        has_train = train_split is not None and fs.has_split(train_split)
        if has_train:
            tr = fs.split(train_split)
            x_tr, y_tr = tr.pooled(), tr.labels(train_split)
            tr_stats = feature_statistics(x_tr)
        for kind in NORMALISATIONS:
            zs = normalise_features(x_eval, kind, zs_stats) @ w.T
            row = {"backbone": name, "normalisation": kind, "zeroshot_top1": _top1(zs, y_eval),
                   "zeroshot_stats": zs_source}
            if has_train:
                pw, pb = fit_linear_probe(normalise_features(x_tr, kind, tr_stats), y_tr, fs.num_classes,
                                          weight_decay=probe_weight_decay, max_iter=probe_max_iter)
                row["probe_top1"] = _top1(normalise_features(x_eval, kind, tr_stats) @ pw.T + pb, y_eval)
            rows.append(row)
    return rows


def _top1(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()
