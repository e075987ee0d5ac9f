"""In-memory feature sets: raw (unnormalised) embeddings, labels, class text embeddings and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import math

import torch
from torch import Tensor

from clipadapt.errors import FeatureDirError
from clipadapt.ops import CLIP_LOGIT_SCALE, pool_views, prompt_ensemble

SPLIT_NAMES = ("train", "val", "test", "unlabeled")
LOGIT_DEFAULT_SOURCE = "default: meta.json records no logit_scale (CLIP's 100, no bias)"


@dataclass(frozen=True)
class LogitParams:
    """The scale s and bias b of a model's logits `s · cos + b` (docs/feature-format.md): the model's learned
    values when the feature directory's meta.json records them, else CLIP's 100 and no bias."""

    scale: float = CLIP_LOGIT_SCALE
    bias: float = 0.0
    source: str = LOGIT_DEFAULT_SOURCE

    def kwargs(self) -> dict[str, float]:
        """`logit_scale` / `logit_bias` keyword arguments for the methods' estimators."""
        return {"logit_scale": self.scale, "logit_bias": self.bias}

    def describe(self) -> dict[str, Any]:
        """What results files record: the values used and where they came from."""
        return {"logit_scale": self.scale, "logit_bias": self.bias, "logit_source": self.source}


def logit_params(meta: dict[str, Any] | None, where: str = "meta.json") -> LogitParams:
    """LogitParams from a meta dict's `logit_scale` (a positive number) and `logit_bias` (a number or null);
    without `logit_scale` the default (100, no bias). Malformed values are a FeatureDirError naming the field."""
    meta = meta or {}
    scale, bias = meta.get("logit_scale"), meta.get("logit_bias")
    if scale is None:
        if bias not in (None, 0, 0.0):
            raise FeatureDirError(f"{where}: 'logit_bias' is {bias!r} but 'logit_scale' is missing; record both")
        return LogitParams()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise FeatureDirError(f"{where}: field 'logit_scale' must be a positive finite number, got {scale!r}")
    if bias is not None and (isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias)):
        raise FeatureDirError(f"{where}: field 'logit_bias' must be a finite number or null, got {bias!r}")
    model = f" of {meta['model']}" if meta.get("model") else ""
    return LogitParams(float(scale), float(bias or 0.0), f"{where}: the learned values{model}")


@dataclass
class FeatureSplit:
    """Image embeddings of one split.

    `image` is raw: (N, D), or (N, V, D) for V augmented views of each image. `label` is (N,) int64 or None
    (allowed only for unlabeled data). `paths` optionally records the source image of each row.
    """

    image: Tensor
    label: Tensor | None = None
    paths: list[str] | None = None

    @property
    def n(self) -> int:
        return int(self.image.shape[0])

    @property
    def dim(self) -> int:
        return int(self.image.shape[-1])

    @property
    def views(self) -> int:
        return int(self.image.shape[1]) if self.image.ndim == 3 else 1

    def pooled(self) -> Tensor:
        """(N, D) raw embeddings, views averaged (test-time augmentation / Tip-Adapter keys)."""
        return pool_views(self.image)

    def labels(self, split_name: str = "split") -> Tensor:
        """The labels, or a clear error when this split has none."""
        if self.label is None:
            raise FeatureDirError(f"split '{split_name}' has no labels (tensor 'label' is missing)")
        return self.label

    def require_rows(self, split_name: str, purpose: str) -> FeatureSplit:
        """This split, or a FeatureDirError when it has 0 rows and `purpose` needs some (a score over no rows is
        undefined, a search over no rows picks its first grid point)."""
        if self.n == 0:
            raise FeatureDirError(f"split '{split_name}' has 0 rows, but {purpose} needs at least one")
        return self

    def subset(self, index: Tensor | list[int]) -> FeatureSplit:
        """Rows `index` of this split (paths follow)."""
        index = torch.as_tensor(index, dtype=torch.long)
        paths = [self.paths[i] for i in index.tolist()] if self.paths is not None else None
        label = self.label[index] if self.label is not None else None
        return FeatureSplit(image=self.image[index], label=label, paths=paths)


@dataclass
class FeatureSet:
    """Everything a method needs for one (model, dataset): class names, class text embeddings, splits.

    `text` is raw: (C, D), or (C, T, D) for T prompt templates. `meta` carries provenance
    (model, dataset, templates, cache key, ...), copied into results files.
    """

    classnames: list[str]
    text: Tensor
    splits: dict[str, FeatureSplit] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def dim(self) -> int:
        return int(self.text.shape[-1])

    def classifier(self) -> Tensor:
        """W (C, D): prompt-ensembled, L2-normalised class text embeddings (docs/methods.md §1)."""
        return prompt_ensemble(self.text)

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def logit_params(self) -> LogitParams:
        """The model's logit scale and bias recorded in `meta` (or the default 100, no bias)."""
        where = f"{self.source}/meta.json" if self.source else "meta"
        return logit_params(self.meta, where)

    def split(self, name: str) -> FeatureSplit:
        """The split `name`, or an error that lists the splits present."""
        if name not in self.splits:
            where = f" in {self.source}" if self.source else ""
            raise FeatureDirError(
                f"split '{name}' not found{where}; available: {sorted(self.splits) or 'none'}"
            )
        return self.splits[name]

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for results files."""
        return {
            "source": str(self.source) if self.source else None,
            "model": self.meta.get("model"),
            "dataset": self.meta.get("dataset"),
            "num_classes": self.num_classes,
            "dim": self.dim,
            "splits": {name: {"n": s.n, "views": s.views} for name, s in self.splits.items()},
            **self.logit_params().describe(),
        }
