"""Cost of the nine OpenAI CLIP image towers: parameters, GFLOPs per image and measured time per image.

Only the architecture matters, so models are built with random weights (no download): this is what
`clipadapt backbones` reports as the cost axis (`clipadapt.eval.synergy_cost.model_cost`). FLOPs come from
torch.utils.flop_counter (a multiply-add counts 2 FLOPs; the numbers equal open_clip's docs/model_profile.csv)
on the meta device: no computation. With --time, each model is
also timed on --device (slow and noisy on a shared CPU).

    python benchmarks/synergy_cost.py                       # all nine: parameters and GFLOPs (seconds)
    python benchmarks/synergy_cost.py --time --models RN50,ViT-B-32 --device cuda --batch 32 --repeats 5

Results: benchmarks/results/synergy_cost.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from clipadapt.eval.synergy_cost import model_cost

RESULTS = Path(__file__).resolve().parent / "results" / "synergy_cost.json"
OPENAI = "RN50,RN101,RN50x4,RN50x16,RN50x64,ViT-B-32,ViT-B-16,ViT-L-14,ViT-L-14-336"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=OPENAI, help="comma-separated open_clip architectures")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--time", action="store_true", help="also time each model (slow on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    rows = []
    for arch in args.models.split(","):
        r = model_cost(f"{arch}@openai", device=args.device, measure_time=args.time, batch=args.batch,
                       repeats=args.repeats)
        rows.append(r)
        print(f"{arch:>14}: image params {r['params_image_M']:7.1f} M  {r['gflops_per_image']:7.1f} GFLOPs  "
              f"{r.get('ms_per_image', float('nan')):8.1f} ms/image, size {r['image_size'][0]}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"device": args.device, "batch": args.batch, "repeats": args.repeats,
                                   "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
