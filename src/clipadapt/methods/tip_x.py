"""Tip-X (SuS-X, docs/methods.md §4), with the TX++ variant of §5.

Signatures P(f) = softmax(f Wᵀ / τ) of the test feature and of every cache key; M_ij = KL(P(f_i) ‖ P(F_j));
ψ rescales M min–max over the whole matrix being scored into [min T, max T] of that matrix's cosine
affinities T = f Fᵀ; the term enters negated:

    logits = s · f Wᵀ + b + α · exp(−β (1 − f Fᵀ)) L − γ · ψ(M) L    (s, b: the model's logit scale and bias)

TX++: the affinity uses adapted features (f̃ F̃ᵀ) and ψ's range comes from those adapted affinities; the KL
term keeps the original features. Because ψ's range is taken over the matrix being scored, the logits of a
row depend on the other rows passed in the same call (as in the method's definition): score a split at once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clipadapt.methods.tip_adapter import TIP_ALPHA, TIP_BETA, TipAdapter, cache_affinity, prepare_features
from clipadapt.ops import CLIP_LOGIT_SCALE, check_is_fitted

TIPX_TAU = 0.5


def log_signatures(features_normed: Tensor, classifier: Tensor, tau: float) -> Tensor:
    """log P(f) = log softmax(f Wᵀ / τ), (N, C), for normalised features."""
    return torch.log_softmax(features_normed @ classifier.T / tau, dim=-1)


def kl_matrix(log_p: Tensor, log_q: Tensor) -> Tensor:
    """M_ij = KL(P_i ‖ Q_j) = Σ_c P_ic (log P_ic − log Q_jc), for log-probabilities (N, C) and (K, C)."""
    p = log_p.exp()
    neg_entropy = (p * log_p).sum(dim=-1, keepdim=True)
    return (neg_entropy - p @ log_q.T).clamp_min(0.0)


def minmax_coefficients(m_min: Tensor, m_max: Tensor, t_min: Tensor, t_max: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) with ψ(M) = a·M + b mapping [min M, max M] onto [min T, max T] (a constant M maps to min T)."""
    span = m_max - m_min
    a = torch.where(span > 0, (t_max - t_min) / span.clamp_min(torch.finfo(span.dtype).tiny), torch.zeros_like(span))
    return a, t_min - a * m_min


class TipX(TipAdapter):
    """Tip-X: Tip-Adapter plus an image–image affinity measured through the text space (docs/methods.md §4)."""

    def __init__(
        self,
        *,
        alpha: float = TIP_ALPHA,
        beta: float = TIP_BETA,
        gamma: float = 0.1,
        tau: float = TIPX_TAU,
        logit_scale: float = CLIP_LOGIT_SCALE,
        logit_bias: float = 0.0,
    ):
        super().__init__(alpha=alpha, beta=beta, logit_scale=logit_scale, logit_bias=logit_bias)
        self.gamma, self.tau = gamma, tau

    def fit(self, keys: Tensor, key_labels: Tensor, text: Tensor, *, adapted_keys: Tensor | None = None) -> TipX:
        """Build the cache (as TipAdapter) and the keys' text-space signatures (from the original keys)."""
        super().fit(keys, key_labels, text, adapted_keys=adapted_keys)
        self.key_log_signatures_ = log_signatures(self.keys_, self.classifier_, self.tau)
        return self

    def kl_to_keys(self, features: Tensor) -> Tensor:
        """M (N, NK): KL divergence of each feature's signature to each cache key's (original features)."""
        check_is_fitted(self, "key_log_signatures_")
        return kl_matrix(log_signatures(prepare_features(features), self.classifier_, self.tau), self.key_log_signatures_)

    def predict_logits(self, features: Tensor, adapted_features: Tensor | None = None) -> Tensor:
        """(N, D) or (N, V, D) raw test embeddings -> (N, C) logits; ψ's range is taken over these N rows."""
        zs = self.zero_shot_logits(features)
        cosine = self.cache_cosine(features, adapted_features)
        kl = self.kl_to_keys(features)
        a, b = minmax_coefficients(kl.min(), kl.max(), cosine.min(), cosine.max())
        affinity = cache_affinity(cosine, self.beta)
        # ψ(M) L = a·(M L) + b·(1 L): the same arithmetic as the vectorised search, so both agree bit for bit
        kl_term = a * (kl @ self.values_) + b * self.values_.sum(dim=0)
        return zs + self.alpha * (affinity @ self.values_) - self.gamma * kl_term
