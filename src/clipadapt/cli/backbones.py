"""`clipadapt backbones`: evaluate several backbones on the same images, their synergy and their combinations."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipadapt.argtypes import COUNT, NON_NEGATIVES, POSITIVE, PROBABILITIES, SEED
from clipadapt.cli._common import add_verify_argument, comma_strings, extract_options, refuse_unused
from clipadapt.cli._conventions import (
    RESULTS_FILE,
    add_out_argument,
    dataset_provenance,
    path_provenance,
    write_results,
)
from clipadapt.constants import DEFAULT_BATCH_SIZE
from clipadapt.errors import ConfigError
from clipadapt.fileio import atomic_write_bytes
from clipadapt.report.tables import markdown_table, write_table

if TYPE_CHECKING:  # torch-backed: imported where used, so building the parser stays torch-free
    from clipadapt.eval.synergy import SynergyReport

COMMAND = "backbones"
HELP = "multi-backbone evaluation: oracle, agreement, normalisation study, ensembles, Neural Logit Controller, cost"
EXAMPLES = """
clipadapt backbones --features feats-rn50/ feats-vitb32/ feats-vitb16/ --out runs/synergy
clipadapt backbones --models RN50@openai,ViT-B-32@openai --dataset coop:oxford_pets:/data/pets --shots 16 \
--out runs/pets
"""

COST_METRICS = {"gflops": ("gflops_per_image", "GFLOPs per image"), "ms": ("ms_per_image", "ms per image"),
                "params": ("params_image_M", "image-tower parameters (M)")}


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("inputs (one of)")
    src.add_argument("--features", nargs="+", type=Path, help="feature directories, one per backbone (same dataset)")
    src.add_argument("--models", type=comma_strings, help="comma-separated ARCH@TAG list; extracted through the cache")
    src.add_argument("--dataset", help="dataset spec for --models")
    src.add_argument("--logits", type=comma_strings, help="comma-separated (N, C) .npy logits, one per backbone")
    src.add_argument("--labels", type=Path, help="(N,) .npy labels of --logits")
    src.add_argument("--heldout-logits", type=comma_strings, help="held-out logits for fitting, same backbone order")
    src.add_argument("--heldout-labels", type=Path, help="(M,) .npy labels of --heldout-logits")
    src.add_argument("--embeddings", type=comma_strings,
                     help="(N, D_b) image embeddings .npy per backbone (enables the NLC)")
    src.add_argument("--heldout-embeddings", type=comma_strings, help="held-out embeddings .npy per backbone")
    src.add_argument("--names", type=comma_strings, help="backbone names for --logits (default: file names)")
    src.add_argument("--cache-dir", type=Path, default=None, help="feature cache root for --models")
    src.add_argument("--device", default=None, help="torch device for extraction and timing (default: auto)")
    src.add_argument("--batch-size", type=COUNT, default=DEFAULT_BATCH_SIZE)
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--split", default="test", help="evaluated split (default: test)")
    ev.add_argument("--heldout-split", default="val", help="labelled split the combiners are fitted on (default: val)")
    ev.add_argument("--shots", "--val-from-train", dest="shots", type=COUNT, default=None, metavar="K",
                    help="few-shot mode: held-out = K images per class from --train-split (seeded by --seed) "
                         "instead of --heldout-split; use it when the held-out split is the test set (CoOp's "
                         "ImageNet val)")
    ev.add_argument("--train-split", default="train", help="training split (few-shot pool, linear probe)")
    ev.add_argument("--seed", type=SEED, default=1, help="seed of the few-shot draw and the controller")
    ev.add_argument("--thresholds", type=PROBABILITIES, default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
                    help="cascade confidence thresholds")
    ev.add_argument("--cost", choices=["gflops", "ms", "params", "none"], default="gflops",
                    help="cost axis from each backbone's architecture: gflops (default) and params are counted, ms "
                         "is timed on --device; none = every backbone costs 1")
    ev.add_argument("--costs", type=NON_NEGATIVES, help="explicit per-backbone costs")
    ev.add_argument("--no-normalisation-study", action="store_true", help="skip the normalisation study")
    ev.add_argument("--probe-max-iter", type=COUNT, default=100, help="L-BFGS iterations of each linear probe")
    ev.add_argument("--chunk-rows", type=COUNT, default=1024, help="rows combined at a time (memory bound)")
    ev.add_argument("--nlc-max-epochs", type=COUNT, default=300)
    ev.add_argument("--nlc-lr", type=POSITIVE, default=2e-4)
    ev.add_argument("--nlc-batch-size", type=COUNT, default=32)
    add_verify_argument(parser)
    add_out_argument(parser, required=True, writes="summary.md, <table>.csv/.md, agreement.png, complementarity.png, "
                                                   "accuracy_vs_cost.png")


# ----------------------------------------------------------------------------------------- inputs
def _feature_sets(args: argparse.Namespace) -> tuple[dict, dict[str, str], list[int] | None]:
    """(feature sets, unusable backbones, the few-shot training rows drawn before extraction or None)."""
    from clipadapt.eval import synergy_inputs as inputs

    if args.features:
        return inputs.load_feature_dirs(args.features), {}, None
    if not args.dataset:
        raise ConfigError("--models needs --dataset")
    splits, indices = inputs.plan_dataset_splits(args.dataset, args.split, heldout_split=args.heldout_split,
                                                 train_split=args.train_split, shots=args.shots, seed=args.seed)
    kwargs = {"cache_dir": args.cache_dir, "device": args.device, "options": extract_options(args)}
    if indices:
        kwargs["indices"] = indices  # the training split is extracted as exactly these rows
    loaded = inputs.load_model_backbones(args.models, args.dataset, splits, **kwargs)
    return loaded.feature_sets, loaded.unavailable, indices[args.train_split] if indices else None


def _costs(args: argparse.Namespace, names: list[str], model_ids: list[str | None]) -> tuple[dict | None, str, list]:
    if args.costs:
        if len(args.costs) != len(names):
            raise ConfigError(f"--costs lists {len(args.costs)} values for {len(names)} backbones")
        return dict(zip(names, args.costs)), "given cost", []
    if args.cost == "none" or any(m is None for m in model_ids):
        return None, "backbones run", []
    from clipadapt.eval.synergy_cost import model_cost

    key, label = COST_METRICS[args.cost]
    device = args.device or "cpu"
    try:
        measured = [model_cost(m, device=device, measure_time=args.cost == "ms") for m in model_ids]
    except ConfigError as e:
        print(f"note: cost not measured ({e}); the cost axis counts backbones")
        return None, "backbones run", []
    return {n: r[key] for n, r in zip(names, measured)}, label, measured


# ----------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from clipadapt.eval import synergy_inputs as inputs
    from clipadapt.eval.synergy import evaluate_synergy
    from clipadapt.eval.synergy_norm import normalisation_study

    if sum(map(bool, (args.features, args.models, args.logits))) != 1:
        raise ConfigError("give exactly one of --features DIR..., --models LIST --dataset SPEC, --logits FILES "
                          "--labels FILE")
    logit_inputs = ("--labels", "--heldout-logits", "--heldout-labels", "--embeddings",
                    "--heldout-embeddings", "--names")
    if args.features:
        refuse_unused(args, "--features", ("--dataset", "--cache-dir", *logit_inputs))
    elif args.models:
        refuse_unused(args, "--models", logit_inputs)
    else:
        refuse_unused(args, "--logits", ("--dataset", "--cache-dir"))
    unavailable: dict[str, str] = {}
    extra: dict[str, Any] = {}
    norm_rows: list[dict] = []
    if args.logits:
        names, test, held = inputs.load_logit_scores(
            args.logits, args.labels, names=args.names, embeddings=args.embeddings, heldout_logits=args.heldout_logits,
            heldout_labels=args.heldout_labels, heldout_embeddings=args.heldout_embeddings)
        heldout = inputs.HeldOut(held, "given" if held else "none")
        classnames, model_ids = None, [None] * len(names)
    else:
        fsets, unavailable, drawn = _feature_sets(args)
        if len(fsets) < 2:
            raise ConfigError(f"need at least 2 backbones, got {len(fsets)}")
        inputs.check_aligned_feature_sets(fsets, args.split)
        names = list(fsets)
        classnames = next(iter(fsets.values())).classnames
        test = inputs.zero_shot_scores(fsets, args.split)
        heldout = inputs.select_heldout(fsets, split=args.split, heldout_split=args.heldout_split,
                                        train_split=args.train_split, shots=args.shots, seed=args.seed, drawn=drawn)
        model_ids = list(fsets) if args.models else [fs.meta.get("model") for fs in fsets.values()]
        if not args.no_normalisation_study:
            if all(fs.has_split(args.train_split) for fs in fsets.values()):  # same name = same rows: refused too
                inputs.check_splits_disjoint(fsets, args.train_split, args.split,
                                             "training the normalisation study's probes", inputs.TRAIN_FIX)
            norm_rows = normalisation_study(fsets, eval_split=args.split, train_split=args.train_split,
                                            probe_max_iter=args.probe_max_iter)
        extra["features"] = {k: fs.describe() for k, fs in fsets.items()}
    if unavailable:
        print(f"unusable backbones: {', '.join(unavailable)}; continuing with: {', '.join(names)}")
    costs, cost_label, cost_rows = _costs(args, names, model_ids)
    nlc_kwargs = {"max_epochs": args.nlc_max_epochs, "lr": args.nlc_lr, "batch_size": args.nlc_batch_size,
                  "seed": args.seed}
    report = evaluate_synergy(names, test, heldout=heldout.scores, classnames=classnames, costs=costs,
                              cost_label=cost_label, thresholds=args.thresholds, chunk_rows=args.chunk_rows,
                              nlc_kwargs=nlc_kwargs)
    report.tables["normalisation"] = norm_rows
    report.tables["cost"] = cost_rows
    results = {**report.results, "heldout": heldout.description, "unavailable_backbones": unavailable,
               "usable_backbones": names, "heldout_indices": heldout.indices,
               "normalisation_study": norm_rows, "cost_measurements": cost_rows, **extra}
    _write(args.out, report, results, _provenance(args, names, model_ids))
    _print_summary(results)
    return 0


def _provenance(args: argparse.Namespace, names: list[str], model_ids: list[str | None]) -> dict:
    if args.models:
        return dataset_provenance(args, model=names, spec=args.dataset, splits=[args.split])
    files = args.features or [*args.logits, args.labels, *(args.embeddings or []), *(args.heldout_logits or []),
                              *([args.heldout_labels] if args.heldout_labels else []), *(args.heldout_embeddings or [])]
    return path_provenance(args, {str(Path(f)): Path(f) for f in files},
                           model=names if args.logits else model_ids)


def _write(out: Path, report: SynergyReport, results: dict, provenance: dict) -> None:
    from clipadapt.report.synergy_plots import accuracy_vs_cost, heatmap  # matplotlib: only when plotting

    write_results(out / RESULTS_FILE, results, provenance)
    sections = [f"## accuracy\n\n{markdown_table(_summary_rows(results))}"]
    for name, rows in report.tables.items():
        if rows:
            write_table(out / f"{name}.csv", rows)
            write_table(out / f"{name}.md", rows)
            sections.append(f"## {name}\n\n{markdown_table(rows)}")
    atomic_write_bytes(out / "summary.md", ("# Backbone synergy\n\n" + "\n".join(sections)).encode())
    heatmap(report.agreement, report.names, out / "agreement.png", title="Agreement (% same prediction)")
    heatmap(report.complementarity, report.names, out / "complementarity.png",
            title="Complementarity (%):\nrow backbone right, column backbone wrong", row_label="right",
            col_label="wrong")
    accuracy_vs_cost(report.points, out / "accuracy_vs_cost.png", cost_label=report.cost_label,
                     cascade=report.results["cascade"])


def _summary_rows(results: dict) -> list[dict[str, Any]]:
    """One row per backbone, the oracle and each combiner: top-1 and (when C >= 5) top-5 — the printed table."""
    top5 = 5 in results["topk"]
    rows = [{"backbone / combiner": name, "top1": acc, **({"top5": results["accuracy_top5"][name]} if top5 else {})}
            for name, acc in results["accuracy"].items()]
    rows.append({"backbone / combiner": "oracle (any backbone right)", "top1": results["oracle_top1"],
                 **({"top5": results["oracle_top5"]} if top5 else {})})
    rows += [{"backbone / combiner": name, "top1": r["top1"], **({"top5": r["top5"]} if top5 else {})}
             for name, r in results["combinations"].items()]
    return rows


def _print_summary(results: dict) -> None:
    print(markdown_table(_summary_rows(results)), end="")
    if 5 not in results["topk"]:
        print(f"top-5 not reported: {results['num_classes']} classes (< 5)")
    print(f"synergy (oracle − best single, top-1): {results['synergy']:+.2f} over {results['best_single']['backbone']}")
    print(f"held-out for fitting: {results['heldout']}")
