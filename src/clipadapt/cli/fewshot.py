"""`clipadapt fewshot`: the few-shot protocol for cache methods (Tip-Adapter, -F, Tip-X, TA++/TX++)."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from clipadapt.argtypes import COUNT, COUNTS, SEEDS
from clipadapt.cli._common import (
    add_feature_source_arguments,
    comma_strings,
    extract_options,
    fewshot_config,
    refuse_extraction_inputs,
)
from clipadapt.cli._conventions import add_out_argument, dataset_provenance, path_provenance, vs_baseline
from clipadapt.constants import GRID_PRESETS, TIE_BREAKS
from clipadapt.errors import ConfigError

if TYPE_CHECKING:  # torch-backed: imported where used, so building the parser stays torch-free
    from clipadapt.eval.fewshot import FewShotConfig

COMMAND = "fewshot"
HELP = ("few-shot protocol: sample K shots per class × seeds, search on val, report test accuracy (Tip-Adapter, "
        "Tip-X, ...)")
EXAMPLES = """
clipadapt fewshot --features feats/ --shots 1,2,4,8,16 --seeds 1,2,3 --methods zeroshot,tip,tip-f,tipx --out runs/pets
clipadapt fewshot --model ViT-B-16@openai --dataset coop:eurosat:/data/eurosat --methods tip,tip++ \\
    --adapter adapters/vitb16 --out runs/eurosat      # adapters/vitb16: from `clipadapt adapter train`
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_feature_source_arguments(parser)
    parser.add_argument("--shots", type=COUNTS, default=[1, 2, 4, 8, 16], help="shots per class (default 1,2,4,8,16)")
    parser.add_argument("--seeds", type=SEEDS, default=[1, 2, 3], help="sampling seeds (default 1,2,3)")
    parser.add_argument("--methods", type=comma_strings, default=["zeroshot", "tip", "tip-f", "tipx"],
                        help="comma list of zeroshot, tip, tip-f, tipx, tip++, tipx++ (default "
                             "zeroshot,tip,tip-f,tipx)")
    parser.add_argument("--views", type=COUNT, default=10,
                        help="augmented views per cache image with --model/--dataset (default 10); --features uses its "
                             "train split as is")
    adapted = parser.add_mutually_exclusive_group()
    adapted.add_argument("--adapter", type=Path, help="IMO adapter checkpoint for tip++/tipx++ (with "
                                                      "--model/--dataset)")
    adapted.add_argument("--adapted-features", type=Path,
                         help="feature directory of the same images through the IMO adapter, for tip++/tipx++ (with "
                              "--features)")
    parser.add_argument("--val-from-train", type=COUNT, default=None, metavar="N",
                        help="validate on N train images per class (per seed, disjoint from that seed's shots; "
                             "listed in indices/val_seed<S>.json) instead of the 'val' split — needed when val is the "
                             "test set (CoOp's ImageNet) or absent")
    parser.add_argument("--allow-fewer", action="store_true",
                        help="classes with fewer training images than --shots use all they have")
    parser.add_argument("--grid", action="append", default=[], metavar="FAMILY.PARAM=SPEC",
                        help="override a search grid, e.g. tip.beta=0.1:7:50 or tipx.gamma=0.5,1,2 "
                             "(FAMILY tip = tip/tip-f/tip++, tipx = tipx/tipx++; SPEC LOW:HIGH:N or a list); "
                             "repeatable")
    parser.add_argument("--grid-preset", choices=GRID_PRESETS, default=None,
                        help="a paper's search grids and tie order: tip-adapter (β loop outermost: ties keep the "
                             "smallest β), sus-x, imo (linspace grids with 0, α outermost); --grid then overrides "
                             "single axes. Default: clipadapt's grids, α outermost")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default="grid-order",
                        help="which of equally good validation grid points is kept: grid-order (first in loop order, "
                             "the papers' rule; default) or centre (centre of the largest tied region)")
    parser.add_argument("--tipf-epochs", type=COUNT, default=20, help="Tip-Adapter-F training epochs (default 20)")
    parser.add_argument("--chunk-size", type=COUNT, default=None,
                        help="validation rows per search chunk (default: fit ~128 MiB)")
    add_out_argument(parser, required=True,
                     writes="runs.csv, summary.csv, summary.md, accuracy_vs_shots.png, indices/")


def build_source(args: argparse.Namespace):
    """DirectorySource for --features, PipelineSource for --model/--dataset."""
    from clipadapt.eval.fewshot import VAL_FIX, DirectorySource, PipelineSource
    from clipadapt.eval.protocol import check_disjoint
    from clipadapt.features.io import load_feature_dir

    if args.features:
        if args.adapter:
            raise ConfigError("--adapter needs --model/--dataset; with --features give --adapted-features DIR")
        refuse_extraction_inputs(args)
        adapted = load_feature_dir(args.adapted_features) if args.adapted_features else None
        return DirectorySource(load_feature_dir(args.features), adapted)
    if args.model and args.dataset:
        if args.adapted_features:
            raise ConfigError("--adapted-features goes with --features; with --model/--dataset give --adapter CKPT")
        from clipadapt.data import build_dataset
        from clipadapt.features.pipeline import get_feature_set  # heavy imports only when encoding

        use_val = args.val_from_train is None
        if use_val:  # fail before encoding anything when 'val' shares images with 'test'
            check_disjoint(build_dataset(args.dataset, "val"), build_dataset(args.dataset, "test"),
                           selection_name="val",
                           dataset=args.dataset, purpose="the hyper-parameter search", fix=VAL_FIX)
        fetch = functools.partial(get_feature_set, args.model, args.dataset, options=extract_options(args),
                                  cache_dir=args.cache_dir, device=args.device)
        return PipelineSource(fetch, views=args.views, adapter=args.adapter,
                              train_dataset=build_dataset(args.dataset, "train"), use_val=use_val)
    raise ConfigError("give --features DIR, or both --model and --dataset")


def run_protocol(args: argparse.Namespace, *, progress: bool = True) -> tuple[dict, dict]:
    """Run the protocol and write results.json under --out: (results, the features' description). Also what a
    `suite` cell runs (without the tables and the plot), so a cell computes what `fewshot` computes."""
    from clipadapt.eval.fewshot import run_fewshot
    from clipadapt.report.tables import write_json

    config = config_from_args(args)
    source = build_source(args)
    results = run_fewshot(source, config, index_dir=args.out / "indices", device=args.device, progress=progress)
    source_info = source.describe()
    write_json(args.out / "results.json", {"config": vars(config), "features": source_info, **results,
                                           "provenance": _provenance(args, source)})
    return results, source_info


def write_tables(out: Path, results: dict, source_info: dict) -> None:
    """runs.csv, summary.csv, summary.md and accuracy_vs_shots.png under `out`."""
    from clipadapt.eval.fewshot import summary_pivot
    from clipadapt.report.plots import line_plot
    from clipadapt.report.tables import write_table

    write_table(out / "runs.csv", [{**r, "hyperparameters": json.dumps(r["hyperparameters"])} for r in results["runs"]])
    write_table(out / "summary.csv", results["summary"])
    write_table(out / "summary.md", summary_pivot(results["summary"]))
    line_plot(results["summary"], "shots", "test_top1_mean", "method", out / "accuracy_vs_shots.png",
              yerr="test_top1_std", ylabel="test top-1 (%)", xlabel="shots per class", logx=True,
              title=f"{source_info.get('dataset') or ''} {source_info.get('model') or ''}".strip() or None)


def baseline_lines(summary: list[dict]) -> list[str]:
    """'tip 16-shot: test top1 70.00 (zero-shot 60.00, +10.00)' per method at the largest shot count."""
    if not summary:
        return []
    top = max(r["shots"] for r in summary)
    zero = next((r["test_top1_mean"] for r in summary if r["method"] == "zeroshot" and r["shots"] == top), None)
    return [f"{r['method']} {top}-shot: test top1 {vs_baseline(r['test_top1_mean'], zero, 'zero-shot')}"
            for r in summary if r["shots"] == top and r["method"] != "zeroshot"]


def _provenance(args: argparse.Namespace, source) -> dict:
    if args.features:
        return path_provenance(args, {"features": args.features, "adapted_features": args.adapted_features},
                               model=source.meta.get("model"))
    return dataset_provenance(args, model=args.model, spec=args.dataset,
                              splits=["train", "test"] + (["val"] if args.val_from_train is None else []))


def config_from_args(args: argparse.Namespace) -> FewShotConfig:
    """The FewShotConfig of `fewshot`'s arguments; tip++/tipx++ need adapted features."""
    config = fewshot_config(args)
    if config.needs_adapted and not (args.adapter or args.adapted_features):
        raise ConfigError("tip++/tipx++ need --adapted-features DIR (with --features) or --adapter CKPT")
    return config


def run(args: argparse.Namespace) -> int:
    from clipadapt.eval.fewshot import summary_pivot
    from clipadapt.report.tables import markdown_table

    results, source_info = run_protocol(args)
    write_tables(args.out, results, source_info)
    print(markdown_table(summary_pivot(results["summary"])), end="")
    for line in baseline_lines(results["summary"]):
        print(line)
    print(f"wrote {args.out}/results.json, summary.csv, summary.md, runs.csv, accuracy_vs_shots.png, indices/")
    return 0
