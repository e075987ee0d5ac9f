"""Adapter training throughput: seconds per optimisation step for supervised and DINO modes.

    PYTHONPATH=src python benchmarks/adapter_train.py [--models clipadapt-test-tiny-vit,ViT-B-16] [--batch 8]
        [--steps 3] [--local-crops 10] [--device cpu]

Random-init models (no weights needed: the cost does not depend on the weights), generated images, the real
training loop (`train_adapters`) with its data pipeline. Per-step time = (time of a (1+steps)-step run - time of a
1-step run) / steps. Writes benchmarks/results/adapter_train.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clipadapt.adapters import count_adapter_parameters
from clipadapt.adapters.training import AdapterTrainConfig, train_adapters
from clipadapt.report import markdown_table, write_json


class NoiseImages:
    """`n` random RGB images of `size` px, two classes."""

    classnames = ["a", "b"]

    def __init__(self, n: int, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
        self.labels = [i % 2 for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]



def time_mode(model_name: str, mode: str, args: argparse.Namespace) -> dict:
    import open_clip

    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(model_name).to(args.device).eval()
    size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
    data = NoiseImages(args.batch * (args.steps + 1), size)
    extra = dict(local_crops=args.local_crops) if mode == "selfsup" else {}
    times = []
    for steps in (1, args.steps + 1):  # fresh runs; the difference is `args.steps` steps without setup/saving
        with tempfile.TemporaryDirectory() as out:
            config = AdapterTrainConfig(mode=mode, batch_size=args.batch, max_steps=steps, epochs=1,
                                        save_every=10**6, **extra)
            t = time.perf_counter()
            train_adapters(model, data, out, config=config, progress=False)
            times.append(time.perf_counter() - t)
    per_step = (times[1] - times[0]) / args.steps
    return {"model": model_name, "mode": mode, "batch": args.batch,
            "views": 2 + args.local_crops if mode == "selfsup" else 1,
            "image_size": size, "adapter_params": count_adapter_parameters(model), "timed_steps": args.steps,
            "s_per_step": per_step, "images_per_s": args.batch / per_step,
            "s_one_step_run_with_setup_and_saving": times[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="clipadapt-test-tiny-vit,ViT-B-16")
    ap.add_argument("--modes", default="supervised,selfsup")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--local-crops", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "adapter_train.json")
    args = ap.parse_args()
    rows = []
    for model_name in args.models.split(","):
        for mode in args.modes.split(","):
            rows.append(time_mode(model_name, mode, args))
            print(markdown_table(rows[-1:], digits=3), flush=True)
    write_json(args.out, {"benchmark": "adapter_train", "device": args.device, "torch_threads": torch.get_num_threads(),
                          "note": "s_per_step = (T(1 + steps) - T(1)) / steps over fresh runs: excludes setup and "
                                  "checkpoint writes", "rows": rows})
    print(markdown_table(rows, digits=3))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
