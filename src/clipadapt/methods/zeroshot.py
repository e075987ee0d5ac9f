"""Zero-shot classification (docs/methods.md §1): logits = s · norm(f) · Wᵀ + b.

`s` (logit_scale) and `b` (logit_bias) are the model's own: CLIP's s = 100, b = 0; SigLIP learns both.
"""

from __future__ import annotations

from torch import Tensor

from clipadapt.methods._params import Params
from clipadapt.ops import (
    CLIP_LOGIT_SCALE,
    add_bias,
    check_is_fitted,
    check_same_dim,
    l2_normalize,
    pool_views,
    prompt_ensemble,
)


class ZeroShotClassifier(Params):
    """CLIP's zero-shot classifier over prompt-ensembled class text embeddings."""

    def __init__(self, *, logit_scale: float = CLIP_LOGIT_SCALE, logit_bias: float = 0.0):
        self.logit_scale, self.logit_bias = logit_scale, logit_bias

    def fit(self, text: Tensor) -> ZeroShotClassifier:
        """`text`: raw class text embeddings (C, D) or (C, T, D)."""
        self.classifier_ = prompt_ensemble(text)
        return self

    def predict_logits(self, features: Tensor) -> Tensor:
        """(N, D) or (N, V, D) raw image embeddings -> (N, C) logits (views averaged before normalising)."""
        check_is_fitted(self, "classifier_")
        f = pool_views(features)
        check_same_dim(f, self.classifier_, "image features", "class text embeddings")
        return add_bias(self.logit_scale * l2_normalize(f) @ self.classifier_.T, self.logit_bias)
