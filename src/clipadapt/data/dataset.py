"""`ImageDataset`: one split of a labelled image dataset, whatever its source (files or an in-memory dataset)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from clipadapt.errors import DatasetError

Loader = Callable[[int], Image.Image]


# High-bit-depth PIL modes and the value range each is taken to span (docs/datasets.md, "Image modes"). Pillow's
# own convert("RGB") clips them to 0..255, which saturates a 16-bit image to white.
SIXTEEN_BIT_MAX = 65535  # I;16* and I: 16-bit samples (PNG stores 12-bit samples scaled up to this range)
FLOAT_RANGE = (0.0, 1.0)  # F: 32-bit float samples in [0, 1]


def to_rgb(image: Image.Image, what: str | Path = "image") -> Image.Image:
    """An 8-bit RGB copy of `image`. High-bit-depth grey images are scaled, not clipped: I;16/I;16B/I;16L and I
    (the mode Pillow decodes 16-bit files to) as value / 257 over 0..65535, F as value × 255 over [0, 1]; values
    outside the range are clipped. Every other mode uses Pillow's conversion."""
    mode = image.mode
    if mode == "RGB":
        return image
    import numpy as np  # here: the torch/numpy-free CLI parser imports this package

    if mode == "I" or mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.float64) * (255.0 / SIXTEEN_BIT_MAX)
    elif mode == "F":
        pixels = np.asarray(image).astype(np.float64)
        if not np.isfinite(pixels).all():
            raise DatasetError(f"{what}: 32-bit float image (mode F) holds inf or nan pixels")
        low, high = FLOAT_RANGE
        pixels = (pixels - low) * (255.0 / (high - low))
    else:
        return image.convert("RGB")
    grey = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully as 8-bit RGB (`to_rgb`: high bit depths scaled, not clipped); DatasetError
    naming the path when missing, unreadable or corrupt."""
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im, path)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file not found") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def decode_rgb(data: bytes, where: str) -> Image.Image:
    """Decode encoded image bytes (a tar member, a dataset cell) fully as RGB; DatasetError naming `where`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{where}: cannot read image ({type(e).__name__}: {e})") from e


class FileLoader:
    """Item j is the image file `files[j]` (a class, not a lambda, so datasets pickle for DataLoader workers);
    the feature cache stats `files` to notice in-place edits."""

    def __init__(self, paths: Sequence[str]):
        self.files = list(paths)

    def __call__(self, j: int) -> Image.Image:
        return open_rgb(self.files[j])


class _Rows:
    """What `ImageDataset` and `CaptionedImages` share: row i is item `_source_indices[i]` of `_loader`, so a
    subset keeps the loader and remaps the indices (a subset of a subset still reads the right items)."""

    kind: str
    name: str
    split: str
    spec: str | None
    paths: list[str]

    def _set_source(self, loader: Loader, source_indices: Sequence[int] | None) -> None:
        self._loader = loader
        self._source_indices = list(range(len(self.paths))) if source_indices is None else list(source_indices)

    def __len__(self) -> int:
        return len(self.paths)

    def _digest(self, *fields: Sequence) -> str:
        """sha256 hex over (kind, name, split, paths, *fields)."""
        payload = json.dumps([self.kind, self.name, self.split, self.paths, *fields], ensure_ascii=False,
                             separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def source_files(self) -> list[str] | None:
        """The file each item is decoded from, or None when items are not files (in-memory datasets).

        Not part of `fingerprint()` (which stays portable across machines): the feature cache adds the files'
        size + mtime to its own key (`features.cache.dataset_fingerprint`) so an image rewritten in place is
        re-encoded."""
        files = getattr(self._loader, "files", None)
        return None if files is None else [str(files[j]) for j in self._source_indices]

    def _subset(self, indices: Sequence[int]) -> tuple[list[int], dict]:
        """(the checked indices, the constructor arguments every subset shares: identity, paths, loader)."""
        idx = [int(i) for i in indices]
        for i in idx:
            if not 0 <= i < len(self):
                raise DatasetError(f"{self.name}/{self.split}: subset index {i} out of range 0..{len(self) - 1}")
        return idx, {"kind": self.kind, "name": self.name, "split": self.split, "spec": self.spec,
                     "paths": [self.paths[i] for i in idx], "loader": self._loader,
                     "source_indices": [self._source_indices[i] for i in idx]}


class ImageDataset(_Rows):
    """A labelled image split: `ds[i] -> (PIL RGB image, label)`, plus class names, templates and a fingerprint.

    `paths[i]` identifies item i (a file path, or `name/split/index` for in-memory datasets). `kind` is the spec
    kind that built it (coop, imagefolder, csv, torchvision). Items are decoded lazily through `loader(source_index)`;
    `subset` keeps the loader and remaps the indices, so a subset of a subset still reads the right items.
    """

    def __init__(
        self,
        *,
        kind: str,
        name: str,
        split: str,
        classnames: Sequence[str],
        templates: Sequence[str],
        paths: Sequence[str],
        labels: Sequence[int],
        loader: Loader | None = None,
        source_indices: Sequence[int] | None = None,
        spec: str | None = None,
    ):
        if len(paths) != len(labels):
            raise DatasetError(f"{kind}:{name} split '{split}': {len(paths)} paths but {len(labels)} labels")
        if not classnames:
            raise DatasetError(f"{kind}:{name}: no class names")
        self.kind, self.name, self.split = kind, name, split
        self.spec = spec  # the spec string it was built from, when built by build_dataset (not in the fingerprint)
        self.classnames = [str(c) for c in classnames]
        self.templates = [str(t) for t in templates]
        bad = [t for t in self.templates if "{}" not in t]
        if not self.templates or bad:
            raise DatasetError(f"{kind}:{name}: prompt templates must be a non-empty list of strings with '{{}}'; got "
                               f"{bad or 'none'}")
        self.paths = [str(p) for p in paths]
        self.labels = [int(v) for v in labels]
        num = len(self.classnames)
        for i, v in enumerate(self.labels):
            if not 0 <= v < num:
                raise DatasetError(
                    f"{kind}:{name} split '{split}': item {self.paths[i]} has label {v}, expected 0..{num - 1} "
                    f"({num} class names)"
                )
        # file-backed when no loader is given: item j of the source is the file paths[j]
        self._set_source(loader if loader is not None else FileLoader(self.paths), source_indices)

    # ------------------------------------------------------------------------------------------------ access
    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {i} out of range for {len(self)} items")
        i = i % len(self)
        image = self._loader(self._source_indices[i])
        if image.mode != "RGB":
            image = to_rgb(image, f"{self.name}/{self.split}[{i}]")
        return image, self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def __repr__(self) -> str:
        return (
            f"ImageDataset(kind={self.kind!r}, name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={self.num_classes}, templates={len(self.templates)})"
        )

    # ------------------------------------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """sha256 hex over (kind, name, split, paths, labels, classnames): the same items give the same key."""
        return self._digest(self.labels, self.classnames)

    def subset(self, indices: Sequence[int]) -> ImageDataset:
        """The items at `indices` (in that order), same classes/templates/loader; its fingerprint differs."""
        idx, shared = self._subset(indices)
        return ImageDataset(**shared, classnames=self.classnames, templates=self.templates,
                            labels=[self.labels[i] for i in idx])


class CaptionedImages(_Rows):
    """Images with their captions and no class labels (`wds:`/`hf:` specs with `?caption=`), for retrieval:
    `ds[i] -> (PIL RGB image, None)`, `ds.captions[i]` the list of image i's captions. Same identity surface as
    `ImageDataset` (paths, fingerprint, source_files, subset), so extraction and the cache treat it alike."""

    def __init__(self, *, kind: str, name: str, split: str, paths: Sequence[str], captions: Sequence[Sequence[str]],
                 loader: Loader, source_indices: Sequence[int] | None = None, spec: str | None = None):
        if len(paths) != len(captions):
            raise DatasetError(f"{kind}:{name} split '{split}': {len(paths)} images but {len(captions)} caption lists")
        for path, caps in zip(paths, captions):
            if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
                raise DatasetError(f"{path}: no caption (expected one or more non-empty strings, got {list(caps)!r})")
        self.kind, self.name, self.split, self.spec = kind, name, split, spec
        self.paths = [str(p) for p in paths]
        self.captions = [[str(c) for c in caps] for caps in captions]
        self.classnames: list[str] = []
        self._set_source(loader, source_indices)

    def __getitem__(self, i: int) -> tuple[Image.Image, None]:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.name}/{self.split}: index {i} out of range for {len(self)} items")
        return self._loader(self._source_indices[i]), None

    def __repr__(self) -> str:
        return (f"CaptionedImages(kind={self.kind!r}, name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"captions={sum(map(len, self.captions))})")

    def fingerprint(self) -> str:
        """sha256 hex over (kind, name, split, paths, captions)."""
        return self._digest(self.captions)

    def subset(self, indices: Sequence[int]) -> CaptionedImages:
        idx, shared = self._subset(indices)
        return CaptionedImages(**shared, captions=[self.captions[i] for i in idx])
