"""The augmentation for V views of an image: RandomResizedCrop(scale 0.5–1) + horizontal flip + CLIP normalise.

Random draws come from an explicit `torch.Generator`, so view v of image i depends only on (seed, i), never on
batch order, worker count or which shards were already done — a resumed or sharded extraction gives the same
features as one uninterrupted run.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


class ViewAugment:
    """Random resized crop + flip + normalisation, drawing from a generator (callable like a transform)."""

    def __init__(
        self,
        size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        interpolation: str = "bicubic",
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
        seed: int | None = None,
    ):
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.mean, self.std = list(mean), list(std)
        self.interpolation = InterpolationMode(interpolation)
        self.scale, self.ratio, self.flip = scale, ratio, flip
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def crop_params(self, width: int, height: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """(top, left, h, w) as torchvision's RandomResizedCrop draws them, from `generator`."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale, generator)
            aspect = math.exp(_uniform(*log_ratio, generator))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        in_ratio = width / height  # fallback: central crop with the ratio clamped
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        """One augmented view (3, H, W), normalised; draws from `generator`, else this object's, else global."""
        generator = generator if generator is not None else self.generator
        image = image.convert("RGB")
        top, left, h, w = self.crop_params(image.width, image.height, generator)
        image = TF.resized_crop(image, top, left, h, w, self.size, interpolation=self.interpolation, antialias=True)
        if self.flip and float(torch.rand(1, generator=generator)) < 0.5:
            image = TF.hflip(image)
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)

    def views(self, image: Image.Image, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` views stacked: (n, 3, H, W)."""
        return torch.stack([self(image, generator) for _ in range(n)])

    def __repr__(self) -> str:
        return (
            f"ViewAugment(size={self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}, "
            f"flip={self.flip}, interpolation={self.interpolation.value})"
        )


def row_generator(seed: int, row: int) -> torch.Generator:
    """The generator for image `row` of an extraction seeded `seed` (independent of batching)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(row)) % (2**63 - 1))
