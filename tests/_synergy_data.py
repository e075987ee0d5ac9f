"""Synthetic backbones of known quality for the synergy / ensemble / controller tests."""

from __future__ import annotations

import torch


def informative_and_noisy(n: int, seed: int, num_classes: int = 10, dim: int = 8):
    """Two backbones' logits on the same n samples: backbone 0 informative (~90 % top-1, modest scale),
    backbone 1 noisy and over-confident (~20 % top-1, logits ×20) so that naive averaging is dominated by it.
    Also random per-backbone embeddings (N, dim) for the controller. Returns (logits list, embeddings list, labels).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, num_classes).float()
    good = 3.0 * onehot + torch.randn(n, num_classes, generator=g)
    noisy = 20.0 * (0.4 * onehot + torch.randn(n, num_classes, generator=g))
    embeddings = [torch.randn(n, dim, generator=g), torch.randn(n, dim, generator=g)]
    return [good, noisy], embeddings, y


def top1(logits, labels) -> float:
    return 100.0 * (torch.as_tensor(logits).argmax(1) == labels).float().mean().item()
