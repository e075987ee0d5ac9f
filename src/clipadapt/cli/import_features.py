"""`clipadapt import-features`: make a feature directory from .npy files computed elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "import-features"
HELP = "build a feature directory (docs/feature-format.md) from .npy arrays"
EXAMPLES = """
clipadapt import-features --out feats/ --classnames classes.txt --text text.npy \\
    --split train=train_img.npy:train_lab.npy --split test=test_img.npy:test_lab.npy
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="feature directory to create")
    parser.add_argument("--classnames", type=Path, required=True, help="JSON list or text file, one class per line")
    parser.add_argument("--text", required=True, help="class text embeddings .npy, (C, D) or (C, T, D); FILE.npy[i] picks entry i")
    parser.add_argument(
        "--split", action="append", default=[], required=True, metavar="NAME=IMAGES.npy[:LABELS.npy]",
        help="a split (train/val/test/unlabeled); repeat for several",
    )
    parser.add_argument("--model", help="model id recorded in meta.json")
    parser.add_argument("--dataset", help="dataset name recorded in meta.json")


def run(args: argparse.Namespace) -> int:
    from clipadapt.features.importing import import_features, read_classnames

    meta = {k: v for k, v in {"model": args.model, "dataset": args.dataset}.items() if v}
    fs = import_features(args.out, classnames=read_classnames(args.classnames), text=args.text, splits=args.split, meta=meta)
    summary = ", ".join(f"{name}: {s.n}×{s.dim}" for name, s in fs.splits.items())
    print(f"wrote {args.out} ({fs.num_classes} classes; {summary})")
    return 0
