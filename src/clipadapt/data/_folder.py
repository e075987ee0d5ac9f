"""`imagefolder:ROOT` and `csv:FILE_OR_DIR` — user datasets on disk."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from clipadapt.data._files import scan_images, subdirectories
from clipadapt.data._spec import Spec
from clipadapt.data.catalog import get_templates
from clipadapt.data.dataset import ImageDataset
from clipadapt.errors import DatasetError
from clipadapt.fileio import read_json, read_text

log = logging.getLogger(__name__)

OPTIONS = ("templates", "name")
SPLIT_DIRS = ("train", "val", "test")


def folder_classname(folder: str) -> str:
    """A class folder name as a prompt-ready class name: underscores become spaces."""
    return folder.replace("_", " ").strip()


# ------------------------------------------------------------------------------------------------- imagefolder
def build_imagefolder(spec: Spec, split: str) -> ImageDataset:
    """`root/<split>/<class>/*` when split folders exist, else `root/<class>/*` for every split."""
    spec.check_options(OPTIONS)
    root = spec.root_path()
    if not root.is_dir():
        raise DatasetError(f"imagefolder: root {root} is not a directory")
    present = [s for s in subdirectories(root) if s in SPLIT_DIRS or s == split]
    if present:
        if split not in present:
            raise DatasetError(f"imagefolder: {root / split} not found; this dataset has split folders {present}")
        classes = sorted({c for s in present for c in subdirectories(root / s)})  # one label space for all splits
        base = root / split
    else:
        classes = subdirectories(root)
        base = root
    if not classes:
        raise DatasetError(f"imagefolder: no class folders in {base}; expected {base}/<class>/<image files>")
    paths, labels, empty = [], [], []
    for label, cls in enumerate(classes):
        files = scan_images(base / cls) if (base / cls).is_dir() else []
        if not files:
            empty.append(cls)
        paths.extend(files)
        labels.extend([label] * len(files))
    if empty and paths:
        shown = ", ".join(f"{base / c}{'' if (base / c).is_dir() else ' (no folder)'}" for c in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        log.warning("imagefolder: %d of %d classes have no image files in split '%s': %s%s; they stay classes "
                    "(labels agree across splits) but have no %s images", len(empty), len(classes), split, shown,
                    more, split)
    if not paths:
        raise DatasetError(f"imagefolder: no image files under {base}/<class>/")
    return ImageDataset(
        kind="imagefolder",
        name=spec.options.get("name", root.name),
        split=split,
        classnames=[folder_classname(c) for c in classes],
        templates=get_templates(spec.options.get("templates")),
        paths=paths,
        labels=labels,
    )


# ------------------------------------------------------------------------------------------------- csv
def build_csv(spec: Spec, split: str) -> ImageDataset:
    """`csv:FILE` (this file is the split) or `csv:DIR` (reads DIR/<split>.csv); columns path,label[,classname]."""
    spec.check_options(OPTIONS)
    target = spec.root_path()
    if target.is_dir():
        path = target / f"{split}.csv"
        if not path.is_file():
            have = sorted(p.name for p in target.glob("*.csv"))
            raise DatasetError(f"csv: {path} not found (csv:DIR reads DIR/<split>.csv; found {have})")
        siblings = [target / f"{s}.csv" for s in SPLIT_DIRS if (target / f"{s}.csv").is_file()]
        default_name = target.name
    elif target.is_file():
        path, siblings, default_name = target, [target], target.stem
    else:
        raise DatasetError(f"csv: {target} not found (expected a .csv file or a folder of <split>.csv files)")
    rows = _read_rows(path)
    classnames = _csv_classnames(path, rows, siblings)
    present = {label for _, label, _ in rows}
    empty = [f"{k} ({name})" for k, name in enumerate(classnames) if k not in present]
    if empty:
        log.warning("csv: %s has no rows for %d of %d classes: %s%s; they stay classes but have no %s images",
                    path, len(empty), len(classnames), ", ".join(empty[:10]),
                    f" and {len(empty) - 10} more" if len(empty) > 10 else "", split)
    return ImageDataset(
        kind="csv",
        name=spec.options.get("name", default_name),
        split=split,
        classnames=classnames,
        templates=get_templates(spec.options.get("templates")),
        paths=[p for p, _, _ in rows],
        labels=[label for _, label, _ in rows],
    )


def _read_rows(path: Path) -> list[tuple[str, int, str | None]]:
    """(absolute path, label, classname or None) per row; paths are relative to the CSV's folder."""
    text = read_text(path, what="dataset CSV", error=DatasetError)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "path" not in columns or "label" not in columns:
        raise DatasetError(
            f"{path}: header must name columns 'path' and 'label' (optional 'classname'); found "
            f"{columns or 'no header'}"
        )
    rows = []
    for n, raw in enumerate(reader, 2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not row["path"]:
            raise DatasetError(f"{path}:{n}: empty 'path'")
        try:
            label = int(row["label"])
        except ValueError:
            raise DatasetError(f"{path}:{n}: 'label' must be an integer >= 0, got {row['label']!r}") from None
        if label < 0:
            raise DatasetError(f"{path}:{n}: 'label' must be an integer >= 0, got {label}")
        rows.append((str((path.parent / row["path"]).resolve()), label, row.get("classname") or None))
    if not rows:
        raise DatasetError(f"{path}: no rows")
    return rows


def read_classnames_file(path: Path) -> list[str]:
    """Class names from a .json list or a text file with one name per line (blank lines skipped)."""
    if path.suffix.lower() == ".json":
        names = read_json(path, what="class-name file", error=DatasetError)
        if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
            raise DatasetError(f"{path}: expected a non-empty JSON list of class-name strings")
        return names
    names = [line.strip() for line in read_text(path, what="class-name file", error=DatasetError).splitlines()
             if line.strip()]
    if not names:
        raise DatasetError(f"{path}: no class names (expected one per line)")
    return names


def _sidecar_classnames(folder: Path) -> tuple[Path, list[str]] | None:
    """classnames.txt or classnames.json in `folder`, with its names, or None."""
    for path in (folder / "classnames.txt", folder / "classnames.json"):
        if path.is_file():
            return path, read_classnames_file(path)
    return None


def spec_classnames(spec: Spec, base: Path | None, folders: Sequence[Path]) -> tuple[Path, list[str]] | None:
    """(file, class names) of the spec's `?classnames=FILE` (a relative FILE is taken under `base`), else of the
    classnames.txt/.json in the first of `folders` holding one, else None."""
    if "classnames" in spec.options:
        path = Path(spec.options["classnames"]).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise DatasetError(f"dataset spec {spec.text!r}: class-name file {path} not found")
        return path, read_classnames_file(path)
    return next((found for folder in folders if (found := _sidecar_classnames(folder)) is not None), None)


def _csv_classnames(path: Path, rows: list[tuple[str, int, str | None]], siblings: list[Path]) -> list[str]:
    """classnames.txt/.json beside the CSV, else the 'classname' column over all <split>.csv files of the folder."""
    sidecar = _sidecar_classnames(path.parent)
    if sidecar is not None:
        source, names = sidecar
        for n, (_, label, name) in enumerate(rows, 2):
            if label >= len(names):
                raise DatasetError(f"{path}:{n}: label {label} out of range: {source} lists {len(names)} classes")
            if name is not None and name != names[label]:
                raise DatasetError(f"{path}:{n}: classname {name!r} but {source} names label {label} {names[label]!r}")
        return names
    mapping: dict[int, str] = {}
    for file in dict.fromkeys([path, *siblings]):
        for n, (_, label, name) in enumerate(rows if file == path else _read_rows(file), 2):
            if name is None:
                raise DatasetError(
                    f"{file}:{n}: no class name: give a 'classname' column or a classnames.txt (one per line) "
                    f"beside {path.name}"
                )
            if mapping.setdefault(label, name) != name:
                raise DatasetError(f"{file}:{n}: label {label} is named {name!r} here but {mapping[label]!r} earlier")
    missing = [k for k in range(max(mapping) + 1) if k not in mapping]
    if missing:
        raise DatasetError(
            f"{path}: labels {missing[:10]} have no class name in any <split>.csv; add a classnames.txt beside it"
        )
    return [mapping[k] for k in range(len(mapping))]
