"""Classification and retrieval metrics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from clipadapt.errors import ConfigError


def topk_correct(logits: Tensor, labels: Tensor, k: int) -> Tensor:
    """(N,) bool: whether the true label is among the k highest logits of each row."""
    if logits.shape[0] != labels.shape[0]:
        raise ConfigError(f"logits have {logits.shape[0]} rows but labels have {labels.shape[0]}")
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels.view(-1, 1)).any(dim=1)


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent, keyed 'top1', 'top5', ..."""
    if logits.shape[0] == 0:
        raise ConfigError("accuracy over 0 rows is undefined: the evaluated split is empty")
    labels = labels.to(logits.device)
    return {f"top{k}": 100.0 * topk_correct(logits, labels, k).float().mean().item() for k in ks}


def classification_report(logits: Tensor, labels: Tensor, ks: Iterable[int] = (1, 5)) -> dict[str, float | int]:
    """{'top1', 'top5', 'n'} for a results file."""
    report: dict[str, float | int] = dict(topk_accuracy(logits, labels, ks))
    report["n"] = int(labels.shape[0])
    return report


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    t = torch.tensor(list(values), dtype=torch.float64)
    if t.numel() == 0:
        raise ConfigError("mean_std of no values")
    std = t.std(unbiased=True).item() if t.numel() > 1 else 0.0
    return t.mean().item(), std
