"""`clipadapt datasets`: the dataset registry (CoOp datasets, ImageNet variants, torchvision wrappers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.builtin import list_builtins
from clipadapt.cli._outputs import FILE, output_option

COMMAND = "datasets"
HELP = ("list the dataset registry (spec, kind, number of classes, splits, templates; docs/datasets.md) and the "
        "built-in feature sets usable as --features builtin:NAME")
EXAMPLES = """
clipadapt datasets --kind coop
clipadapt datasets --templates imagenet7
clipadapt datasets --kind builtin
clipadapt extract --model ViT-B-32@openai --dataset 'wds:/data/cars/{split}/shard-{000..009}.tar' --split test
clipadapt extract --model ViT-B-32@openai --dataset hf:/data/cifar10_saved --split test
"""
SPEC_KINDS = """dataset spec kinds (--dataset SPEC; docs/datasets.md):
  coop:NAME:ROOT            CoOp's datasets in CoOp's layout (listed by this command)
  imagefolder:ROOT          ROOT/[<split>/]<class>/<images>
  csv:FILE | csv:DIR        path,label[,classname] rows; DIR/<split>.csv
  torchvision:NAME:ROOT     torchvision datasets (listed by this command)
  wds:PATTERN               WebDataset tar shards, e.g. wds:/data/cars/{split}/shard-{000..009}.tar ({split} = the
                            split); ?image=jpg;png (member extensions) &label=cls &classnames=FILE; class names from
                            classnames.txt beside the shards or one folder up (pip install 'clipadapt[wds]')
  hf:NAME_OR_PATH[:SPLIT]   Hugging Face datasets: a save_to_disk folder, a folder of data files, or a dataset in
                            the local HF cache; ?image=COLUMN&label=COLUMN; class names from the ClassLabel feature
                            (pip install 'clipadapt[hf-datasets]')"""
COLUMNS = ["spec", "classes", "splits", "split_file", "templates", "template"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = f"{HELP}\n\n{SPEC_KINDS}"
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
    builtins = list_builtins() if args.kind in (None, "builtin") else []
    rows = [] if args.kind == "builtin" else [info.summary() for info in list_datasets(args.kind)]
    if rows:
        print(markdown_table(rows, COLUMNS), end="")
        print("\nalso: imagefolder:ROOT, csv:FILE_OR_DIR, wds:PATTERN (WebDataset shards) and "
              "hf:NAME_OR_PATH[:SPLIT] (Hugging Face datasets) for your own data (docs/datasets.md)")
    if builtins:
        print(("\n" if rows else "") + "built-in feature sets (no images or weights needed; --features / --embeddings "
              "builtin:NAME, docs/builtin-data.md):")
        print(markdown_table(builtins, ["spec", "model", "splits", "what"]), end="")
    rows = rows or builtins
    if args.out:
        print(f"wrote {write_table(args.out, rows)}")
    return 0
