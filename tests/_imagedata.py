"""A small on-disk image dataset with the clipadapt.data interface, for the encoder/extract/cache tests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from clipadapt.errors import DatasetError


class TinyImageDataset:
    """Generated PNGs: .name .split .classnames .templates .paths .labels, ds[i] -> (PIL RGB, label)."""

    def __init__(self, paths, labels, *, name="tiny", split="test", classnames=("red", "green", "blue"),
                 templates=("a photo of a {}.", "a {} thing.")):
        self.paths, self.labels = [Path(p) for p in paths], [int(x) for x in labels]
        self.name, self.split = name, split
        self.classnames, self.templates = list(classnames), list(templates)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                return im.convert("RGB"), self.labels[i]
        except OSError as e:
            raise DatasetError(f"{path}: unreadable image ({e})") from e

    def fingerprint(self) -> str:
        blob = json.dumps([self.name, self.split, [str(p) for p in self.paths], self.labels, self.classnames])
        return hashlib.sha256(blob.encode()).hexdigest()

    def subset(self, indices):
        return TinyImageDataset([self.paths[i] for i in indices], [self.labels[i] for i in indices], name=self.name,
                                split=self.split, classnames=self.classnames, templates=self.templates)


def make_images(root: Path, n: int = 12, *, num_classes: int = 3, size=(40, 48), seed: int = 0, split="test",
                name="tiny") -> TinyImageDataset:
    """n noisy colour images (class c tinted by channel c) written as PNGs under root/split."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i in range(n):
        label = i % num_classes
        pixels = rng.integers(0, 120, size=(size[1], size[0], 3))
        pixels[..., label % 3] += 120
        path = folder / f"img{i:04d}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
        labels.append(label)
    classnames = (["red", "green", "blue", "other"][:num_classes] if num_classes <= 4
                  else [f"c{c}" for c in range(num_classes)])
    return TinyImageDataset(paths, labels, name=name, split=split, classnames=classnames)


def corrupt(path: Path) -> None:
    """Overwrite an image with bytes that are not a PNG."""
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")


def make_imagefolder(root: Path, splits=("train", "test"), per_class: int = 2,
                     classes=("red", "green", "blue")) -> Path:
    """ROOT/<split>/<class>/*.png for the `imagefolder:ROOT` dataset spec."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 120, size=(36, 36, 3))
                pixels[..., c % 3] += 120
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return Path(root)


class CountingEncoder:
    """Wraps an encoder; counts encoded images and can fail after `fail_after` calls (an interrupted run)."""

    def __init__(self, enc, fail_after: int | None = None):
        self.enc, self.fail_after = enc, fail_after
        self.calls, self.images = 0, 0

    def __getattr__(self, name):
        return getattr(self.enc, name)

    def encode_images(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.images += batch.shape[0]
        return self.enc.encode_images(batch)
