"""`clipadapt imo`: the intra-modal-overlap metric (docs/methods.md §5) of a split, with a histogram plot."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clipadapt.argtypes import COUNT, NON_NEGATIVE_INT, SEED
from clipadapt.cli._common import add_feature_source_arguments, load_features_from_args, refuse_extraction_inputs
from clipadapt.cli._conventions import RESULTS_FILE, add_out_argument, featureset_inputs, run_provenance, write_results
from clipadapt.errors import ConfigError

if TYPE_CHECKING:  # torch-backed: only for annotations, so building the parser stays torch-free
    from clipadapt.features import FeatureSet

COMMAND = "imo"
HELP = "intra-modal overlap of same- vs different-class image similarities (JSON, markdown, histogram PNG)"
EXAMPLES = """
clipadapt imo --features feats/ --adapted-features feats-adapted/ --split test --out runs/imo
clipadapt imo --model ViT-B-16@openai --dataset coop:eurosat:/data/eurosat --adapter adapters/vitb16 --out runs/imo
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_feature_source_arguments(parser)
    parser.add_argument("--adapter", type=Path, help="with --model/--dataset: also measure the features of this "
                        "IMO adapter checkpoint (directory or .safetensors) beside the original ones")
    parser.add_argument("--adapted-features", type=Path, help="with --features: a second feature directory "
                        "(e.g. extracted with an adapter) to compare against")
    parser.add_argument("--split", default="test", help="split to measure (default: test)")
    parser.add_argument("--bins", type=COUNT, default=100, help="histogram bins over [-1, 1] (default: 100)")
    parser.add_argument("--max-pairs", type=NON_NEGATIVE_INT, default=20_000_000,
                        help="sample this many pairs (seeded) when the split has more; 0 = always exact "
                        "(default: 20,000,000)")
    parser.add_argument("--sample", choices=["items", "pairs"], default="items",
                        help="how to sample when over --max-pairs: all pairs among a random subset of items "
                        "(fast, default) or independent uniform pairs")
    parser.add_argument("--seed", type=SEED, default=0, help="pair-sampling seed (default: 0)")
    add_out_argument(parser, required=True, writes="imo.md, imo_hist.png")


def _feature_sets(args: argparse.Namespace) -> dict[str, FeatureSet]:
    """{"original": ..., ["adapted": ...]} from the arguments."""
    from clipadapt.features.io import load_feature_dir

    if args.features:
        if args.adapter:
            raise ConfigError("--adapter needs --model/--dataset (features are extracted with it); "
                              "with --features give --adapted-features DIR")
        refuse_extraction_inputs(args)
        sets = {"original": load_feature_dir(args.features, splits=[args.split])}
        if args.adapted_features:
            sets["adapted"] = load_feature_dir(args.adapted_features, splits=[args.split])
        return sets
    if args.adapted_features:
        raise ConfigError("--adapted-features goes with --features DIR")
    base = argparse.Namespace(**{**vars(args), "adapter": None, "seed": 0})  # --seed is the pair-sampling seed
    sets = {"original": load_features_from_args(base, splits=[args.split])}
    if args.adapter:
        from clipadapt.adapters.imo_adapter import checkpoint_paths

        weights, _ = checkpoint_paths(args.adapter)
        sets["adapted"] = load_features_from_args(argparse.Namespace(**{**vars(args), "adapter": weights, "seed": 0}),
                                                  splits=[args.split])
    return sets


def _provenance(args: argparse.Namespace, sets: dict[str, FeatureSet]) -> dict:
    inputs = {name: featureset_inputs(fs) for name, fs in sets.items()}
    return run_provenance(args, model=inputs["original"][0], data={k: v[1] for k, v in inputs.items()},
                          fingerprint={k: v[2] for k, v in inputs.items()})


def run(args: argparse.Namespace) -> int:
    from clipadapt.adapters import imo_overlap
    from clipadapt.adapters.variance import feature_variance
    from clipadapt.fileio import atomic_write_bytes
    from clipadapt.report import markdown_table
    from clipadapt.report.imo_plot import plot_imo_histograms

    sets = _feature_sets(args)
    max_pairs = args.max_pairs or None
    results, rows, variance = {}, [], {}
    for name, fs in sets.items():
        split = fs.split(args.split)
        r = imo_overlap(split.image, split.labels(args.split), bins=args.bins, max_pairs=max_pairs, seed=args.seed,
                        sample=args.sample)
        results[name] = r
        variance[name] = feature_variance(split.image)
        rows.append({"features": name, "overlap": r.overlap, "same_mean": r.same_mean, "diff_mean": r.diff_mean,
                     "n_same": r.n_same, "n_diff": r.n_diff, "sampled": r.sampled,
                     "variance": variance[name]["normalised"]["mean"]})
    report = {
        "split": args.split,
        "bins": args.bins,
        "max_pairs": max_pairs,
        "seed": args.seed,
        "sample": args.sample,
        "results": {name: {**r.to_dict(), "features": sets[name].describe(), "variance": variance[name]}
                    for name, r in results.items()},
        "variance_note": "per-dimension variance of the split's image features (adapters/variance.py); "
                         "'variance' in the table = mean over dimensions of the L2-normalised features",
    }
    if "adapted" in results:
        report["overlap_change"] = results["adapted"].overlap - results["original"].overlap
    write_results(args.out / RESULTS_FILE, report, _provenance(args, sets))
    table = markdown_table(rows, digits=4)
    atomic_write_bytes(args.out / "imo.md", (f"# IMO overlap, split {args.split}\n\n{table}\n").encode())
    model = sets["original"].meta.get("model", "?")
    plot_imo_histograms(results, args.out / "imo_hist.png", title=f"IMO: {model}, split {args.split}")
    print(table)
    for name, r in results.items():
        if r.sampled:
            how = "among a random subset of items" if r.sample == "items" else "drawn independently"
            print(f"{name}: {r.n_same + r.n_diff:,} of {r.total_pairs:,} pairs sampled ({how}, seed {r.seed})")
    print(f"wrote {args.out / 'imo.md'}, {args.out / 'imo_hist.png'}")
    return 0
