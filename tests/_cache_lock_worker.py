"""A process filling the feature cache, for the inter-process lock test: it records every encoder forward it
runs (pid, what, rows) in a marker file, and encodes slowly so that a second process arrives mid-encoding."""

from __future__ import annotations

import os
import time
from pathlib import Path


def fill_cache(cache_dir: str, image_paths: list[str], marker: str, out: str, start) -> None:
    """Wait at `start` (a multiprocessing Barrier), then get_feature_set the test split; save what it returned."""
    import torch

    torch.set_num_threads(1)
    from _imagedata import TinyImageDataset

    import clipadapt.encoders
    from clipadapt.features.io import atomic_save_tensors
    from clipadapt.features.pipeline import get_feature_set

    real_load = clipadapt.encoders.load_encoder

    def record(what: str, rows: int) -> None:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} {what} {rows}\n")

    def recording_load(*args, **kwargs):
        enc = real_load(*args, **kwargs)
        images, texts = enc.encode_images, enc.encode_texts

        def encode_images(pixels):
            record("images", pixels.shape[0])
            time.sleep(0.3)  # hold the entry long enough for the other process to queue on its lock
            return images(pixels)

        def encode_texts(batch):
            record("texts", len(batch))
            return texts(batch)

        enc.encode_images, enc.encode_texts = encode_images, encode_texts
        return enc

    clipadapt.encoders.load_encoder = recording_load
    labels = [i % 3 for i in range(len(image_paths))]
    dataset = TinyImageDataset([Path(p) for p in image_paths], labels)
    start.wait()
    fs = get_feature_set("clipadapt-test-tiny-vit", {"test": dataset}, ["test"], cache_dir=cache_dir, device="cpu",
                         batch_size=2, progress=False)
    atomic_save_tensors(Path(out), {"image": fs.split("test").image, "text": fs.text})
