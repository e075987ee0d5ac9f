"""Small tensor helpers shared by every method. Pure functions: tensors in, tensors out."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clipadapt.errors import ConfigError, NotFittedError

CLIP_LOGIT_SCALE = 100.0


def add_bias(logits: Tensor, bias: float) -> Tensor:
    """`logits + bias` (a model's learned logit bias, e.g. SigLIP's); bias 0 returns `logits` itself, so CLIP's
    numbers are bit for bit those computed without a bias."""
    return logits + bias if bias else logits


def l2_normalize(x: Tensor, dim: int = -1, eps: float = 1e-12) -> Tensor:
    """Scale vectors along `dim` to unit L2 norm (zero vectors stay zero).

    Overflow-safe: when a norm is not representable (finite embeddings × 1e38 square to inf; tiny ones to 0), the
    vectors are first divided by their max-abs value, so every non-zero finite vector still becomes a unit vector
    instead of silently turning into zeros. Embeddings holding inf or nan are a ConfigError. The fallback costs
    nothing on ordinary embeddings: one finiteness/size check of the (N, 1) norms. Under torch.export / ONNX export /
    torch.compile (a graph cannot branch on data) the ordinary formula is traced alone (heads/module.py)."""
    norm = x.norm(dim=dim, keepdim=True)
    # one reduction and one host sync on the happy path; nan norms compare False, so they take the checked path
    if torch.compiler.is_compiling() or bool(((norm >= _SMALL_NORM) & (norm < math.inf)).all()):
        return x / norm.clamp_min(eps)
    return _l2_normalize_scaled(x, dim, eps)


_SMALL_NORM = 1e-18  # below this a float32 sum of squares may have underflowed (and zero rows land here: still zero)


def _l2_normalize_scaled(x: Tensor, dim: int, eps: float) -> Tensor:
    """x / max|x| first (exact up to rounding: a power-free rescale of each vector), then the ordinary norm."""
    peak = x.abs().amax(dim=dim, keepdim=True)
    if not bool(torch.isfinite(peak).all()):
        raise ConfigError(f"cannot L2-normalise embeddings {tuple(x.shape)}: they contain inf or nan values")
    y = x / peak.clamp_min(torch.finfo(x.dtype).tiny)
    return y / y.norm(dim=dim, keepdim=True).clamp_min(eps)


def safe_mean(x: Tensor, dim: int = 0) -> Tensor:
    """`x.mean(dim)` that cannot overflow for finite `x` (a sum of N values near 3e38 is inf in float32): when
    the plain mean is not finite, average x / max|x| and scale back. inf/nan inputs are a ConfigError."""
    mean = x.mean(dim=dim)
    if torch.compiler.is_compiling() or bool(torch.isfinite(mean).all()):  # traced graphs: the plain mean
        return mean
    peak = x.abs().amax()
    if not bool(torch.isfinite(peak)):
        raise ConfigError(f"cannot average embeddings {tuple(x.shape)}: they contain inf or nan values")
    return (x / peak).mean(dim=dim) * peak


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(N,) int labels -> (N, C) one-hot matrix; labels outside [0, C) are an error."""
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(
            f"labels must lie in [0, {num_classes}); got min {int(labels.min())}, max {int(labels.max())}"
        )
    return torch.nn.functional.one_hot(labels, num_classes).to(dtype)


def pool_views(x: Tensor) -> Tensor:
    """Average augmented views: (N, V, D) -> (N, D) on the raw embeddings; (N, D) passes through."""
    if x.ndim == 3:
        return safe_mean(x, dim=1)
    if x.ndim == 2:
        return x
    raise ConfigError(f"expected embeddings of shape (N, D) or (N, V, D), got {tuple(x.shape)}")


def prompt_ensemble(text: Tensor) -> Tensor:
    """Class classifier W (C, D) from class text embeddings (docs/methods.md §1).

    (C, T, D): L2-normalise each template embedding, average over T, re-normalise.
    (C, D): L2-normalise.
    """
    if text.ndim == 3:
        return l2_normalize(l2_normalize(text).mean(dim=1))
    if text.ndim == 2:
        return l2_normalize(text)
    raise ConfigError(f"expected text embeddings of shape (C, D) or (C, T, D), got {tuple(text.shape)}")


def check_is_fitted(estimator: object, attribute: str) -> None:
    """Raise NotFittedError naming the estimator when `attribute` (a learned `_` attribute) is missing."""
    if not hasattr(estimator, attribute):
        name = type(estimator).__name__
        raise NotFittedError(f"{name} is not fitted yet: call {name}.fit(...) before using it")


def check_same_dim(a: Tensor, b: Tensor, what_a: str, what_b: str) -> None:
    """Raise a readable error when two embedding sets have different dimensions D."""
    if a.shape[-1] != b.shape[-1]:
        raise ConfigError(
            f"{what_a} has D={a.shape[-1]} but {what_b} has D={b.shape[-1]}: "
            "were they computed with the same model?"
        )
