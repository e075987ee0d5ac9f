"""Rebuild the packaged coco500 feature sets (src/clipadapt/builtin_data/) from the source .npy files.

    PYTHONPATH=src python tools/build_builtin_coco500.py SOURCE_DIR

SOURCE_DIR holds `features.npy` and `features_random_init.npy`, each (2, 500, 512): [0] image, [1] caption
embeddings, row i of both a matched pair (the coco500-clip-vitb16 data, MIT; see builtin_data/README.md).
Each built-in directory is both a feature directory and a retrieval directory (docs/builtin-data.md):
the first 100 pairs are the `unlabeled` split (DN's means), the other 400 the `test` split, whose 400
captions are the classes of the classification view.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from clipadapt.builtin import BUILTIN_ROOT, HOLDOUT
from clipadapt.features.io import atomic_save_tensors, atomic_write_json

SETS = {  # name: (source file, stored dtype, meta)
    "coco500": ("features.npy", torch.float32,
                {"model": "ViT-B-16@openai", "dataset": "coco500 (builtin:coco500)"}),
    "coco500-random": ("features_random_init.npy", torch.float16,
                       {"model": "ViT-B-16 (random init)", "dataset": "coco500 (builtin:coco500-random)"}),
}


def build(source: Path, name: str) -> Path:
    file, dtype, meta = SETS[name]
    arr = np.load(source / file)
    image, caption = (torch.from_numpy(arr[i].copy()).to(dtype) for i in (0, 1))
    n_test = image.shape[0] - HOLDOUT
    out = BUILTIN_ROOT / name
    out.mkdir(parents=True, exist_ok=True)
    test_text = caption[HOLDOUT:]
    atomic_save_tensors(out / "text.safetensors", {"text": test_text})
    atomic_save_tensors(out / "test.safetensors", {
        "image": image[HOLDOUT:], "label": torch.arange(n_test), "text": test_text,
        "text_to_image": torch.arange(n_test)})
    atomic_save_tensors(out / "unlabeled.safetensors", {"image": image[:HOLDOUT], "text": caption[:HOLDOUT]})
    classnames = [f"coco val2017 caption {i}" for i in range(HOLDOUT, image.shape[0])]
    atomic_write_json(out / "meta.json", {**meta, "classnames": classnames, "source_file": file,
                                          "dtype": str(dtype).removeprefix("torch.")})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path)
    args = p.parse_args()
    for name in SETS:
        print(f"wrote {build(args.source, name)}")


if __name__ == "__main__":
    main()
