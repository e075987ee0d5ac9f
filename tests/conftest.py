"""Shared fixtures: real CLIP embeddings shipped with the package (builtin:coco500), small random feature
directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny models: more threads only contend on small CI machines

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def coco500() -> tuple[torch.Tensor, torch.Tensor]:
    """(image, caption) real CLIP ViT-B/16 embeddings, (500, 512) each; row i of both is a matched pair.
    Read from the package's builtin:coco500 data (src/clipadapt/builtin_data/), float32, exact."""
    from clipadapt.builtin import load_pairs

    return load_pairs("coco500")


@pytest.fixture(scope="session")
def coco500_random_init() -> tuple[torch.Tensor, torch.Tensor]:
    """The same pipeline with a randomly initialised CLIP: the negative control (stored as float16)."""
    from clipadapt.builtin import load_pairs

    return load_pairs("coco500-random")


def tiny(name: str = "clipadapt-test-tiny-vit", seed: int = 0) -> torch.nn.Module:
    """A tiny random-init open_clip model (the package's test configs), weights drawn under `seed`, eval mode."""
    import open_clip

    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(name).eval()


def make_clustered_features(
    num_classes: int = 5, per_class: int = 20, dim: int = 16, views: int | None = None, seed: int = 0,
    noise: float = 0.6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Synthetic raw embeddings: class prototypes (the 'text'), noisy image embeddings around them, labels."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    shape = (labels.numel(), views, dim) if views else (labels.numel(), dim)
    noise_t = noise * torch.randn(*shape, generator=g) * protos.norm(dim=1).mean()
    base = protos[labels].unsqueeze(1) if views else protos[labels]
    image = 3.0 * (base + noise_t)
    return protos, image, labels


@pytest.fixture
def synthetic_featureset():
    from clipadapt.features import FeatureSet, FeatureSplit

    protos, image, labels = make_clustered_features()
    _, val_image, val_labels = make_clustered_features(seed=1)
    return FeatureSet(
        classnames=[f"class {i}" for i in range(protos.shape[0])],
        text=protos,
        splits={"test": FeatureSplit(image, labels), "val": FeatureSplit(val_image, val_labels)},
        meta={"model": "synthetic", "dataset": "clusters"},
    )


@pytest.fixture
def no_encoder(monkeypatch):
    """Call it to make any later encoder load an error: proves a run was served from the cache."""
    import clipadapt.encoders
    from clipadapt.features.pipeline import clear_encoder_memo

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded although the features are cached")

    def activate():
        clear_encoder_memo()  # no encoder kept from an earlier run either
        monkeypatch.setattr(clipadapt.encoders, "load_encoder", refuse)

    return activate
