"""A generated two-class image set (horizontal vs vertical stripes, random colours/periods), 32x32 RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def stripe_image(label: int, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Class 0: horizontal stripes; class 1: vertical stripes; random period, phase, two colours, pixel noise."""
    period = int(rng.integers(3, 7))
    phase = int(rng.integers(0, period))
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    band = ((np.arange(size) + phase) // (period / 2)).astype(int) % 2
    mask = np.repeat(band[:, None], size, 1) if label == 0 else np.repeat(band[None, :], size, 0)
    img = np.where(mask[..., None] == 1, c1, c2) + rng.normal(0, 10, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


class StripesDataset:
    """In-memory dataset with the clipadapt.data shape: .classnames .labels, len, ds[i] -> (PIL, int)."""

    classnames = ["horizontal stripes", "vertical stripes"]

    def __init__(self, n: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.labels = [i % 2 for i in range(n)]
        self.images = [stripe_image(y, rng) for y in self.labels]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]


def write_stripes_imagefolder(root: Path, n: int = 16, seed: int = 0) -> Path:
    """`root/<class>/<i>.png` for an `imagefolder:` spec."""
    ds = StripesDataset(n, seed)
    for i, (image, label) in enumerate(ds):
        folder = Path(root) / ("horizontal_stripes", "vertical_stripes")[label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:03d}.png")
    return Path(root)
