"""Loading the inputs of a backbone-synergy run: feature directories, saved logits, or models through the cache.

Each loader checks that the backbones describe the same samples in the same order over the same classes and
raises an error naming the directory / file that differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipadapt.errors import FeatureDirError, WeightsUnavailableError
from clipadapt.features.featureset import FeatureSet
from clipadapt.features.io import load_feature_dir, load_npy
from clipadapt.methods.ensembles import check_array_list

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- saved logits
def load_logits_file(path: str | Path) -> np.ndarray:
    """A (N, C) .npy array, memory-mapped (read lazily, chunk by chunk)."""
    path = Path(path)
    arr = load_npy(path, what="logits")
    if arr.ndim != 2:
        raise FeatureDirError(f"{path}: expected (N, C) logits, got shape {arr.shape}")
    return arr


def load_labels_file(path: str | Path, n: int, num_classes: int, what: str) -> Tensor:
    """(N,) integer labels from .npy, checked against the logits they label."""
    path = Path(path)
    arr = load_npy(path, what="labels", mmap=False)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise FeatureDirError(f"{path}: labels must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[0] != n:
        raise FeatureDirError(f"{path}: {arr.shape[0]} labels but the {what} logits have N={n} rows")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise FeatureDirError(
            f"{path}: labels in [{arr.min()}, {arr.max()}] but the {what} logits have C={num_classes} classes"
        )
    return torch.from_numpy(arr.astype(np.int64))


def load_logit_set(paths: Sequence[str | Path], labels: str | Path | None, what: str) -> tuple[list[np.ndarray], Tensor | None]:
    """Per-backbone logits files (same N, C; the error names the file that differs) and their labels."""
    arrays = [load_logits_file(p) for p in paths]
    n, c = check_array_list(arrays, names=[str(p) for p in paths])
    y = load_labels_file(labels, n, c, what) if labels is not None else None
    return arrays, y


def load_embedding_set(paths: Sequence[str | Path] | None, num_backbones: int, n: int, what: str) -> list[Tensor] | None:
    """Per-backbone (N, D_b) embeddings .npy (for the Neural Logit Controller), or None when not given."""
    if not paths:
        return None
    if len(paths) != num_backbones:
        raise FeatureDirError(f"{len(paths)} {what} embedding files for {num_backbones} backbones")
    out = []
    for p in paths:
        arr = load_logits_file(p)  # same checks: a readable 2-D .npy
        if arr.shape[0] != n:
            raise FeatureDirError(f"{p}: {arr.shape[0]} embedding rows but the {what} logits have N={n} rows")
        out.append(torch.from_numpy(np.array(arr, dtype=np.float32)))
    return out


# ----------------------------------------------------------------------------------------- models
@dataclass
class LoadedBackbones:
    """Feature sets of the usable backbones, and why the others are unusable."""

    feature_sets: dict[str, FeatureSet] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


FeatureLoader = Callable[..., FeatureSet]


def _default_loader() -> FeatureLoader:
    from clipadapt.features.pipeline import get_feature_set  # heavy: open_clip, images

    return get_feature_set


def load_model_backbones(
    models: Sequence[str],
    dataset: str,
    splits: Sequence[str],
    *,
    loader: FeatureLoader | None = None,
    min_usable: int = 2,
    **loader_kwargs: Any,
) -> LoadedBackbones:
    """Extract (through the cache) every model on `dataset`; a model whose weights are unavailable offline is
    recorded and skipped. Fewer than `min_usable` usable models is an error naming every unusable one."""
    loader = loader or _default_loader()
    out = LoadedBackbones()
    for model in models:
        try:
            out.feature_sets[model] = loader(model, dataset, list(splits), **loader_kwargs)
        except WeightsUnavailableError as e:
            out.unavailable[model] = str(e)
            log.warning("backbone %s is unusable: %s", model, e)
    if len(out.feature_sets) < min_usable:
        detail = "; ".join(f"{m}: {why}" for m, why in out.unavailable.items())
        raise WeightsUnavailableError(
            f"only {len(out.feature_sets)} of {len(models)} backbones are usable "
            f"({', '.join(out.feature_sets) or 'none'}); need at least {min_usable}. Unavailable: {detail}"
        )
    return out


def plan_dataset_splits(dataset: str, split: str, *, heldout_split: str | None, train_split: str,
                        shots: int | None, seed: int) -> tuple[list[str], dict[str, list[int]] | None]:
    """Which splits of `dataset` to extract for a synergy run, and the few-shot rows of the training split.

    Always the evaluated split. With `shots`: only the K-shot rows of `train_split` (sampled here from the
    dataset's labels, before any extraction, so the other training images are never encoded). Otherwise the
    held-out split when the dataset has it (no error when it does not: only the static combiners then run).
    """
    from clipadapt.data import build_dataset, sample_few_shot
    from clipadapt.errors import DatasetError

    splits, indices = [split], None
    if shots:
        train = build_dataset(dataset, train_split)
        indices = {train_split: sample_few_shot(train.labels, shots, seed, classnames=train.classnames)}
        splits.append(train_split)
    elif heldout_split and heldout_split != split:
        try:
            heldout = build_dataset(dataset, heldout_split)
        except DatasetError as e:
            log.info("no held-out split %r in %s (%s): only the static combiners will run", heldout_split, dataset, e)
        else:  # before encoding anything: a held-out split that is (partly) the test split is an error
            from clipadapt.eval.protocol import check_disjoint

            check_disjoint(heldout, build_dataset(dataset, split), selection_name=heldout_split, test_name=split,
                           dataset=dataset, purpose="fitting the combiners",
                           fix="Fit them on train images instead: --val-from-train K (alias of --shots K).")
            splits.append(heldout_split)
    return splits, indices


def load_feature_dirs(directories: Sequence[str | Path], splits: Sequence[str] | None = None) -> dict[str, FeatureSet]:
    """Feature directories keyed by a unique name (meta.json model, else the directory name)."""
    out: dict[str, FeatureSet] = {}
    for d in directories:
        fs = load_feature_dir(d, splits=splits)
        name = str(fs.meta.get("model") or Path(d).name)
        if name in out:
            name = f"{name} ({d})"
        out[name] = fs
    return out


def few_shot_indices(labels: Tensor, shots: int, seed: int, classnames: Sequence[str] | None = None) -> Tensor:
    """Row indices of `shots` samples per class (clipadapt.data.fewshot's seeded, nested draw): the held-out set."""
    from clipadapt.data.fewshot import sample_few_shot

    return torch.as_tensor(sample_few_shot(labels, shots, seed, classnames=classnames), dtype=torch.long)
