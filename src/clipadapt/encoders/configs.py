"""Architectures shipped as data: JSON configs under `model_configs/`, registered with open_clip on import.

`clipadapt-test-tiny-vit` and `clipadapt-test-tiny-rn` are tiny randomly initialised CLIP models (a few layers,
32×32 images) for tests and benchmarks; they have no pretrained weights.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "model_configs"
TEST_MODELS = ("clipadapt-test-tiny-vit", "clipadapt-test-tiny-rn")

_registered = False


def register_model_configs() -> None:
    """Add clipadapt's architecture configs to open_clip's registry (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    _registered = True
