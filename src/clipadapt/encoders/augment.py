"""The augmentation for V views of an image: RandomResizedCrop(scale 0.5–1) + horizontal flip + CLIP normalise.

Random draws come from an explicit `torch.Generator`, so view v of image i depends only on (seed, i), never on
batch order, worker count or which shards were already done — a resumed or sharded extraction gives the same
features as one uninterrupted run.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor
from torchvision.transforms import functional as TF
from torchvision.transforms.functional import pil_modes_mapping


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

    def pil_view(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        """One augmented view as a PIL image (crop + flip, before tensor conversion)."""
        generator = generator if generator is not None else self.generator
        image = image.convert("RGB")
        top, left, h, w = self.crop_params(image.width, image.height, generator)
        image = TF.resized_crop(image, top, left, h, w, self.size, interpolation=self.interpolation, antialias=True)
        if self.flip and float(torch.rand(1, generator=generator)) < 0.5:
            image = TF.hflip(image)
        return image

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> Tensor:
        """One augmented view (3, H, W), normalised; draws from `generator`, else this object's, else global."""
        return TF.normalize(TF.to_tensor(self.pil_view(image, generator)), self.mean, self.std)

    def views(self, image: Image.Image, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` views stacked: (n, 3, H, W), normalised."""
        return torch.stack([self(image, generator) for _ in range(n)])

    def views_uint8(self, image: Image.Image, n: int, generator: torch.Generator | None = None) -> Tensor:
        """`n` views as uint8 (n, 3, H, W), to be normalised per batch (`normalize_uint8`)."""
        return torch.stack([pil_to_uint8(self.pil_view(image, generator)) for _ in range(n)])

    def __repr__(self) -> str:
        return (
            f"ViewAugment(size={self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}, "
            f"flip={self.flip}, interpolation={self.interpolation.value})"
        )


def pil_to_uint8(image: Image.Image) -> Tensor:
    """PIL RGB -> (3, H, W) uint8 tensor (no scaling: 4x less to move between processes and devices)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # np.array: one writable copy


def normalize_uint8(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 CLIP-normalised, on the tensor's device; equals ToTensor + Normalize."""
    shape = (3, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(shape)
    return pixels.float().div_(255).sub_(mean_t).div_(std_t)


def split_eval_transform(preprocess) -> tuple[Any, list[float], list[float]] | None:
    """(PIL stage, mean, std) of a torchvision Compose ending in ToTensor + Normalize, else None.

    Lets extraction run the PIL resize/crop per image and the tensor conversion + normalisation per batch.
    The PIL stage is a `PilEvalStage`: the same steps, bit for bit, with less per-image overhead.
    """
    steps = getattr(preprocess, "transforms", None)
    if not isinstance(preprocess, Compose) or not steps or len(steps) < 2:
        return None
    to_tensor, normalize = steps[-2], steps[-1]
    if not isinstance(to_tensor, ToTensor) or not isinstance(normalize, Normalize):
        return None
    return PilEvalStage(steps[:-2]), list(map(float, normalize.mean)), list(map(float, normalize.std))


class PilEvalStage:
    """An eval transform's PIL steps (torchvision Resize, CenterCrop, open_clip's MaybeConvertMode) run as direct
    PIL calls: the output is pixel-identical to the torchvision transforms (tested over every input size in a
    range), at about a third of their per-image cost. The transforms' generic size/type checks, API-usage logging
    and module dispatch cost more than resizing a small image. Steps it does not know, and a crop that would have
    to pad, run as the original transform.
    """

    def __init__(self, steps: Sequence[Any]):
        self.steps = list(steps)
        self._calls = [self._compile(step) for step in self.steps]

    @staticmethod
    def _compile(step: Any):
        """The direct PIL call of one step: a partial of a module function, so the stage pickles (DataLoader workers
        started by spawn / forkserver — macOS, Windows, Python >= 3.14 — receive it pickled)."""
        if isinstance(step, Resize):
            return functools.partial(_pil_resize, step=step)
        if isinstance(step, CenterCrop):
            return functools.partial(_pil_center_crop, step=step)
        if type(step).__name__ == "MaybeConvertMode":  # open_clip's: convert PIL images to its mode
            return functools.partial(_convert_mode, mode=getattr(step, "mode", "RGB"))
        return step

    def __call__(self, image: Image.Image) -> Image.Image:
        for call in self._calls:
            image = call(image)
        return image

    def __repr__(self) -> str:
        return f"PilEvalStage({', '.join(type(s).__name__ for s in self.steps)})"


def resized_size(width: int, height: int, size: int | Sequence[int], max_size: int | None = None) -> tuple[int, int]:
    """(width, height) torchvision's Resize gives: an int (or [int]) sets the shorter side, keeping the aspect
    ratio (longer side truncated, capped by max_size); [h, w] is taken as is."""
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[1]), int(size[0])
    short_target = int(size if isinstance(size, int) else size[0])
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = short_target, int(short_target * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _pil_resize(image: Image.Image, step: Any) -> Image.Image:
    size = resized_size(image.width, image.height, step.size, step.max_size)
    if size == image.size:  # torchvision returns the image untouched then
        return image
    return image.resize(size, pil_modes_mapping[InterpolationMode(step.interpolation)])


def _convert_mode(image: Image.Image, mode: str) -> Image.Image:
    return image if image.mode == mode else image.convert(mode)


def _pil_center_crop(image: Image.Image, step: Any) -> Image.Image:
    size = step.size
    crop_h, crop_w = (size, size) if isinstance(size, int) else (size[0], size[-1])
    if crop_w > image.width or crop_h > image.height:  # torchvision pads first: let it
        return step(image)
    top = int(round((image.height - crop_h) / 2.0))
    left = int(round((image.width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def row_generator(seed: int, row: int) -> torch.Generator:
    """The generator for image `row` of an extraction seeded `seed` (independent of batching)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(row)) % (2**63 - 1))
