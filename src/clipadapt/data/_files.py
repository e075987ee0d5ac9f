"""File-system helpers shared by the on-disk dataset builders."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from clipadapt.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def scan_images(directory: Path) -> list[str]:
    """Image files under `directory` (recursively, hidden entries skipped), sorted, as absolute path strings."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found)


def subdirectories(directory: Path) -> list[str]:
    """Names of the visible sub-directories of `directory`, sorted."""
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))


def path_under(root: str | Path, rel: str, where: str) -> Path:
    """`root / rel` for a path a dataset file lists relative to `root`; DatasetError naming `where` (the file and
    entry) when `rel` is absolute or climbs out of `root` with '..'. Lexical: a symlink inside `root` is the
    dataset's own business, but a split file cannot make clipadapt open an arbitrary file."""
    text = str(rel)
    if (PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or text.startswith("~")
            or PureWindowsPath(text).drive):
        raise DatasetError(f"{where}: image path {text!r} is absolute; it must be relative to {root}")
    parts = PurePosixPath(os.path.normpath(text.replace("\\", "/"))).parts
    if parts and parts[0] == "..":
        raise DatasetError(f"{where}: image path {text!r} leaves {root} ('..'); it must stay inside it")
    return Path(root) / text
