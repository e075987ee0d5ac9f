"""Selection splits must not be test splits (docs/methods.md §3: "a grid search on the validation split, never on
test").

A split used to choose hyper-parameters or fit a combiner (the *selection* split) is compared with the test split
before any search: by image paths when both sides record them (`FeatureSplit.paths`, `ImageDataset.paths`), else by
identical embeddings (same shape and `torch.equal`). Any shared image is an error that names both splits, the
dataset, how many images are shared and the fix. CoOp's ImageNet is the case that motivates it: its 'val' split is
ImageNet's val/ folder, which is also its 'test' split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipadapt.errors import ProtocolError


@dataclass(frozen=True)
class Overlap:
    """`shared` of the `n_selection` selection rows are test images (`evidence`: 'paths' or 'embeddings')."""

    shared: int
    n_selection: int
    n_test: int
    evidence: str


def _paths(split: Any) -> list[str] | None:
    paths = getattr(split, "paths", None)
    return [os.path.normpath(str(p)) for p in paths] if paths is not None else None


def _image(split: Any) -> Tensor | np.ndarray | None:
    return split if isinstance(split, (Tensor, np.ndarray)) else getattr(split, "image", None)


def _identical(a: Tensor | np.ndarray, b: Tensor | np.ndarray) -> bool:
    if tuple(a.shape) != tuple(b.shape) or a.shape[0] == 0:
        return False
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.dtype == b.dtype and torch.equal(a, b.to(a.device))
    as_np = [x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x) for x in (a, b)]
    return bool(np.array_equal(*as_np))


def split_overlap(selection: Any, test: Any) -> Overlap | None:
    """How `selection` overlaps `test` (FeatureSplits, ImageDatasets, or tensors/arrays), or None when disjoint.

    With paths on both sides, partial overlap is counted row by row; without, only an identical split (same shape,
    equal values) is detected, since distinct images can share embeddings only when they are duplicates.
    """
    sel_paths, test_paths = _paths(selection), _paths(test)
    if sel_paths is not None and test_paths is not None:
        in_test = set(test_paths)
        shared = sum(p in in_test for p in sel_paths)
        return Overlap(shared, len(sel_paths), len(test_paths), "paths") if shared else None
    a, b = _image(selection), _image(test)
    if a is not None and b is not None and _identical(a, b):
        return Overlap(int(a.shape[0]), int(a.shape[0]), int(b.shape[0]), "embeddings")
    return None


def check_disjoint(
    selection: Any,
    test: Any,
    *,
    selection_name: str,
    test_name: str = "test",
    dataset: str | None = None,
    purpose: str = "the hyper-parameter search",
    fix: str = "",
) -> None:
    """Raise ProtocolError when `selection` (used for `purpose`) shares any image with `test`."""
    overlap = split_overlap(selection, test)
    if overlap is None:
        return
    where = f"{dataset}: " if dataset else ""
    if overlap.evidence == "paths":
        how = (f"{overlap.shared} of its {overlap.n_selection} images are also in the '{test_name}' split "
               f"({overlap.n_test} images; same image paths)")
    else:
        how = f"its {overlap.n_selection} rows are identical to the '{test_name}' split's embeddings"
    if overlap.shared == overlap.n_selection == overlap.n_test:
        how += f" — it IS the '{test_name}' split"
    raise ProtocolError(
        f"{where}the '{selection_name}' split used for {purpose} overlaps the test data: {how}. Choosing or fitting "
        f"on test images inflates test accuracy (docs/methods.md §3: never search on test).{' ' + fix if fix else ''}"
    )
