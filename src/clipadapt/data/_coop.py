"""`coop:NAME:ROOT` — the CoOp/Dassl few-shot protocol layouts (split JSON, FGVC variant lists, ImageNet folders)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clipadapt.data._files import path_under, scan_images, subdirectories
from clipadapt.data._spec import Spec
from clipadapt.data.catalog import (
    FGVC_VARIANTS,
    IMAGENET_FOLDERS,
    IMAGENET_VARIANT,
    SPLIT_JSON,
    DatasetInfo,
    coop_registry,
    get_templates,
    imagenet_meta,
    shipped_classnames,
)
from clipadapt.data.dataset import ImageDataset
from clipadapt.errors import DatasetError
from clipadapt.fileio import read_json, read_text

log = logging.getLogger(__name__)
OPTIONS = ("image_dir", "split_file", "templates")


def build_coop(spec: Spec, split: str) -> ImageDataset:
    info = coop_registry().get(spec.name)
    if info is None:
        raise DatasetError(
            f"dataset spec {spec.text!r}: unknown CoOp dataset {spec.name!r}; "
            f"expected one of {', '.join(sorted(coop_registry()))}"
        )
    spec.check_options(OPTIONS)
    if not spec.root:
        raise DatasetError(f"dataset spec {spec.text!r}: expected coop:{info.name}:ROOT (the dataset folder)")
    if split not in info.splits:
        raise DatasetError(f"coop:{info.name}: no split {split!r}; this dataset has {list(info.splits)}")
    root = _dataset_root(spec, info)
    read = {SPLIT_JSON: _read_split_json, FGVC_VARIANTS: _read_fgvc, IMAGENET_FOLDERS: _read_imagenet,
            IMAGENET_VARIANT: _read_imagenet_variant}[info.layout]
    paths, labels, classnames = read(spec, info, root, split)
    if not paths:
        raise DatasetError(f"coop:{info.name} split {split!r} under {root}: no images")
    templates = get_templates(spec.options["templates"]) if "templates" in spec.options else list(info.templates)
    return ImageDataset(
        kind="coop", name=info.name, split=split, classnames=classnames, templates=templates, paths=paths, labels=labels
    )


# ------------------------------------------------------------------------------------------------- locating
def _marker(info: DatasetInfo, spec: Spec) -> str:
    if "split_file" in spec.options and info.layout in (SPLIT_JSON, FGVC_VARIANTS):
        return ""
    return {SPLIT_JSON: info.split_file, FGVC_VARIANTS: "variants.txt"}.get(info.layout, "")


def _dataset_root(spec: Spec, info: DatasetInfo) -> Path:
    """ROOT itself, or ROOT/<CoOp folder name> when ROOT is CoOp's DATA directory holding several datasets."""
    given = spec.root_path()
    if not given.is_dir():
        raise DatasetError(f"coop:{info.name}: root {given} is not a directory")
    marker = _marker(info, spec)
    for candidate in (given, given / info.dataset_dir):
        if marker and (candidate / marker).is_file():
            return candidate
        if not marker and (candidate / _image_dir_name(spec, info)).is_dir():
            return candidate
    if marker:
        raise DatasetError(
            f"coop:{info.name}: {given / marker} not found (nor under {given / info.dataset_dir}); "
            f"CoOp's layout puts {marker} in the dataset folder (see docs/datasets.md)"
        )
    return given


def _image_dir_name(spec: Spec, info: DatasetInfo) -> str:
    return spec.options.get("image_dir", info.image_dir)


def _image_dir(spec: Spec, info: DatasetInfo, root: Path) -> Path:
    image_dir = root / _image_dir_name(spec, info)
    if not image_dir.is_dir():
        raise DatasetError(
            f"coop:{info.name}: image directory {image_dir} not found; CoOp's layout is "
            f"<root>/{info.image_dir or '.'} — pass ?image_dir=SUBDIR if yours differs"
        )
    return image_dir


def _split_file(spec: Spec, info: DatasetInfo, root: Path, default: str) -> Path:
    if "split_file" in spec.options:
        path = Path(spec.options["split_file"]).expanduser()
        path = path if path.is_absolute() else root / path
    else:
        path = root / default
    if not path.is_file():
        raise DatasetError(f"coop:{info.name}: split file {path} not found")
    return path


# ------------------------------------------------------------------------------------------------- split JSON
def _read_split_json(spec: Spec, info: DatasetInfo, root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """CoOp's `split_zhou_<Name>.json`; class names come from the (label, classname) pairs of every split."""
    path = _split_file(spec, info, root, info.split_file)
    image_dir = _image_dir(spec, info, root)
    data = read_json(path, what="split file", error=DatasetError)
    if not isinstance(data, dict) or split not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path}: expected an object with key {split!r} (lists of [relpath, label, classname]); "
                           f"found {keys}")
    names: dict[int, str] = {}
    for key, entries in data.items():
        for i, entry in enumerate(_entries(path, key, entries)):
            rel, label, name = entry
            path_under(image_dir, rel, f"{path}: '{key}'[{i}]")
            if names.setdefault(label, name) != name:
                raise DatasetError(
                    f"{path}: '{key}'[{i}] gives label {label} the class name {name!r} but earlier entries say "
                    f"{names[label]!r}"
                )
    classnames = _contiguous_classnames(path, names)
    items = _entries(path, split, data[split])
    return [str(image_dir / rel) for rel, _, _ in items], [label for _, label, _ in items], classnames


def _entries(path: Path, key: str, entries: Any) -> list[tuple[str, int, str]]:
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: '{key}' must be a list of [relpath, label, classname]")
    out = []
    for i, e in enumerate(entries):
        ok = isinstance(e, (list, tuple)) and len(e) == 3 and isinstance(e[0], str) and isinstance(e[2], str)
        if not ok or isinstance(e[1], bool) or not isinstance(e[1], int) or e[1] < 0:
            raise DatasetError(f"{path}: '{key}'[{i}] = {e!r}; expected [relpath (str), label (int >= 0), "
                               "classname (str)]")
        out.append((e[0], e[1], e[2]))
    return out


def _contiguous_classnames(source: Path, names: dict[int, str]) -> list[str]:
    if not names:
        raise DatasetError(f"{source}: no labelled entries")
    num = max(names) + 1
    missing = [k for k in range(num) if k not in names]
    if missing:
        raise DatasetError(f"{source}: labels must cover 0..{num - 1}; no entry has label(s) {missing[:10]}")
    return [names[k] for k in range(num)]


# ------------------------------------------------------------------------------------------------- FGVC-Aircraft
def _read_fgvc(spec: Spec, info: DatasetInfo, root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """`variants.txt` (class order) and `images_variant_<split>.txt` lines `IMAGE_ID VARIANT NAME`."""
    if "split_file" in spec.options:  # a CoOp-style split JSON made by the user
        return _read_split_json(spec, info, root, split)
    variants = root / "variants.txt"
    classnames = [line.strip() for line in read_text(variants, what="FGVC variant list",
                                                     error=DatasetError).splitlines()
                  if line.strip()]
    index = {c: i for i, c in enumerate(classnames)}
    listing = root / f"images_variant_{split}.txt"
    if not listing.is_file():
        raise DatasetError(f"coop:{info.name}: split list {listing} not found")
    image_dir = _image_dir(spec, info, root)
    paths, labels = [], []
    for n, line in enumerate(read_text(listing, what="FGVC split list", error=DatasetError).splitlines(), 1):
        if not line.strip():
            continue
        image_id, _, variant = line.strip().partition(" ")
        if variant not in index:
            raise DatasetError(f"{listing}:{n}: variant {variant!r} is not listed in {variants}")
        paths.append(str(path_under(image_dir, f"{image_id}.jpg", f"{listing}:{n}")))
        labels.append(index[variant])
    return paths, labels, classnames


# ------------------------------------------------------------------------------------------------- ImageNet
def _imagenet_root(spec: Spec, info: DatasetInfo, root: Path) -> Path:
    """<root>/images (CoOp) or, when absent and no image_dir was given, <root> itself (plain train/ val/)."""
    image_dir = root / _image_dir_name(spec, info)
    if image_dir.is_dir() or "image_dir" in spec.options:
        return _image_dir(spec, info, root)
    return root


def _read_imagenet(spec: Spec, info: DatasetInfo, root: Path, split: str) -> tuple[list[str], list[int], list[str]]:
    """ImageFolder train/ and val/ with WordNet-id folders; val/ serves as both 'val' and 'test' (CoOp)."""
    base = _imagenet_root(spec, info, root)
    folder = base / ("train" if split == "train" else "val")
    if split == "val":
        log.warning("coop:imagenet: the 'val' split is ImageNet's val/ folder, which is also the 'test' split (as "
                    "in CoOp)")
    if not folder.is_dir():
        raise DatasetError(f"coop:imagenet: {folder} not found; expected <root>/images/{{train,val}}/<wnid>/*.JPEG")
    return _wnid_folders(info, folder, label_of=_wnid_labels(info))


def _read_imagenet_variant(spec: Spec, info: DatasetInfo, root: Path,
                           split: str) -> tuple[list[str], list[int], list[str]]:
    """A test-only variant: its one folder (`split` is always 'test', `info.splits`)."""
    folder = _image_dir(spec, info, root)
    if info.label_space == "index":
        def label_of(name: str) -> int | None:
            return int(name) if name.isdigit() and int(name) < 1000 else None
    else:
        label_of = _wnid_labels(info)
    return _wnid_folders(info, folder, label_of)


def _wnid_labels(info: DatasetInfo):
    meta = imagenet_meta()
    wnids = meta["wnids"] if info.label_space in ("wnid", "index") else meta[info.label_space]
    index = {w: i for i, w in enumerate(wnids)}
    return index.get


def _wnid_folders(info: DatasetInfo, folder: Path, label_of) -> tuple[list[str], list[int], list[str]]:
    paths, labels = [], []
    for name in subdirectories(folder):
        label = label_of(name)
        if label is None:
            expected = ("0..999" if info.label_space == "index"
                        else f"a WordNet id of {info.name}'s {info.num_classes} classes")
            raise DatasetError(f"coop:{info.name}: folder {folder / name} is not a class folder (expected {expected})")
        files = scan_images(folder / name)
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels, shipped_classnames(info.name) or []
