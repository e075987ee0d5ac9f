"""Built-in feature sets shipped inside the package: `builtin:NAME` wherever a feature or retrieval directory is read.

Each built-in is a directory under `builtin_data/` that is at once a feature directory (docs/feature-format.md)
and a retrieval directory (`features.retrieval_dir`): `test.safetensors` holds 'image', 'label', 'text' and
'text_to_image'; `unlabeled.safetensors` holds 'image' and 'text' (DN's held-out pool); `text.safetensors`
holds the class texts. The loaders call `resolve_dir`, so `builtin:coco500` works in `eval`, `retrieval`,
`dn-sweep`, `search`, `imo` and `captions` without any command knowing about it. Embeddings are raw.

This module is torch-free: `clipadapt datasets` lists the built-ins without importing torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipadapt.errors import FeatureDirError

if TYPE_CHECKING:
    from torch import Tensor

PREFIX = "builtin:"
BUILTIN_ROOT = Path(__file__).resolve().parent / "builtin_data"
HOLDOUT = 100  # the first 100 coco500 pairs are the unlabeled pool; pairs 100..499 are evaluated

BUILTINS: dict[str, dict[str, Any]] = {
    "coco500": {
        "what": "real OpenAI CLIP ViT-B/16 embeddings of 500 MSCOCO val2017 image–caption pairs (MIT)",
        "model": "ViT-B-16@openai", "dim": 512, "dtype": "float32",
        "splits": {"unlabeled": "pairs 0–99 (DN's means)", "test": "pairs 100–499"},
        "classes": "the 400 test captions (400-way caption classification = image→text retrieval)",
    },
    "coco500-random": {
        "what": "the same 500 pairs through a randomly initialised CLIP: the negative control (chance level)",
        "model": "ViT-B-16 (random init)", "dim": 512, "dtype": "float16 (read as float32)",
        "splits": {"unlabeled": "pairs 0–99", "test": "pairs 100–499"},
        "classes": "the 400 test captions",
    },
}


def is_builtin(spec: str | Path) -> bool:
    """True for 'builtin:NAME'."""
    return str(spec).startswith(PREFIX)


def builtin_dir(name: str) -> Path:
    """The package directory of built-in `name`; FeatureDirError listing the names when unknown or missing."""
    if name not in BUILTINS:
        raise FeatureDirError(f"'{PREFIX}{name}': no such built-in feature set; available: "
                              + ", ".join(PREFIX + n for n in BUILTINS))
    path = BUILTIN_ROOT / name
    if not (path / "meta.json").is_file():
        raise FeatureDirError(f"'{PREFIX}{name}': {path} is missing from this installation (the package data was "
                              "not installed; reinstall clipadapt)")
    return path


def resolve_dir(spec: str | Path) -> Path:
    """'builtin:NAME' -> its package directory; any other value -> Path(spec), unchanged."""
    if is_builtin(spec):
        return builtin_dir(str(spec)[len(PREFIX):])
    return Path(spec)


def list_builtins() -> list[dict[str, Any]]:
    """One row per built-in, for `clipadapt datasets`."""
    return [{"spec": PREFIX + name, "model": info["model"],
             "splits": ", ".join(f"{k}: {v}" for k, v in info["splits"].items()),
             "what": info["what"]} for name, info in BUILTINS.items()]


def load_pairs(name: str = "coco500") -> tuple[Tensor, Tensor]:
    """(image (500, D), caption (500, D)) float32 in the original pair order: row i of both is a matched pair,
    rows 0..HOLDOUT-1 the unlabeled pool. Used by `captions` and the real-embedding tests."""
    import torch
    from safetensors.torch import load_file  # the files are the package's own: no user-facing validation needed

    directory = builtin_dir(name)
    pool, test = load_file(str(directory / "unlabeled.safetensors")), load_file(str(directory / "test.safetensors"))
    image = torch.cat([pool["image"], test["image"]]).float()
    caption = torch.cat([pool["text"], test["text"]]).float()
    return image, caption


def caption_tensors(spec: str | Path) -> dict[str, Tensor]:
    """`captions --embeddings builtin:NAME`: {'image': (500, D), 'caption': (500, D)}, row i a matched pair."""
    image, caption = load_pairs(str(spec)[len(PREFIX):])
    return {"image": image, "caption": caption}
