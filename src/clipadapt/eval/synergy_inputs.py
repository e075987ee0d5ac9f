"""The inputs of a backbone-synergy run: feature directories, saved logits, or models through the cache, and the
held-out rows the combiners are fitted on.

Each loader checks that the backbones describe the same samples in the same order over the same classes and
raises an error naming the directory / file that differs. The held-out rows (a split, or K shots per class drawn
from the training split) are checked to share no image with the evaluated split (clipadapt.eval.protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from clipadapt.data.fewshot import sample_few_shot
from clipadapt.errors import ConfigError, FeatureDirError, WeightsUnavailableError
from clipadapt.eval.protocol import check_disjoint
from clipadapt.eval.synergy_combiners import ScoreSet
from clipadapt.features.featureset import FeatureSet
from clipadapt.features.io import load_feature_dir, load_npy
from clipadapt.methods.ensembles import check_logits_list
from clipadapt.methods.zeroshot import ZeroShotClassifier

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
    n, c = check_logits_list(arrays, names=[str(p) for p in paths])
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
    from clipadapt.data import build_dataset
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


def check_aligned_feature_sets(feature_sets: dict[str, FeatureSet], split: str) -> None:
    """Same classes, same samples in the same order in every backbone's split; errors name the backbone."""
    items = list(feature_sets.items())
    ref_name, ref = items[0]
    ref_split = ref.split(split)
    for name, fs in items[1:]:
        if fs.classnames != ref.classnames:
            diff = next((f"; first difference at class {i}: {a!r} vs {b!r}"
                         for i, (a, b) in enumerate(zip(ref.classnames, fs.classnames)) if a != b), "")
            raise FeatureDirError(
                f"{name}: class names differ from {ref_name} ({len(fs.classnames)} vs {len(ref.classnames)} classes"
                f"{diff}) — combine backbones evaluated on the same dataset"
            )
        s = fs.split(split)
        if s.n != ref_split.n:
            raise FeatureDirError(f"{name}: split '{split}' has N={s.n} samples but {ref_name} has N={ref_split.n}")
        if s.paths is not None and ref_split.paths is not None and s.paths != ref_split.paths:
            i = next(i for i, (a, b) in enumerate(zip(s.paths, ref_split.paths)) if a != b)
            raise FeatureDirError(
                f"{name}: {split}.paths.json differs from {ref_name} at row {i} ({s.paths[i]!r} vs "
                f"{ref_split.paths[i]!r}) — the samples are not in the same order"
            )
        if (s.label is None) != (ref_split.label is None) or (
            s.label is not None and not torch.equal(s.label, ref_split.label)
        ):
            raise FeatureDirError(
                f"{name}: labels of split '{split}' differ from {ref_name} — not the same samples in the same order"
            )


# ----------------------------------------------------------------------------------------- scores from features
def zero_shot_scores(feature_sets: dict[str, FeatureSet], split: str) -> ScoreSet:
    """Zero-shot logits (and pooled raw embeddings) of every backbone on `split`."""
    logits, embeddings = [], []
    for fs in feature_sets.values():
        s = fs.split(split)
        logits.append(ZeroShotClassifier(**fs.logit_params().kwargs()).fit(fs.text).predict_logits(s.image))
        embeddings.append(s.pooled())
    labels = next(iter(feature_sets.values())).split(split).labels(split)
    return ScoreSet(logits=logits, labels=labels, embeddings=embeddings)


# ----------------------------------------------------------------------------------------- held-out selection
HELDOUT_FIX = ("Fit the combiners on train images instead: --val-from-train K (alias of --shots K: K images per class "
               "from --train-split), or name a disjoint --heldout-split.")
TRAIN_FIX = "The training split contains test images: give a dataset whose train and test differ, or --no-normalisation-study."


class HeldOut(NamedTuple):
    """The labelled rows the combiners are fitted on (None: only the static combiners run), how they were chosen,
    and, for a few-shot draw, the training-split rows drawn."""

    scores: ScoreSet | None
    description: str
    indices: list[int] | None = None


def check_splits_disjoint(feature_sets: dict[str, FeatureSet], selection: str, test: str, purpose: str, fix: str) -> None:
    """ProtocolError when split `selection` shares images with the evaluated split `test` (any backbone)."""
    for name, fs in feature_sets.items():
        check_disjoint(fs.split(selection), fs.split(test), selection_name=selection, test_name=test,
                       dataset=f"{fs.meta.get('dataset') or fs.source or name}", purpose=purpose, fix=fix)


def select_heldout(feature_sets: dict[str, FeatureSet], *, split: str, heldout_split: str | None, train_split: str,
                   shots: int | None, seed: int, drawn: list[int] | None = None) -> HeldOut:
    """With `shots`: K images per class of `train_split` (seeded by `seed`; `drawn`: the rows already drawn when
    the feature sets hold only those, `plan_dataset_splits`). Otherwise `heldout_split` when every backbone has it
    and it is not the evaluated split. Either way checked to share no image with `split` first."""
    if shots:
        check_aligned_feature_sets(feature_sets, train_split)
        check_splits_disjoint(feature_sets, train_split, split, "fitting the combiners (few-shot held-out)", TRAIN_FIX)
        desc = f"{shots} shots per class from '{train_split}' (seed {seed})"
        if drawn is not None:
            return HeldOut(zero_shot_scores(feature_sets, train_split), desc, drawn)
        first = next(iter(feature_sets.values()))
        idx = sample_few_shot(first.split(train_split).labels(train_split), shots, seed, classnames=first.classnames)
        subset = {k: FeatureSet(classnames=fs.classnames, text=fs.text, meta=fs.meta, source=fs.source,
                                splits={"heldout": fs.split(train_split).subset(torch.as_tensor(idx, dtype=torch.long))})
                  for k, fs in feature_sets.items()}
        return HeldOut(zero_shot_scores(subset, "heldout"), desc, list(idx))
    if heldout_split != split and all(fs.has_split(heldout_split) for fs in feature_sets.values()):
        check_aligned_feature_sets(feature_sets, heldout_split)
        check_splits_disjoint(feature_sets, heldout_split, split, "fitting the combiners", HELDOUT_FIX)
        return HeldOut(zero_shot_scores(feature_sets, heldout_split), f"split '{heldout_split}'")
    return HeldOut(None, "none (only the static combiners run)")


def load_logit_scores(logits: Sequence[str], labels: str | Path | None, *, names: Sequence[str] | None = None,
                      embeddings: Sequence[str] | None = None, heldout_logits: Sequence[str] | None = None,
                      heldout_labels: str | Path | None = None, heldout_embeddings: Sequence[str] | None = None
                      ) -> tuple[list[str], ScoreSet, ScoreSet | None]:
    """(names, evaluated, held-out or None) from saved .npy files; the held-out rows are checked to share no
    row with the evaluated ones."""
    if not labels:
        raise ConfigError("--logits needs --labels (the (N,) labels of the evaluated samples)")
    arrays, y = load_logit_set(logits, labels, "evaluated")
    heldout = None
    if heldout_logits:
        if len(heldout_logits) != len(logits):
            raise ConfigError(f"--heldout-logits lists {len(heldout_logits)} files for {len(logits)} backbones")
        if not heldout_labels:
            raise ConfigError("--heldout-logits needs --heldout-labels")
        h_arrays, h_y = load_logit_set(heldout_logits, heldout_labels, "held-out")
        for path, held, evaluated in zip(heldout_logits, h_arrays, arrays):
            check_disjoint(held[:], evaluated[:], selection_name=f"held-out ({path})", test_name="evaluated",
                           purpose="fitting the combiners", fix="Give held-out logits of other images than the evaluated ones.")
        heldout = ScoreSet(h_arrays, h_y, load_embedding_set(heldout_embeddings, len(h_arrays), len(h_y), "held-out"))
    names = list(names or [Path(p).stem for p in logits])
    if len(names) != len(arrays):
        raise ConfigError(f"--names lists {len(names)} names for {len(arrays)} logits files")
    return names, ScoreSet(arrays, y, load_embedding_set(embeddings, len(arrays), len(y), "evaluated")), heldout
