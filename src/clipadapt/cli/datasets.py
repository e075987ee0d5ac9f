"""`clipadapt datasets`: the dataset registry (CoOp datasets, ImageNet variants, torchvision wrappers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.cli._outputs import FILE, output_option

COMMAND = "datasets"
HELP = ("list the dataset registry (spec, kind, number of classes, splits, templates; docs/datasets.md) and the "
        "built-in feature sets usable as --features builtin:NAME")
EXAMPLES = """
clipadapt datasets --kind coop
clipadapt datasets --templates imagenet7
clipadapt datasets --kind builtin
"""
COLUMNS = ["spec", "classes", "splits", "split_file", "templates", "template"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=["coop", "torchvision", "builtin"], help="only this spec kind")
    parser.add_argument("--templates", metavar="NAME", help="print the prompt templates of a dataset or template set")
    output_option(parser.add_argument("--out", type=Path, help="also write the table (.csv, .md or .json)"), FILE)


def run(args: argparse.Namespace) -> int:
    from clipadapt.data import get_templates, list_datasets
    from clipadapt.report import markdown_table, write_table

    if args.templates:
        for template in get_templates(args.templates):
            print(template)
        return 0
    from clipadapt.builtin import list_builtins

    builtins = list_builtins() if args.kind in (None, "builtin") else []
    rows = [] if args.kind == "builtin" else [info.summary() for info in list_datasets(args.kind)]
    if rows:
        print(markdown_table(rows, COLUMNS), end="")
        print("\nalso: imagefolder:ROOT and csv:FILE_OR_DIR for your own data (docs/datasets.md)")
    if builtins:
        print(("\n" if rows else "") + "built-in feature sets (no images or weights needed; --features / --embeddings "
              "builtin:NAME, docs/builtin-data.md):")
        print(markdown_table(builtins, ["spec", "model", "splits", "what"]), end="")
    rows = rows or builtins
    if args.out:
        write_table(args.out, rows)
        print(f"wrote {args.out}")
    return 0
