"""Build a feature directory from .npy arrays computed elsewhere (`clipadapt import-features`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipadapt.errors import FeatureDirError
from clipadapt.features.featureset import SPLIT_NAMES, FeatureSet, FeatureSplit
from clipadapt.features.io import load_feature_dir, load_npy, read_json, save_feature_dir


def read_classnames(path: Path) -> list[str]:
    """Class names from a JSON list or a text file with one name per line."""
    path = Path(path)
    if not path.is_file():
        raise FeatureDirError(f"{path}: class-name file not found")
    if path.suffix.lower() == ".json":
        names = read_json(path, what="class-name file")
        if isinstance(names, dict) and "classnames" in names:
            names = names["classnames"]
    else:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise FeatureDirError(f"{path}: expected a non-empty list of class names")
    return names


def load_array(spec: str) -> np.ndarray:
    """Load `file.npy`, or `file.npy[i]` for the i-th entry along the first axis."""
    index = None
    if spec.endswith("]") and "[" in spec:
        spec, idx = spec[:-1].split("[", 1)
        index = int(idx)
    array = load_npy(spec, what="array")
    return np.asarray(array[index] if index is not None else array)


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
        label = torch.from_numpy(load_array(label_spec).astype(np.int64)) if label_spec else None
        feature_splits[name] = FeatureSplit(image=torch.from_numpy(load_array(image_spec).astype(np.float32)), label=label)
    fs = FeatureSet(
        classnames=classnames,
        text=torch.from_numpy(load_array(text).astype(np.float32)),
        splits=feature_splits,
        meta={**(meta or {}), "imported_from": {"text": text, "splits": splits}},
    )
    save_feature_dir(fs, out)
    return load_feature_dir(out)  # re-read: validates shapes, labels, NaNs with file-named errors
