"""`build_dataset(spec, split)`: one entry point for every dataset source; `list_datasets`, `get_classnames`."""

from __future__ import annotations

import importlib

from clipadapt.data._spec import parse_spec
from clipadapt.data._torchvision import torchvision_registry
from clipadapt.data.catalog import DatasetInfo, coop_registry, shipped_classnames
from clipadapt.data.dataset import CaptionedImages, ImageDataset
from clipadapt.errors import DatasetError

# spec kind -> (module of this package, builder): imported on use (the torch-free CLI parser imports this package)
_BUILDERS = {
    "coop": ("_coop", "build_coop"),
    "imagefolder": ("_folder", "build_imagefolder"),
    "csv": ("_folder", "build_csv"),
    "torchvision": ("_torchvision", "build_torchvision"),
    "wds": ("_wds", "build_wds"),
    "hf": ("_hf", "build_hf"),
}
_CAPTION_BUILDERS = {"wds": ("_wds", "build_wds_captions"), "hf": ("_hf", "build_hf_captions")}


def _builder(table: dict[str, tuple[str, str]], kind: str):
    module, name = table[kind]
    return getattr(importlib.import_module(f"clipadapt.data.{module}"), name)


def build_dataset(spec: str, split: str, *, download: bool = False) -> ImageDataset:
    """The `split` of the dataset named by `spec` (docs/datasets.md):

    `coop:NAME:ROOT[?image_dir=..&split_file=..&templates=..]`, `imagefolder:ROOT`, `csv:FILE` or `csv:DIR`,
    `torchvision:NAME:ROOT` (downloads only with `download=True`), `wds:PATTERN` (WebDataset tar shards,
    `[wds]` extra), `hf:NAME_OR_PATH[:SPLIT]` (Hugging Face `datasets`, `[hf-datasets]` extra).
    """
    if not isinstance(split, str) or not split:
        raise DatasetError(f"dataset spec {spec!r}: split must be a non-empty string such as 'train' or 'test'")
    parsed = parse_spec(spec)
    build = _builder(_BUILDERS, parsed.kind)
    ds = build(parsed, split, download) if parsed.kind == "torchvision" else build(parsed, split)
    ds.spec = spec
    return ds


def build_caption_dataset(spec: str, split: str) -> CaptionedImages:
    """The `split` of an image–caption set for retrieval: `wds:PATTERN[?caption=txt]` (each caption member's lines
    are its image's captions) or `hf:NAME_OR_PATH[:SPLIT][?caption=COLUMN]` (a string or list-of-strings column)."""
    parsed = parse_spec(spec)
    if parsed.kind not in _CAPTION_BUILDERS:
        raise DatasetError(f"dataset spec {spec!r}: captions come from wds: or hf: specs; for image files use a "
                           "Karpathy-style caption JSON (--captions-json with --image-root)")
    ds = _builder(_CAPTION_BUILDERS, parsed.kind)(parsed, split)
    ds.spec = spec
    return ds


def list_datasets(kind: str | None = None) -> list[DatasetInfo]:
    """Registry rows (CoOp datasets, ImageNet variants, torchvision datasets), optionally of one spec kind."""
    rows = list(coop_registry().values()) + [e.info() for e in torchvision_registry().values()]
    if kind is not None:
        rows = [r for r in rows if r.kind == kind]
    return rows


def get_classnames(name: str, split: str | None = None) -> list[str]:
    """Class names of a registry dataset shipped with the package (ImageNet and its variants), or of a full spec.

    `get_classnames("imagenet")`; `get_classnames("coop:oxford_pets:/data/pets")` reads them from the split file
    (from `split`, or the first of test/train/val that exists: every split of a dataset shares its class names).
    """
    if ":" in name:
        if split is not None:
            return build_dataset(name, split).classnames
        first_error: DatasetError | None = None
        for candidate in ("test", "train", "val"):
            try:
                return build_dataset(name, candidate).classnames
            except DatasetError as e:
                first_error = first_error or e
        assert first_error is not None
        raise first_error
    names = shipped_classnames(name)
    if names is not None:
        return names
    if name in coop_registry():
        raise DatasetError(
            f"class names of {name!r} come from its split file; use get_classnames('coop:{name}:ROOT') "
            "or build_dataset(...).classnames"
        )
    raise DatasetError(
        f"no shipped class names for {name!r}; shipped: imagenet, imagenet_v2, imagenet_sketch, imagenet_a, imagenet_r"
    )
