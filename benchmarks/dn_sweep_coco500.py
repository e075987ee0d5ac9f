"""DN recall vs λ and vs unlabeled samples on the real coco500 CLIP ViT-B/16 embeddings (packaged builtin:coco500).

100 random pairs are held out for the means, 400 evaluated; writes benchmarks/results/dn_sweep_coco500/
(results.json, sweep.csv, sweep.md, sweep.png) through `clipadapt dn-sweep`.

    PYTHONPATH=src python benchmarks/dn_sweep_coco500.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from clipadapt.builtin import load_pairs
from clipadapt.cli import main as cli
from clipadapt.features.retrieval_dir import RetrievalSet, save_retrieval_split

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dn_sweep_coco500")
    args = p.parse_args()
    image, caption = load_pairs("coco500")  # all 500 pairs; the sweep holds 100 out at random
    with tempfile.TemporaryDirectory() as tmp:
        rs = RetrievalSet(image, caption, torch.arange(image.shape[0]),
                          meta={"model": "ViT-B-16@openai", "dataset": "coco500-clip-vitb16"})
        save_retrieval_split(tmp, "test", rs)
        raise SystemExit(cli(["dn-sweep", "--embeddings", tmp, "--dn-source", "holdout", "--holdout", "100",
                              "--lambdas", "0,0.1,0.25,0.5,0.75,1", "--samples", "1,2,5,10,20,50,100",
                              "--seeds", str(args.seeds), "--out", str(args.out)]))


if __name__ == "__main__":
    main()
