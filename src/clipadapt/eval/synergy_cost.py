"""Backbone synergy, the cost axis (docs/methods.md §6): parameters, GFLOPs and time per image of an architecture.
Not pure, unlike the analyses: it builds open_clip models (meta device for shapes, random weights to time them)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from clipadapt.errors import ConfigError


def model_cost(model_id: str, *, device: str = "cpu", measure_time: bool = True, batch: int = 4,
               repeats: int = 3) -> dict[str, Any]:
    """Parameters (image tower and total), GFLOPs of encoding one image and (optionally) measured ms per image.

    Only the architecture matters, so this builds `ARCH` of `ARCH@TAG` without weights (no download).
    Parameters and FLOPs are counted on the meta device (shapes only, no computation) with
    torch.utils.flop_counter (a multiply-add counts 2). With `measure_time`, a randomly initialised copy on
    `device` encodes `batch` images: median over `repeats` timed batches after one warm-up batch.
    """
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    arch = model_id.split("@", 1)[0].strip().replace("/", "-")  # open_clip spells ViT-B/32 as ViT-B-32
    if _is_transformers(model_id):  # hf:...: the architecture from its config.json
        model = _hf_model(model_id, "meta")
    elif arch not in open_clip.list_models():
        raise ConfigError(f"{model_id}: unknown open_clip architecture {arch!r} (open_clip.list_models() lists them)")
    else:
        with torch.device("meta"):
            model = open_clip.create_model(arch, pretrained=None, device="meta").eval()
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model.encode_image(torch.empty(1, 3, *size, device="meta"))
    except RuntimeError:  # data-dependent code (Siglip2's NaFlex checks) cannot run on meta: count one CPU image
        if not _is_transformers(model_id):
            raise
        model, counter = _hf_model(model_id, "cpu"), FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model.encode_image(torch.zeros(1, 3, *size))
    result = {
        "model": model_id,
        "params_image_M": sum(p.numel() for p in model.visual.parameters()) / 1e6,
        "params_total_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops_per_image": counter.get_total_flops() / 1e9,
        "image_size": list(size),
    }
    if measure_time:
        arch_or_id = model_id if _is_transformers(model_id) else arch
        result.update(ms_per_image=_time_per_image(arch_or_id, size, device, batch, repeats), device=device)
    return result


def _is_transformers(model_id: str) -> bool:
    from clipadapt.encoders.ids import HF_PREFIX

    return model_id.strip().startswith(HF_PREFIX)


def _hf_model(model_id: str, device: str) -> torch.nn.Module:
    """A transformers (hf:) model's architecture with random weights on `device` (clipadapt.encoders.hf)."""
    from clipadapt.encoders import hf, parse_model_id

    return hf.build_random(parse_model_id(model_id), device)


def _time_per_image(arch: str, size: tuple[int, int], device: str, batch: int, repeats: int) -> float:
    """Median milliseconds per image of `encode_image` on `device` (random weights)."""
    import open_clip

    if _is_transformers(arch):
        model = _hf_model(arch, device)
    else:
        model = open_clip.create_model(arch, pretrained=None, device=device).eval()
    images = torch.randn(batch, 3, *size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.no_grad():
        model.encode_image(images)
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            model.encode_image(images)
            sync()
            times.append((time.perf_counter() - t0) / batch)
    return 1000.0 * float(np.median(times))
