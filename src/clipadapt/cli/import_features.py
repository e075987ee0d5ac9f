"""`clipadapt import-features`: build a feature directory, a retrieval directory or a caption-scoring file from
.npy/.npz/.safetensors arrays computed elsewhere (docs/import-features.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.cli._common import refuse_unused
from clipadapt.cli._outputs import DIR, FILE, output_option
from clipadapt.errors import ConfigError

COMMAND = "import-features"
HELP = "build CLI inputs (feature dir, retrieval dir, caption embeddings) from .npy/.npz/.safetensors arrays"
KINDS = ("classification", "retrieval", "captions")
ARRAY = "FILE.npy, FILE.npz:KEY or FILE.safetensors:KEY, then optional [i] / [start:stop] row selections"
EXAMPLES = """
clipadapt import-features --out feats/ --classnames classes.txt --text text.npy \\
    --split test=test_img.npy:test_lab.npy --split unlabeled=pool_img.npy
clipadapt import-features --kind retrieval --out ret/ --split 'test=features.npy[0][100:500]:features.npy[1][100:500]'
"""


def _out_kind(args: argparse.Namespace, out: Path) -> str:
    """--out is a directory, written whole (cli/_outputs.py), except for --kind captions: one .safetensors file."""
    return FILE if args.kind == "captions" else DIR


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, default="classification",
                        help="what to build: classification = feature directory for eval/fewshot/dn-sweep/imo/search "
                             "(default); retrieval = directory for `retrieval` / `dn-sweep --embeddings`; captions = "
                             "safetensors file for `captions --embeddings`")
    output_option(parser.add_argument("--out", type=Path, required=True,
                                      help="directory to create (captions: a .safetensors file)"), _out_kind)
    parser.add_argument("--classnames", type=Path,
                        help="classification: JSON list or text file, one class per line (default: 'class 0', 'class 1', ...)")
    parser.add_argument("--text", help=f"classification: class text embeddings (C, D) or (C, T, D); {ARRAY}")
    parser.add_argument(
        "--split", action="append", default=[], metavar="NAME=IMAGES[:LABELS]",
        help="classification: a split (train/val/test/unlabeled); LABELS is an integer array, a text file (one "
             "label or class name per line) or 'range' (row i = class i). retrieval: NAME=IMAGES:CAPTIONS[:MAP], "
             "MAP = caption j's image row (array or 'range', the default). Repeat for several",
    )
    parser.add_argument("--labels", metavar="SPEC",
                        help="classification: labels of every split that names none, e.g. 'range' for one item per class")
    parser.add_argument("--image", help=f"captions: image embeddings (N, D); {ARRAY}")
    parser.add_argument("--caption", help="captions: caption embeddings (M, D)")
    parser.add_argument("--reference", help="captions: reference caption embeddings (K, D), optional")
    parser.add_argument("--model", help="model id recorded in meta.json")
    parser.add_argument("--dataset", help="dataset name recorded in meta.json")


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if not getattr(args, n)]
    if missing:
        raise ConfigError(f"--kind {args.kind} needs {' and '.join(missing)}")


# the options each --kind does not read: given with it, they would be silently ignored (issue 12, item 7)
UNUSED_BY_KIND = {
    "classification": ("--image", "--caption", "--reference"),
    "retrieval": ("--classnames", "--text", "--labels", "--image", "--caption", "--reference"),
    "captions": ("--classnames", "--text", "--split", "--labels", "--model", "--dataset"),
}


def run(args: argparse.Namespace) -> int:
    from clipadapt.features import importing

    refuse_unused(args, f"--kind {args.kind}", UNUSED_BY_KIND[args.kind], instead="the --kind that reads them")

    meta = {k: v for k, v in {"model": args.model, "dataset": args.dataset}.items() if v}
    if args.kind == "captions":
        _need(args, "image", "caption")
        tensors = importing.import_caption_embeddings(args.out, image=args.image, caption=args.caption,
                                                      reference=args.reference)
        print(f"wrote {args.out} (" + ", ".join(f"{k}: {tuple(t.shape)}" for k, t in tensors.items()) + ")")
        return 0
    _need(args, "split")
    if args.kind == "retrieval":
        sets = importing.import_retrieval(args.out, splits=args.split, meta=meta)
        summary = "; ".join(f"{name}: {tuple(rs.image.shape)} images, {tuple(rs.text.shape)} captions" for name, rs in sets.items())
        print(f"wrote {args.out} ({summary})")
        return 0
    _need(args, "text")
    names = importing.read_classnames(args.classnames) if args.classnames else None
    fs = importing.import_features(args.out, classnames=names, text=args.text, splits=args.split, labels=args.labels, meta=meta)
    summary = ", ".join(f"{name}: {s.n}×{s.dim}" for name, s in fs.splits.items())
    print(f"wrote {args.out} ({fs.num_classes} classes; {summary})")
    return 0
