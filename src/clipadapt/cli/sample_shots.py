"""`clipadapt sample-shots`: seeded K-shot index lists of a dataset split, one JSON per (shots, seed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.argtypes import COUNTS, SEEDS
from clipadapt.cli._conventions import run_provenance
from clipadapt.cli._outputs import DIR, output_option

COMMAND = "sample-shots"
HELP = "write reproducible few-shot index lists (DIR/shots{K}_seed{S}.json) for a dataset split"
EXAMPLES = """
clipadapt sample-shots --dataset coop:oxford_pets:/data/pets --shots 1,2,4,8,16 --seeds 1,2,3 --out shots/
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset spec, e.g. coop:oxford_pets:/data/oxford_pets")
    parser.add_argument("--split", default="train", help="split to sample from (default: train)")
    parser.add_argument("--shots", type=COUNTS, default=[1, 2, 4, 8, 16], help="comma-separated K (default 1,2,4,8,16)")
    parser.add_argument("--seeds", type=SEEDS, default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    output_option(parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                                      help="output directory: shots<K>_seed<S>.json per (K, seed), each with its "
                                           "provenance"), DIR)
    parser.add_argument("--allow-fewer", action="store_true", help="take all items of classes with fewer than K")
    parser.add_argument("--download", action="store_true", help="let torchvision datasets download")


def run(args: argparse.Namespace) -> int:
    from clipadapt.data import build_dataset, sample_few_shot, save_indices
    from clipadapt.data.fewshot import SAMPLER

    ds = build_dataset(args.dataset, args.split, download=args.download)
    fingerprint = ds.fingerprint()
    provenance = run_provenance(args, data=f"{args.dataset} ({args.split})",
                                fingerprint=f"dataset-sha256:{fingerprint}")
    for shots in args.shots:
        for seed in args.seeds:
            indices = sample_few_shot(ds.labels, shots, seed, classnames=ds.classnames, allow_fewer=args.allow_fewer)
            meta = {
                "dataset": ds.name,
                "spec": args.dataset,
                "kind": ds.kind,
                "split": ds.split,
                "fingerprint": fingerprint,
                "num_items": len(ds),
                "num_classes": ds.num_classes,
                "shots": shots,
                "seed": seed,
                "sampler": SAMPLER,
                "labels": [ds.labels[i] for i in indices],
                "provenance": provenance,
            }
            path = save_indices(args.out / f"shots{shots}_seed{seed}.json", indices, meta=meta)
            print(f"wrote {path} ({len(indices)} items)")
    return 0
