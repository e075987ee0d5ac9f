"""Per-dimension variance of image features (docs/methods.md §5: the IMO paper argues its adapter increases it).

For features X (N, D): var_d = (1/(N−1)) Σ_i (x_id − mean_d)², on the L2-normalised features (the space the cache
affinities use) and on the raw ones. Reported as the mean over dimensions, their sum, and the per-dimension vector.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.ops import l2_normalize, pool_views


def feature_variance(image: Tensor) -> dict[str, Any]:
    """{'normalised': {mean, total, per_dim}, 'raw': {mean, total}} for (N, D) or (N, V, D) raw features."""
    x = pool_views(image).double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ConfigError(f"feature variance needs (N, D) features with N >= 2, got shape {tuple(image.shape)}")
    out: dict[str, Any] = {}
    for name, feats in (("normalised", l2_normalize(x)), ("raw", x)):
        var = feats.var(dim=0, unbiased=True)
        out[name] = {"mean": float(var.mean()), "total": float(var.sum())}
    out["normalised"]["per_dim"] = [float(v) for v in l2_normalize(x).var(dim=0, unbiased=True)]
    return out
