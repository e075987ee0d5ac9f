"""Build a feature directory from .npy arrays computed elsewhere (`clipadapt import-features`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.errors import FeatureDirError
from clipadapt.features.featureset import SPLIT_NAMES, FeatureSet, FeatureSplit
from clipadapt.features.io import load_feature_dir, load_npy, save_feature_dir
from clipadapt.fileio import read_json, read_text


def read_classnames(path: Path) -> list[str]:
    """Class names from a JSON list or a text file with one name per line."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        names = read_json(path, what="class-name file")
        if isinstance(names, dict) and "classnames" in names:
            names = names["classnames"]
    else:
        names = [line.strip() for line in read_text(path, what="class-name file").splitlines() if line.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise FeatureDirError(f"{path}: expected a non-empty list of class names")
    return names


def load_array(spec: str) -> np.ndarray:
    """Load `file.npy`, or `file.npy[i]` for the i-th entry along the first axis."""
    index = None
    path = spec
    if spec.endswith("]") and "[" in spec:
        path, idx = spec[:-1].split("[", 1)
        try:
            index = int(idx)
        except ValueError as e:
            raise FeatureDirError(f"'{spec}': expected FILE.npy or FILE.npy[i] with an integer i") from e
    array = load_npy(path, what="array")
    if index is None:
        return np.asarray(array)
    if array.ndim == 0 or not -array.shape[0] <= index < array.shape[0]:
        raise FeatureDirError(f"'{spec}': index {index} is outside the first axis of {path} (shape {array.shape})")
    return np.asarray(array[index])


def _labels(spec: str) -> torch.Tensor:
    """Integer labels from `spec`; float arrays are accepted only when every value is a whole number (the
    feature-directory format rejects float labels, so truncating 1.7 to 1 here would be silent corruption)."""
    array = load_array(spec)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise FeatureDirError(f"'{spec}': labels must be integers, got non-integer values ({array.dtype})")
    elif array.dtype.kind not in "iub":
        raise FeatureDirError(f"'{spec}': labels must be integers, got dtype {array.dtype}")
    return torch.from_numpy(array.astype(np.int64))


def parse_split_spec(spec: str) -> tuple[str, str, str | None]:
    """'test=img.npy[:labels.npy]' -> ('test', 'img.npy', 'labels.npy' | None)."""
    if "=" not in spec:
        raise FeatureDirError(f"--split '{spec}': expected NAME=IMAGES.npy[:LABELS.npy]")
    name, files = spec.split("=", 1)
    if name not in SPLIT_NAMES:
        raise FeatureDirError(f"--split '{spec}': split name must be one of {', '.join(SPLIT_NAMES)}")
    image, _, label = files.partition(":")
    return name, image, label or None


def import_features(
    out: Path,
    *,
    classnames: list[str],
    text: str,
    splits: list[str],
    meta: dict[str, Any] | None = None,
) -> FeatureSet:
    """Write a validated feature directory at `out` from .npy specs; returns it as loaded back."""
    feature_splits = {}
    for spec in splits:
        name, image_spec, label_spec = parse_split_spec(spec)
        label = _labels(label_spec) if label_spec else None
        feature_splits[name] = FeatureSplit(image=torch.from_numpy(load_array(image_spec).astype(np.float32)), label=label)
    fs = FeatureSet(
        classnames=classnames,
        text=torch.from_numpy(load_array(text).astype(np.float32)),
        splits=feature_splits,
        meta={**(meta or {}), "imported_from": {"text": text, "splits": splits}},
    )
    save_feature_dir(fs, out)
    return load_feature_dir(out)  # re-read: validates shapes, labels, NaNs with file-named errors
