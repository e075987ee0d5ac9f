"""File-system helpers shared by the on-disk dataset builders."""

from __future__ import annotations

import os
from pathlib import Path

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
