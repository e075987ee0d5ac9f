"""The model registry as data: every open_clip architecture (plus clipadapt's test configs) and its tags."""

from __future__ import annotations

from typing import Any

from clipadapt.encoders.configs import register_model_configs
from clipadapt.encoders.ids import TEST_MODEL_PREFIX


def model_table() -> list[dict[str, Any]]:
    """One row per architecture: arch, its pretrained tags (comma-separated) and an example model id."""
    import open_clip

    register_model_configs()
    rows = []
    for arch in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tags:
            example = f"{arch}@{tags[0]}"
        elif arch.startswith(TEST_MODEL_PREFIX):
            example = f"{arch} (random init, tests only)"
        else:
            example = f"{arch}@/path/to/checkpoint.pt"
        rows.append({"arch": arch, "tags": ", ".join(tags) or "-", "example": example})
    return rows
