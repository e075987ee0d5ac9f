"""`clipadapt eval --method dn`: zero-shot classification with Distribution Normalization (METHODS.md §2)."""

from __future__ import annotations

import argparse
from typing import Any

from typing import TYPE_CHECKING

from clipadapt.constants import DEFAULT_LAMBDA, DEFAULT_TEXT_MEAN, DN_TEXT_MEANS, THEORY_LAMBDA
from clipadapt.errors import ConfigError, FeatureDirError
from clipadapt.eval.registry import MethodResult, register_eval_method

if TYPE_CHECKING:  # torch-backed: imported in run_dn, so building the CLI parser stays torch-free
    from clipadapt.features.featureset import FeatureSet


def parse_samples(value: str) -> int | None:
    """'all' -> None (every row), else a positive integer."""
    if str(value).lower() == "all":
        return None
    try:
        n = int(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got '{value}'") from e
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {n}")
    return n


def add_dn_arguments(parser: argparse.ArgumentParser | Any, *, source_default: str = "unlabeled", sources=None,
                     samples_default: int | None = 100) -> None:
    """The --dn-* options shared by `eval --method dn`, `retrieval`, `captions` and `dn-sweep`."""
    parser.add_argument("--dn-lambda", type=float, default=DEFAULT_LAMBDA,
                        help=f"λ in S=(φ−λμ_img)·(ψ−λμ_txt); {DEFAULT_LAMBDA} = DN* (default), {THEORY_LAMBDA} = theory's DN, 0 = plain CLIP")
    shown = "all" if samples_default is None else samples_default
    parser.add_argument("--dn-samples", type=parse_samples, default=samples_default,
                        help=f"unlabeled samples drawn for each mean (default {shown}; 'all' = every row)")
    parser.add_argument("--dn-source", default=source_default, choices=sources,
                        help=f"where the means come from (default {source_default}); 'test' is transductive")
    parser.add_argument("--dn-repeats", type=int, default=1, help="seeded draws of the samples; report mean ± std")
    parser.add_argument("--dn-seed", type=int, default=0, help="seed of the first draw (draw r uses seed + r)")


def add_text_mean_argument(parser: argparse.ArgumentParser | Any) -> None:
    """--dn-text-mean: which rows DN's classification text mean averages (METHODS.md §2; docs/dn.md)."""
    parser.add_argument("--dn-text-mean", choices=DN_TEXT_MEANS, default=DEFAULT_TEXT_MEAN,
                        help="classification μ_txt: 'prompts' = mean of every raw class×template prompt embedding "
                             f"(the spec; default {DEFAULT_TEXT_MEAN}), 'classes' = mean of the prompt-ensembled class rows")


def _source_images(features: FeatureSet, args: argparse.Namespace):
    """Images of --dn-source: from the loaded features, or extracted through the cache for --model/--dataset."""
    source = args.dn_source
    encodable = getattr(args, "model", None) and getattr(args, "dataset", None) and not getattr(args, "features", None)
    if not features.has_split(source) and encodable:
        from clipadapt.features.pipeline import feature_set_from_args  # heavy imports only when encoding

        return feature_set_from_args(args, splits=[source]).split(source).image
    try:
        return features.split(source).image
    except FeatureDirError as e:
        raise FeatureDirError(
            f"{e} — DN's means come from --dn-source {source}; add an 'unlabeled' split or pass "
            "--dn-source train|val|test (test = transductive)"
        ) from e


def dn_source_info(source: str, evaluated: str, n_image: int, n_text: int, asked: int | None) -> dict[str, Any]:
    """What results.json records about where DN's means came from."""
    return {
        "source": source,
        "transductive": source == evaluated,
        "n_samples_requested": "all" if asked is None else asked,
        "n_image_samples_used": n_image,
        "n_text_samples_used": n_text,
    }


ORDER = {  # what results.json records as the classification formula, per --dn-text-mean
    "prompts": "norm(f − λμ_img) · c_kᵀ, c_k = norm(mean_j norm(t_kj − λμ_txt)); μ_img, μ_txt means of raw f, t_kj",
    "classes": "norm(f − λμ_img) · norm(W_k − λμ_txt)ᵀ; μ_img mean of raw f, μ_txt mean of ensembled rows W_k",
}


def _add_eval_arguments(parser) -> None:
    add_dn_arguments(parser, sources=("unlabeled", "train", "val", "test"))
    add_text_mean_argument(parser)


@register_eval_method("dn", help="zero-shot + Distribution Normalization (METHODS.md §2)",
                      add_arguments=_add_eval_arguments)  # the --dn-source split is fetched on demand
def run_dn(features: FeatureSet, args: argparse.Namespace) -> MethodResult:
    from clipadapt.eval.metrics import classification_report, mean_std
    from clipadapt.methods.dn import DistributionNormalizer
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    if args.dn_repeats < 1:
        raise ConfigError(f"--dn-repeats must be >= 1, got {args.dn_repeats}")
    pool = _source_images(features, args)
    test = features.split(args.split)
    labels = test.label
    draws, first_logits = [], None
    text_mean = getattr(args, "dn_text_mean", DEFAULT_TEXT_MEAN)
    for r in range(args.dn_repeats):
        seed = args.dn_seed + r
        model = DistributionNormalizer(lam=args.dn_lambda, n_samples=args.dn_samples, seed=seed,
                                       text_mean=text_mean).fit(pool, features.text)
        logits = model.predict_logits(test.image)
        if first_logits is None:
            first_logits = logits
        if labels is not None:
            draws.append({"seed": seed, **classification_report(logits, labels)})
    extra: dict[str, Any] = {
        "dn": dn_source_info(args.dn_source, args.split, model.n_image_samples_, model.n_text_samples_, args.dn_samples)
    }
    extra["dn"]["views"] = test.views  # V > 1: test-time augmentation, raw views averaged before DN
    if labels is not None:  # the same split without DN, so one results file shows DN's effect
        extra["without_dn"] = classification_report(ZeroShotClassifier(logit_scale=model.logit_scale).fit(features.text).predict_logits(test.image), labels)
    if draws and args.dn_repeats > 1:
        summary = {}
        for key in ("top1", "top5"):
            mean, std = mean_std(d[key] for d in draws)
            summary[f"{key}_mean"], summary[f"{key}_std"] = mean, std
        identical = model.n_image_samples_ >= pool.shape[0]  # every pool image in every draw: one draw repeated
        extra["dn_repeats"] = {"repeats": args.dn_repeats, **summary, "draws": draws, "draws_identical": identical,
                               "note": "top1/top5 at the top level are those of the first draw (seed --dn-seed)"}
        if identical:
            print(f"dn: the {args.dn_repeats} draws are identical: each uses every one of the {pool.shape[0]} "
                  f"--dn-source images (--dn-samples {'all' if args.dn_samples is None else args.dn_samples}), "
                  "so --dn-repeats has nothing to vary")
        else:
            print(f"dn over {args.dn_repeats} draws: top1 {summary['top1_mean']:.2f} ± {summary['top1_std']:.2f}")
    hyper = {"lambda": args.dn_lambda, "n_samples": args.dn_samples if args.dn_samples is not None else "all",
             "seed": args.dn_seed, "text_mean": text_mean, "order": ORDER[text_mean],
             "logit_scale": model.logit_scale}
    return MethodResult(logits=first_logits, hyperparameters=hyper, extra=extra)
