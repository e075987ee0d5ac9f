"""`clipadapt models`: the architectures and pretrained tags a model id can name (open_clip's registry)."""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

from clipadapt.cli._outputs import FILE, output_option

COMMAND = "models"
HELP = "list model architectures and pretrained tags (use as --model ARCH@TAG)"
EXAMPLES = """
clipadapt models ViT-B           # architectures whose name contains 'vit-b', with their pretrained tags
clipadapt models 'RN*' --out models.csv
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*",
                        help="glob on the architecture name, e.g. 'ViT-B*'; without * ? [ a case-insensitive substring")
    output_option(parser.add_argument("--out", type=Path, help="write the table (.json, .csv or .md)"), FILE)


def arch_matches(arch: str, pattern: str) -> bool:
    """A glob when the pattern has glob characters ('ViT-B*'), else a substring ('vit-b', 'RN50'), ignoring case."""
    arch, pattern = arch.lower(), pattern.lower()
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatch(arch, pattern)
    return pattern in arch


def run(args: argparse.Namespace) -> int:
    from clipadapt.encoders.registry import model_table  # open_clip / torchvision: only when listing
    from clipadapt.report.tables import markdown_table, write_table

    rows = [r for r in model_table() if arch_matches(r["arch"], args.pattern)]
    print(markdown_table(rows, columns=["arch", "tags", "example"]))
    print(f"\n{len(rows)} architectures; model ids: ARCH@TAG, ARCH@/path/to/checkpoint.pt, hf-hub:ORG/REPO (open_clip "
          "format); transformers models: hf:ORG/REPO[@REVISION] or hf:/path/to/dir (pip install 'clipadapt[hf]')")
    if args.out:
        print(f"wrote {write_table(args.out, rows)}")
    return 0
