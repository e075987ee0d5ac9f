"""How long building, fingerprinting, decoding and few-shot sampling take (CPU, synthetic data).

    PYTHONPATH=src python benchmarks/data_build.py [--classes 20 --per-class 100 --labels 1281167]

Writes benchmarks/results/data_build.json. The image folder is generated in a temporary directory (small PNGs), so
decode times are a lower bound for real JPEGs; the sampler runs on an ImageNet-sized synthetic label list.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from clipadapt.data import build_dataset, sample_few_shot
from clipadapt.report import write_json


def make_folder(root: Path, classes: int, per_class: int, side: int) -> None:
    rng = np.random.default_rng(0)
    for c in tqdm(range(classes), desc="writing images"):
        folder = root / "train" / f"class_{c:03d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--labels", type=int, default=1_281_167,
                        help="size of the synthetic label list for the sampler")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/data_build.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root, args.classes, args.per_class, args.side)
        ds, t_build = timed(lambda: build_dataset(f"imagefolder:{root}", "train"))
        _, t_fp = timed(ds.fingerprint)
        _, t_decode = timed(lambda: [ds[i] for i in tqdm(range(len(ds)), desc="decoding")])
    labels = np.random.default_rng(0).integers(0, 1000, args.labels).tolist()
    _, t_sample = timed(lambda: sample_few_shot(labels, 16, seed=1))
    result = {
        "images": len(ds),
        "image_side": args.side,
        "build_s": t_build,
        "fingerprint_s": t_fp,
        "decode_images_per_s": len(ds) / t_decode,
        "sampler_labels": args.labels,
        "sampler_classes": 1000,
        "sampler_16shot_s": t_sample,
    }
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
