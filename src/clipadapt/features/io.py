"""The feature-directory format (docs/feature-format.md), read and written with validation.

    DIR/meta.json              {"classnames": [...], "model"?, "dataset"?, "templates"?, ...}
    DIR/text.safetensors       tensor 'text'  (C, D) or (C, T, D)
    DIR/<split>.safetensors    tensor 'image' (N, D) or (N, V, D), tensor 'label' (N,) int64
                               (label optional for 'unlabeled'); split in train, val, test, unlabeled
    DIR/<split>.paths.json     optional: the source image path of each row

Every write is atomic and durable (`clipadapt.fileio.atomic_path`): a reader never sees a half-written file.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from clipadapt.builtin import resolve_dir
from clipadapt.errors import ClipadaptError, FeatureDirError
from clipadapt.features.checksums import check_checksums, write_checksums
from clipadapt.features.featureset import SPLIT_NAMES, FeatureSet, FeatureSplit
from clipadapt.fileio import atomic_path, atomic_write_json, read_json

META_FILE = "meta.json"
TEXT_FILE = "text.safetensors"


def index_path(directory: str | Path, split: str) -> Path:
    """Where the shard index of `split` lives in a feature directory: DIR/<split>.shards.json (features.shards)."""
    return Path(directory) / f"{split}.shards.json"


# ----------------------------------------------------------------------------------------- tensors
def atomic_save_tensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors save through a temp file + fsync + rename."""
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as e:  # its I/O errors ("... No space left on device (os error 28)") as OSError
            code = re.search(r"\(os error (\d+)\)", str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e


def load_npy(path: str | Path, *, what: str, mmap: bool = True,
             error: type[ClipadaptError] = FeatureDirError) -> np.ndarray:
    """A .npy array (memory-mapped read-only with `mmap`, so big arrays are read lazily); `error` naming the file
    when it is missing ("<path>: <what> file not found") or not a readable .npy file. Pickles are refused."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} file not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise error(f"{path}: not a readable .npy file ({e})") from e


def read_meta(directory: Path) -> dict[str, Any]:
    """meta.json of a feature directory, checked to list its class names."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FeatureDirError(f"{path}: not found — a feature directory needs meta.json with 'classnames'")
    meta = read_json(path, what="meta.json")
    names = meta.get("classnames") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise FeatureDirError(f"{path}: field 'classnames' must be a non-empty list of strings")
    return meta


def load_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file; FeatureDirError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FeatureDirError(f"{path}: not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FeatureDirError(f"{path}: not a readable safetensors file ({e})") from e


def _require(tensors: dict[str, Tensor], key: str, path: Path) -> Tensor:
    if key not in tensors:
        raise FeatureDirError(f"{path.name}: tensor '{key}' is missing (found: {sorted(tensors)})")
    return tensors[key]


FINITE_CHECK_CHUNK = 1 << 22  # values per step: torch.isfinite builds temporaries 1.75x the size of its input


def check_finite(t: Tensor, name: str, path: Path) -> None:
    """FeatureDirError naming the file and tensor when `t` holds NaN/Inf (embeddings must be finite).

    Checked in chunks of FINITE_CHECK_CHUNK values, so a loaded split costs ~16 MB of temporaries here, not
    1.75x its own size. A chunk whose sum is finite holds no NaN/Inf (either would make the sum NaN or ±Inf): one
    float pass, ~30× faster here than `isfinite` and a boolean count, which run only on a chunk whose sum is not
    finite (a NaN/Inf, or finite values whose sum overflows: then the count is 0)."""
    flat = t.reshape(-1)
    bad = sum(int((~torch.isfinite(chunk)).sum()) for chunk in flat.split(FINITE_CHECK_CHUNK)
              if not math.isfinite(float(chunk.sum())))
    if bad:
        raise FeatureDirError(f"{path.name}: tensor '{name}' contains {bad} NaN/Inf values")


def load_text(directory: Path, num_classes: int) -> Tensor:
    path = Path(directory) / TEXT_FILE
    text = _require(load_tensors(path), "text", path)
    if text.ndim not in (2, 3):
        raise FeatureDirError(f"{path.name}: tensor 'text' must be (C, D) or (C, T, D), got {tuple(text.shape)}")
    if text.shape[0] != num_classes:
        raise FeatureDirError(
            f"{path.name}: tensor 'text' has {text.shape[0]} classes but meta.json lists {num_classes} classnames"
        )
    check_finite(text, "text", path)
    return text.float()


def load_split(directory: Path, name: str, *, num_classes: int, dim: int, meta: dict | None = None) -> FeatureSplit:
    """Read and validate split `name` against the class count and embedding dimension: from its shard index
    `<name>.shards.json` when there is one (a sharded split, loaded into memory), else `<name>.safetensors`."""
    directory = Path(directory)
    path = directory / f"{name}.safetensors"
    index = index_path(directory, name)
    if index.is_file():
        from clipadapt.features.shards import ShardedSplit  # shards imports this module

        loaded = ShardedSplit.open(index).load()
        image, label, paths = loaded.image, loaded.label, loaded.paths
        path = index
    elif path.is_file():
        tensors = load_tensors(path)
        image, label = _require(tensors, "image", path), tensors.get("label")
        paths = read_paths(directory / f"{name}.paths.json")
    else:
        raise FeatureDirError(f"{directory}: split '{name}' not found (no {path.name} and no {index.name})")
    return check_split(image, label, paths, name=name, path=path, num_classes=num_classes, dim=dim, meta=meta)


def read_paths(paths_file: Path) -> list[str] | None:
    """The optional `<split>.paths.json` list (None when absent)."""
    paths = read_json(paths_file, what="paths list") if paths_file.is_file() else None
    if paths is not None and (not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)):
        raise FeatureDirError(f"{paths_file.name}: expected a JSON list of path strings, one per row")
    return paths


def check_split(image: Tensor, label: Tensor | None, paths: list[str] | None, *, name: str, path: Path,
                num_classes: int, dim: int, meta: dict | None = None) -> FeatureSplit:
    """Validate one split's tensors (shapes, D against the text's, finite, integer labels in [0, C), one path
    per row) and return it as a FeatureSplit; errors name `path` (the split's file or shard index)."""
    if image.ndim not in (2, 3):
        raise FeatureDirError(f"{path.name}: tensor 'image' must be (N, D) or (N, V, D), got {tuple(image.shape)}")
    if image.shape[-1] != dim:
        model = f" (meta.json model: {meta.get('model')})" if meta and meta.get("model") else ""
        raise FeatureDirError(
            f"{path.name}: tensor 'image' has shape {tuple(image.shape)} but {TEXT_FILE} 'text' has D={dim} — "
            f"were they computed with the same model?{model}"
        )
    check_finite(image, "image", path)
    if label is None and name != "unlabeled":
        raise FeatureDirError(f"{path.name}: tensor 'label' is missing (required for split '{name}')")
    if label is not None:
        if label.ndim != 1 or label.shape[0] != image.shape[0]:
            raise FeatureDirError(
                f"{path.name}: tensor 'label' must be (N,) with N={image.shape[0]} like 'image', got "
                f"{tuple(label.shape)}"
            )
        if label.dtype.is_floating_point:
            raise FeatureDirError(f"{path.name}: tensor 'label' must be integer (int64), got {label.dtype}")
        label = label.long()
        if label.numel() and (label.min() < 0 or label.max() >= num_classes):
            raise FeatureDirError(
                f"{path.name}: tensor 'label' has values in [{int(label.min())}, {int(label.max())}] but there are "
                f"{num_classes} classes (valid: 0..{num_classes - 1})"
            )
    if paths is not None and len(paths) != image.shape[0]:
        raise FeatureDirError(f"{name}.paths.json: lists {len(paths)} paths for {image.shape[0]} rows")
    return FeatureSplit(image=image.float(), label=label, paths=paths)


def available_splits(directory: Path) -> list[str]:
    """The splits present in a feature directory, as one file or as a shard index."""
    directory = Path(directory)
    return [s for s in SPLIT_NAMES
            if (directory / f"{s}.safetensors").is_file() or index_path(directory, s).is_file()]


def load_feature_dir(directory: str | Path, splits: Iterable[str] | None = None) -> FeatureSet:
    """Load a feature directory (or a built-in set, 'builtin:coco500'); `splits=None` loads every split present."""
    directory = resolve_dir(directory)
    if not directory.is_dir():
        raise FeatureDirError(f"{directory}: feature directory not found")
    check_checksums(directory)  # sizes always; sha256 too under --verify (features.checksums)
    meta = read_meta(directory)
    classnames = meta["classnames"]
    text = load_text(directory, len(classnames))
    names = available_splits(directory) if splits is None else list(splits)
    loaded = {
        name: load_split(directory, name, num_classes=len(classnames), dim=text.shape[-1], meta=meta)
        for name in names
    }
    return FeatureSet(classnames=classnames, text=text, splits=loaded, meta=meta, source=directory)


# ----------------------------------------------------------------------------------------- writing
def save_split(directory: Path, name: str, split: FeatureSplit) -> None:
    """Write `<name>.safetensors` (+ paths). What an earlier write of the split left is removed: a paths list
    when this split has none (a stale one would label rows with another split's files), and a sharded form
    (`<name>.shards.json`, which readers take first, and its `<name>.shards/` folder)."""
    directory = Path(directory)
    tensors = {"image": split.image.float()}
    if split.label is not None:
        tensors["label"] = split.label.long()
    paths_file = directory / f"{name}.paths.json"
    if split.paths is not None:
        atomic_write_json(paths_file, list(split.paths))
    else:
        paths_file.unlink(missing_ok=True)
    atomic_save_tensors(directory / f"{name}.safetensors", tensors)
    index_path(directory, name).unlink(missing_ok=True)
    shutil.rmtree(directory / f"{name}.shards", ignore_errors=True)


def save_feature_dir(features: FeatureSet, directory: str | Path, *, checksums: bool = True) -> Path:
    """Write `features` in the feature-directory format (atomically, file by file), then its checksums.json
    (features.checksums; `checksums=False` for a caller that adds files and writes it itself)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(directory / TEXT_FILE, {"text": features.text.float()})
    for name, split in features.splits.items():
        save_split(directory, name, split)
    # its presence marks a complete directory
    atomic_write_json(directory / META_FILE, {**features.meta, "classnames": list(features.classnames)})
    if checksums:
        write_checksums(directory)
    return directory
