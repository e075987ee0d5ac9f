"""`clipadapt robustness`: few-shot caches built on ImageNet, scored on ImageNet-V2/-Sketch/-A/-R (200-class logits
restricted for -A/-R)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipadapt.argtypes import COUNT, COUNTS, SEEDS
from clipadapt.cli._common import add_verify_argument, comma_strings, fewshot_config
from clipadapt.cli._conventions import add_out_argument, path_provenance, write_results
from clipadapt.constants import GRID_PRESETS, TIE_BREAKS
from clipadapt.errors import ConfigError

COMMAND = "robustness"
HELP = "few-shot cache on ImageNet, tested on ImageNet-V2/-Sketch/-A/-R (feature directories)"
EXAMPLES = """
clipadapt robustness --features feats/imagenet --variant imagenet_a=feats/imagenet-a \
--variant imagenet_r=feats/imagenet-r --out runs/robust
clipadapt robustness --features feats/imagenet --adapted-features feats/imagenet-adapted \
--variant imagenet_v2=feats/v2 --adapted-variant imagenet_v2=feats/v2-adapted --methods tip,tip++ --out runs/robust++
"""
VARIANT_NAMES = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def _named_dir(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or name not in VARIANT_NAMES:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR with NAME one of {', '.join(VARIANT_NAMES)}, got {text!r}")
    return name, Path(path)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--features", type=Path, required=True,
                        help="ImageNet feature directory (train and test splits)")
    parser.add_argument("--adapted-features", type=Path,
                        help="the same ImageNet images through the IMO adapter (tip++/tipx++)")
    parser.add_argument("--variant", type=_named_dir, action="append", default=[], metavar="NAME=DIR",
                        help="a variant's feature directory (test split), NAME one of " + ", ".join(VARIANT_NAMES))
    parser.add_argument("--adapted-variant", type=_named_dir, action="append", default=[], metavar="NAME=DIR",
                        help="a variant's adapted feature directory (for tip++/tipx++)")
    parser.add_argument("--shots", type=COUNTS, default=[1, 2, 4, 8, 16])
    parser.add_argument("--seeds", type=SEEDS, default=[1, 2, 3])
    parser.add_argument("--methods", type=comma_strings, default=["zeroshot", "tip", "tipx"])
    parser.add_argument("--val-from-train", type=COUNT, default=4, metavar="N",
                        help="validate on N ImageNet train images per class (default 4; CoOp's ImageNet val is test)")
    parser.add_argument("--grid", action="append", default=[], metavar="FAMILY.PARAM=SPEC", help="as in `fewshot`")
    parser.add_argument("--grid-preset", choices=GRID_PRESETS, default=None,
                        help="a paper's grids and tie order, as in `fewshot`")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default="grid-order", help="as in `fewshot`")
    parser.add_argument("--tipf-epochs", type=COUNT, default=20)
    parser.add_argument("--allow-fewer", action="store_true")
    add_verify_argument(parser)
    add_out_argument(parser, writes="runs.csv, summary.csv, summary.md", required=True)


def run(args: argparse.Namespace) -> int:
    from clipadapt.eval.fewshot import DirectorySource
    from clipadapt.eval.robustness import Variant, run_robustness, variant_class_indices
    from clipadapt.features.io import load_feature_dir
    from clipadapt.report.tables import markdown_table, write_table

    if not args.variant:
        raise ConfigError("give at least one --variant NAME=DIR")
    config = fewshot_config(args)
    adapted = load_feature_dir(args.adapted_features) if args.adapted_features else None
    source = DirectorySource(load_feature_dir(args.features), adapted)
    adapted_variants = dict(args.adapted_variant)
    variants = []
    for name, path in args.variant:
        a = load_feature_dir(adapted_variants[name],
                             splits=["test"]).split("test") if name in adapted_variants else None
        variants.append(Variant(name, load_feature_dir(path, splits=["test"]).split("test"),
                                variant_class_indices(name), a))
    results = run_robustness(source, config, variants)
    inputs = {"features": args.features, "adapted_features": args.adapted_features,
              **dict(args.variant), **{f"{n} (adapted)": p for n, p in args.adapted_variant}}
    write_results(args.out / "results.json", {"config": vars(config), "features": source.describe(),
                                              "variants": {n: str(p) for n, p in args.variant}, **results},
                  path_provenance(args, inputs, model=source.meta.get("model")))
    write_table(args.out / "runs.csv", [{**r, "hyperparameters": json.dumps(r["hyperparameters"])}
                                        for r in results["runs"]])
    write_table(args.out / "summary.csv", results["summary"])
    write_table(args.out / "summary.md", results["summary"])
    print(markdown_table(results["summary"]), end="")
    print(f"wrote {args.out}/results.json, runs.csv, summary.csv, summary.md")
    return 0
