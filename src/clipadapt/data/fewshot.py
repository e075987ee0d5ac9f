"""Seeded K-shot sampling and the JSON index lists that make few-shot experiments reproducible and publishable.

Nested draws: for each class the sampler shuffles that class's item indices with a generator seeded by
`(seed, class)` and takes the first K. So for a fixed seed the 1-shot set is contained in the 2-shot set, which is
contained in the 4-shot set, and so on; and a class's draw does not depend on the other classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipadapt.errors import DatasetError
from clipadapt.fileio import atomic_write_json, read_json

INDEX_FORMAT = "clipadapt-fewshot-indices/1"
SAMPLER = "nested: per class, numpy default_rng([seed, label]).permutation of its indices, first K; sorted"


def _as_label_array(labels: Sequence[int]) -> np.ndarray:
    arr = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DatasetError(f"labels must be a 1-d sequence of integers, got dtype {arr.dtype} and shape {arr.shape}")
    negative = np.flatnonzero(arr < 0)
    if negative.size:
        i = int(negative[0])
        raise DatasetError(f"labels[{i}] = {int(arr[i])}: few-shot sampling needs labels >= 0")
    return arr.astype(np.int64, copy=False)


def _indices_by_class(arr: np.ndarray) -> dict[int, np.ndarray]:
    """{label: its item indices, ascending} (one stable sort, not one scan per class)."""
    order = np.argsort(arr, kind="stable")
    present, starts, counts = np.unique(arr[order], return_index=True, return_counts=True)
    return {int(c): order[s : s + n] for c, s, n in zip(present, starts, counts)}


def _listed_classes(short: list[tuple[int, str]], classnames: Sequence[str] | None) -> str:
    """'<class> has <detail>, ...' for at most 10 short classes, then how many more."""
    listed = ", ".join(f"{classnames[c]!r} has {detail}" if classnames is not None else f"label {c} has {detail}"
                       for c, detail in short[:10])
    return listed + (f" (and {len(short) - 10} more classes)" if len(short) > 10 else "")


def _check_seed(seed: int) -> None:
    """numpy's SeedSequence takes non-negative integers only (a negative seed was a numpy traceback)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"seed must be a non-negative integer, got {seed!r}")


def sample_few_shot(
    labels: Sequence[int],
    shots: int,
    seed: int,
    *,
    classnames: Sequence[str] | None = None,
    allow_fewer: bool = False,
) -> list[int]:
    """K distinct indices of each class of `labels`, sorted; reproducible from `seed`, nested across K (module doc).

    With `classnames`, every class 0..C-1 must have K items (a class with none is reported too); without, the
    classes are the labels present. A class with fewer than K items is a DatasetError unless `allow_fewer`, which
    then takes all of them.
    """
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise DatasetError(f"shots must be a positive integer, got {shots!r}")
    _check_seed(seed)
    arr = _as_label_array(labels)
    by_class = _indices_by_class(arr)
    if classnames is not None:
        out_of_range = [c for c in by_class if c >= len(classnames)]
        if out_of_range:
            raise DatasetError(f"labels {out_of_range[:10]} out of range for {len(classnames)} class names")
        classes = list(range(len(classnames)))
    else:
        classes = sorted(by_class)
    empty = np.zeros(0, dtype=np.int64)
    short = [(c, len(by_class.get(c, empty))) for c in classes if len(by_class.get(c, empty)) < shots]
    if short and not allow_fewer:
        listed = _listed_classes([(c, str(n)) for c, n in short], classnames)
        raise DatasetError(
            f"{shots}-shot sampling needs {shots} items per class: {listed}; pass allow_fewer=True "
            "(CLI: --allow-fewer) to take all items of such classes"
        )
    chosen: list[int] = []
    for c in classes:
        items = by_class.get(c, empty)
        rng = np.random.default_rng([int(seed), int(c)])
        chosen.extend(items[rng.permutation(len(items))[:shots]].tolist())
    return sorted(chosen)


VALIDATION_STREAM = 1  # seeds default_rng([seed, label, 1]): a stream apart from the shots' [seed, label]


def sample_disjoint(
    labels: Sequence[int],
    per_class: int,
    seed: int,
    *,
    exclude: Sequence[int] = (),
    classnames: Sequence[str] | None = None,
    allow_fewer: bool = False,
    what: str = "validation",
) -> list[int]:
    """`per_class` indices of each class of `labels` that are not in `exclude`, sorted; reproducible from `seed`.

    A validation split drawn from train, disjoint from the shots (`exclude`): per class, the items not excluded
    (ascending) are permuted by numpy default_rng([seed, label, 1]) and the first `per_class` taken. A class with
    fewer items left is a DatasetError unless `allow_fewer`, which takes what is left.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise DatasetError(f"{what} images per class must be a positive integer, got {per_class!r}")
    _check_seed(seed)
    arr = _as_label_array(labels)
    excluded_idx = np.asarray(list(exclude), dtype=np.int64)
    bad = excluded_idx[(excluded_idx < 0) | (excluded_idx >= arr.size)]
    if bad.size:
        raise DatasetError(f"{what}: exclude holds index {int(bad[0])}, outside the {arr.size} items (0..{arr.size - 1})")
    excluded = np.zeros(arr.size, dtype=bool)
    excluded[excluded_idx] = True
    by_class = _indices_by_class(arr)
    classes = range(len(classnames)) if classnames is not None else sorted(by_class)
    empty = np.zeros(0, dtype=np.int64)
    chosen: list[int] = []
    short = []
    for c in classes:
        all_items = by_class.get(c, empty)
        items = all_items[~excluded[all_items]]
        if len(items) < per_class:
            short.append((c, f"{len(items)} left of {len(all_items)}"))
        rng = np.random.default_rng([int(seed), int(c), VALIDATION_STREAM])
        chosen.extend(items[rng.permutation(len(items))[:per_class]].tolist())
    if short and not allow_fewer:
        raise DatasetError(
            f"{what}: {per_class} images per class are needed beyond the {len(set(exclude))} excluded (shot) images: "
            f"{_listed_classes(short, classnames)}; ask for fewer per class, or pass allow_fewer=True "
            "(CLI: --allow-fewer) to take what is left"
        )
    if not chosen:
        raise DatasetError(f"{what}: no images left to draw once the {len(set(exclude))} excluded ones are removed")
    return sorted(chosen)


def save_indices(path: str | Path, indices: Sequence[int], *, meta: dict[str, Any]) -> Path:
    """Write `{"format", **meta, "indices"}` as JSON (atomically); meta should hold fingerprint, split, shots, seed."""
    if "indices" in meta or "format" in meta:
        raise DatasetError("save_indices: meta must not contain the reserved keys 'indices' or 'format'")
    path = Path(path)
    atomic_write_json(path, {"format": INDEX_FORMAT, **meta, "indices": [int(i) for i in indices]})
    return path


def load_indices(path: str | Path, *, fingerprint: str | None = None) -> tuple[list[int], dict[str, Any]]:
    """(indices, meta) from a file written by `save_indices`; with `fingerprint`, check it matches the file's."""
    path = Path(path)
    data = read_json(path, what="few-shot index file", error=DatasetError)
    if not isinstance(data, dict) or not isinstance(data.get("indices"), list):
        raise DatasetError(f"{path}: expected a JSON object with an 'indices' list (written by save_indices)")
    indices = data.pop("indices")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices):
        raise DatasetError(f"{path}: 'indices' must be integers >= 0")
    if fingerprint is not None and data.get("fingerprint") != fingerprint:
        raise DatasetError(
            f"{path}: written for dataset fingerprint {data.get('fingerprint')!r} "
            f"(dataset {data.get('dataset')!r}, split {data.get('split')!r}), not {fingerprint!r}: "
            "the indices would select different images"
        )
    data.pop("format", None)
    return indices, data
