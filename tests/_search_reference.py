"""Reference: the vectorised α/β(/γ) search as it was before candidate pruning (kept verbatim in behaviour).

Every (α[, γ]) point of a β is scored with one broadcast over all C classes and the argmax taken. The new
`clipadapt.eval.search` must return exactly the same correct-count grid (tests/test_search_pruned.py,
benchmarks/fewshot_search.py). Uses the same chunk-size rule as `clipadapt.eval.search._chunk_size`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clipadapt.eval.search import TIP_GRID, TIPX_GRID, _check_val, _chunk_size, _chunks, _rows, resolve_grid
from clipadapt.methods.tip_adapter import cache_affinity
from clipadapt.methods.tip_x import minmax_coefficients


def reference_tip_adapter(model, val_features, val_labels, *, alphas=None, betas=None, adapted_val_features=None,
                          chunk_size=None) -> Tensor:
    """(α, β) int64 counts of correct validation predictions."""
    grid = resolve_grid(TIP_GRID, {"alpha": alphas, "beta": betas})
    _check_val(val_features, val_labels, adapted_val_features)
    n, c = val_features.shape[0], model.values_.shape[1]
    dtype, device = model.values_.dtype, model.values_.device
    alpha_t = torch.tensor(grid["alpha"], dtype=dtype, device=device).view(-1, 1, 1)
    labels = val_labels.to(device)
    correct = torch.zeros(len(grid["alpha"]), len(grid["beta"]), dtype=torch.long, device=device)
    per_row = len(grid["alpha"]) * c + 2 * model.values_.shape[0]
    for rows in _chunks(n, _chunk_size(chunk_size, per_row, n)):
        zs = model.zero_shot_logits(val_features[rows])
        cosine = model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        for j, beta in enumerate(grid["beta"]):
            cache = cache_affinity(cosine, beta) @ model.values_
            logits = zs + alpha_t * cache
            correct[:, j] += (logits.argmax(dim=-1) == labels[rows]).sum(dim=-1)
    return correct.cpu()


def reference_tip_x(model, val_features, val_labels, *, alphas=None, betas=None, gammas=None,
                    adapted_val_features=None, chunk_size=None) -> Tensor:
    """(α, β, γ) int64 counts of correct validation predictions."""
    grid = resolve_grid(TIPX_GRID, {"alpha": alphas, "beta": betas, "gamma": gammas})
    _check_val(val_features, val_labels, adapted_val_features)
    n, c = val_features.shape[0], model.values_.shape[1]
    dtype, device = model.values_.dtype, model.values_.device
    na, ng = len(grid["alpha"]), len(grid["gamma"])
    size = _chunk_size(chunk_size, na * ng * c + 3 * model.values_.shape[0], n)
    zs_parts, kl_parts, ranges = [], [], []
    for rows in _chunks(n, size):
        zs_parts.append(model.zero_shot_logits(val_features[rows]))
        cosine = model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        kl = model.kl_to_keys(val_features[rows])
        kl_parts.append(kl @ model.values_)
        ranges.append(torch.stack([kl.min(), kl.max(), cosine.min(), cosine.max()]))
    r = torch.stack(ranges)
    a, b = minmax_coefficients(r[:, 0].min(), r[:, 1].max(), r[:, 2].min(), r[:, 3].max())
    alpha_t = torch.tensor(grid["alpha"], dtype=dtype, device=device).view(-1, 1, 1, 1)
    gamma_t = torch.tensor(grid["gamma"], dtype=dtype, device=device).view(1, -1, 1, 1)
    counts = model.values_.sum(dim=0)
    labels = val_labels.to(device)
    correct = torch.zeros(na, len(grid["beta"]), ng, dtype=torch.long, device=device)
    for part, rows in enumerate(_chunks(n, size)):
        zs = zs_parts[part]
        kl_term = (a * kl_parts[part] + b * counts).unsqueeze(0).unsqueeze(0)
        cosine = model.cache_cosine(val_features[rows], _rows(adapted_val_features, rows))
        for j, beta in enumerate(grid["beta"]):
            cache = cache_affinity(cosine, beta) @ model.values_
            logits = (zs + alpha_t * cache) - gamma_t * kl_term
            correct[:, j, :] += (logits.argmax(dim=-1) == labels[rows]).sum(dim=-1)
    return correct.cpu()
