"""`clipadapt dn-sweep`: DN accuracy / recall vs λ and vs the number of unlabeled samples (table + plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.argtypes import COUNT, COUNTS, LAMBDA, LAMBDAS
from clipadapt.cli._common import add_verify_argument, options_given
from clipadapt.cli._conventions import RESULTS_FILE, add_out_argument, path_provenance, write_results
from clipadapt.constants import DEFAULT_LAMBDAS, DEFAULT_SAMPLES
from clipadapt.errors import ConfigError
from clipadapt.eval.runners.dn import add_text_mean_argument, parse_samples

COMMAND = "dn-sweep"
HELP = "DN accuracy/recall vs lambda and vs number of unlabeled samples: table (CSV/md/JSON) + plot (PNG)"
EXAMPLES = """
clipadapt dn-sweep --features feats/ --dn-source unlabeled --seeds 5 --out runs/sweep
clipadapt dn-sweep --embeddings coco/ --dn-source holdout --lambdas 0,0.25,0.5,1 --out runs/sweep-coco
"""


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", type=Path, help="feature directory: zero-shot classification top-1")
    src.add_argument("--embeddings", type=Path, help="retrieval directory: image→text / text→image R@1")
    parser.add_argument("--split", default="test", help="evaluated split (default: test)")
    parser.add_argument("--dn-source", default="unlabeled", choices=("unlabeled", "train", "val", "test", "holdout"),
                        help="pool of the means (default: unlabeled; holdout = retrieval only; test = transductive)")
    parser.add_argument("--holdout", type=COUNT, default=100, help="retrieval --dn-source holdout: images held out")
    parser.add_argument("--lambdas", type=LAMBDAS, default=list(DEFAULT_LAMBDAS), help="comma-separated λ values")
    parser.add_argument("--samples", type=COUNTS, default=list(DEFAULT_SAMPLES),
                        help="comma-separated sample counts; counts from the pool size up become one 'all' row "
                             "(every pool image and caption, evaluated once)")
    parser.add_argument("--dn-lambda", type=LAMBDA, default=0.25, help="λ of the sample sweep (default 0.25)")
    parser.add_argument("--dn-samples", type=parse_samples, default=100, help="samples of the λ sweep (default 100)")
    parser.add_argument("--seeds", type=COUNT, default=5, help="seeded draws per point (default 5)")
    add_text_mean_argument(parser)  # --features (classification) only
    add_verify_argument(parser)
    add_out_argument(parser, required=True, writes="sweep.csv, sweep.md, sweep.png", aliases=["--out-dir"])


def _classification(args: argparse.Namespace):
    if args.dn_source == "holdout":
        raise ConfigError("--dn-source holdout is for --embeddings (retrieval); use unlabeled/train/val/test")
    from clipadapt.eval.dn_sweep import classification_evaluator
    from clipadapt.eval.metrics import topk_accuracy
    from clipadapt.features.io import load_feature_dir
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    fs = load_feature_dir(args.features)
    pool, test = fs.split(args.dn_source).image, fs.split(args.split)
    labels = test.labels(args.split)
    plain = {"top1": topk_accuracy(ZeroShotClassifier().fit(fs.text).predict_logits(test.image), labels,
                                   ks=(1,))["top1"]}
    evaluate = classification_evaluator(pool, fs.text, test.image, labels, text_mean=args.dn_text_mean)
    return evaluate, pool.shape[0], plain, ["top1"], fs.meta.get("model")


def _retrieval(args: argparse.Namespace):
    from clipadapt.eval.dn_sweep import retrieval_evaluator
    from clipadapt.eval.retrieval import evaluate_retrieval
    from clipadapt.features.retrieval_dir import has_retrieval_split, holdout_split, load_retrieval_split

    test = load_retrieval_split(args.embeddings, args.split)
    if args.dn_source == "holdout":
        test, pool = holdout_split(test, args.holdout)
    elif args.dn_source == args.split:
        pool = test
    elif has_retrieval_split(args.embeddings, args.dn_source):
        pool = load_retrieval_split(args.embeddings, args.dn_source)
    else:
        raise ConfigError(f"{args.embeddings}: no {args.dn_source}.safetensors pool; use --dn-source holdout or test")
    res = evaluate_retrieval(test.image, test.text, test.text_to_image, ks=(1,))
    plain = {"i2t R@1": res["i2t"]["R@1"], "t2i R@1": res["t2i"]["R@1"]}
    evaluate = retrieval_evaluator(test.image, test.text, test.text_to_image, pool.image, pool.text)
    return evaluate, min(pool.image.shape[0], pool.text.shape[0]), plain, list(plain), test.meta.get("model")


def run(args: argparse.Namespace) -> int:
    from clipadapt.eval.dn_sweep import sweep_dn
    from clipadapt.report.dn_plots import plot_dn_sweep
    from clipadapt.report.tables import markdown_table, write_table

    given = options_given(args, ["--dn-text-mean"] if args.embeddings else ["--holdout"])
    if given:
        raise ConfigError(f"conflicting inputs: {given[0]} is for "
                          f"{'--features (classification)' if args.embeddings else '--embeddings (retrieval)'}; "
                          f"with {'--embeddings' if args.embeddings else '--features'} it would be ignored")
    evaluate, pool_size, plain, metrics, model = (_classification if args.features else _retrieval)(args)
    rows = sweep_dn(evaluate, pool_size=pool_size, lambdas=args.lambdas, samples=args.samples,
                    seeds=list(range(args.seeds)), fixed_lambda=args.dn_lambda, fixed_samples=args.dn_samples)
    out = args.out
    counts = [k for k in ("n_used", "n_text_used") if k in rows[0]]  # retrieval counts captions too
    columns = ["sweep", "lambda", "n_samples", *counts, "draws"] + [c for m in metrics for c in (m, f"{m} std")]
    print(markdown_table(rows, columns), end="")
    print("plain CLIP: " + ", ".join(f"{k} {v:.2f}" for k, v in plain.items()))
    write_table(out / "sweep.csv", rows, columns)
    write_table(out / "sweep.md", rows, columns)
    extra = {"text_mean": args.dn_text_mean} if args.features else {}
    results = {"plain": plain, "pool_size": pool_size, "dn_source": args.dn_source,
               "transductive": args.dn_source == args.split, **extra, "rows": rows}
    write_results(out / RESULTS_FILE, results,
                  path_provenance(args, {"features": args.features, "embeddings": args.embeddings}, model=model))
    print(f"wrote {plot_dn_sweep(rows, metrics, out / 'sweep.png', baseline=plain)}")
    return 0
