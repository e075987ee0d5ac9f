"""`clipadapt eval --method dn`: zero-shot classification with Distribution Normalization (docs/methods.md §2)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipadapt.argtypes import COUNT, LAMBDA, SAMPLES, SEED
from clipadapt.constants import DEFAULT_LAMBDA, DEFAULT_TEXT_MEAN, DN_TEXT_MEANS, THEORY_LAMBDA
from clipadapt.errors import ConfigError, FeatureDirError
from clipadapt.eval.registry import EvalOptions, MethodResult, register_eval_method

if TYPE_CHECKING:  # torch-backed: imported in run_dn, so building the CLI parser stays torch-free
    from clipadapt.features.featureset import FeatureSet


parse_samples = SAMPLES  # 'all' -> None (every row), else a positive integer (clipadapt.argtypes)


def add_dn_arguments(parser: argparse.ArgumentParser | Any, *, source_default: str = "unlabeled", sources=None,
                     samples_default: int | None = 100) -> None:
    """The --dn-* options shared by `eval --method dn`, `retrieval`, `captions` and `dn-sweep`."""
    parser.add_argument("--dn-lambda", type=LAMBDA, default=DEFAULT_LAMBDA,
                        help=f"λ in S=(φ−λμ_img)·(ψ−λμ_txt); {DEFAULT_LAMBDA} = DN* (default), {THEORY_LAMBDA} = "
                             "theory's DN, 0 = plain CLIP")
    shown = "all" if samples_default is None else samples_default
    parser.add_argument("--dn-samples", type=parse_samples, default=samples_default,
                        help=f"unlabeled samples drawn for each mean (default {shown}; 'all' = every row)")
    parser.add_argument("--dn-source", default=source_default, choices=sources,
                        help=f"where the means come from (default {source_default}); 'test' is transductive")
    parser.add_argument("--dn-repeats", type=COUNT, default=1, help="seeded draws of the samples; report mean ± std")
    parser.add_argument("--dn-seed", type=SEED, default=0, help="seed of the first draw (draw r uses seed + r)")


def add_text_mean_argument(parser: argparse.ArgumentParser | Any) -> None:
    """--dn-text-mean: which rows DN's classification text mean averages (docs/methods.md §2; docs/dn.md)."""
    parser.add_argument("--dn-text-mean", choices=DN_TEXT_MEANS, default=DEFAULT_TEXT_MEAN,
                        help="classification μ_txt: 'prompts' = mean of every raw class×template prompt embedding "
                             f"(the spec; default {DEFAULT_TEXT_MEAN}), 'classes' = mean of the prompt-ensembled "
                             "class rows")


@dataclass
class DNOptions(EvalOptions):
    """`eval --method dn`'s options (fields named after the --dn-* destinations)."""

    dn_lambda: float = DEFAULT_LAMBDA
    dn_samples: int | None = 100
    dn_source: str = "unlabeled"
    dn_repeats: int = 1
    dn_seed: int = 0
    dn_text_mean: str = DEFAULT_TEXT_MEAN


def _source_split(features: FeatureSet, options: DNOptions):
    """The --dn-source split: from the loaded features, or encoded through the cache (`options.fetch`)."""
    source = options.dn_source
    if not features.has_split(source) and options.fetch is not None:
        return options.fetch([source]).split(source)
    try:
        return features.split(source)
    except FeatureDirError as e:
        raise FeatureDirError(
            f"{e} — DN's means come from --dn-source {source}; add an 'unlabeled' split or pass "
            "--dn-source train|val|test (test = transductive)"
        ) from e


def shared_images(pool, evaluated) -> int:
    """How many evaluated rows are also in the pool of the means: by source path when both record `paths` (an
    image folder without split subfolders serves the same files as 'unlabeled' and 'test'), else by identical
    embedding rows (16-byte row digests, so a large pool costs little memory). Any shared row makes DN
    transductive, whatever the split names say."""
    pool_paths, eval_paths = getattr(pool, "paths", None), getattr(evaluated, "paths", None)
    if pool_paths is not None and eval_paths is not None:
        in_pool = set(pool_paths)
        return sum(p in in_pool for p in eval_paths)
    if pool.image is None or evaluated.image is None or pool.image.shape[1:] != evaluated.image.shape[1:]:
        return 0
    import hashlib

    def digests(image):
        rows = image.detach().cpu().float().contiguous().reshape(image.shape[0], -1).numpy()
        return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]

    in_pool = set(digests(pool.image))
    return sum(d in in_pool for d in digests(evaluated.image))


def dn_source_info(source: str, evaluated: str, n_image: int, n_text: int, asked: int | None,
                   shared: int = 0) -> dict[str, Any]:
    """What results.json records about where DN's means came from; `shared` evaluated rows also in the pool make
    it transductive even when the split names differ."""
    return {
        "source": source,
        "transductive": source == evaluated or shared > 0,
        "shared_with_evaluated": shared,
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
    parser.add_argument("--views", type=COUNT, default=None, metavar="V",
                        help="test-time augmentation with --model/--dataset: V seeded augmented views per image, "
                             "averaged "
                             "before DN; the results also report the first view alone ('tta'), from the same features")


def first_view_results(model_kwargs: dict[str, Any], pool, text, test_image, labels) -> dict[str, Any]:
    """DN and plain zero-shot on view 0 only (pool and test), for the TTA vs no-TTA comparison of one run.

    View 0 is the first augmented view (a random crop + flip like the others), not the un-augmented image."""
    from clipadapt.eval.metrics import classification_report
    from clipadapt.methods.dn import DistributionNormalizer
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    one_pool = pool[:, 0] if pool.ndim == 3 else pool
    model = DistributionNormalizer(**model_kwargs).fit(one_pool, text)
    plain = ZeroShotClassifier(logit_scale=model.logit_scale, logit_bias=model.logit_bias).fit(text)
    return {**classification_report(model.predict_logits(test_image[:, 0]), labels),
            "without_dn": classification_report(plain.predict_logits(test_image[:, 0]), labels),
            "note": "view 0 of the same features: the first augmented view, not the un-augmented image"}


@register_eval_method("dn", help="zero-shot + Distribution Normalization (docs/methods.md §2)",
                      add_arguments=_add_eval_arguments, options=DNOptions)  # --dn-source is fetched on demand
def run_dn(features: FeatureSet, options: DNOptions) -> MethodResult:
    from clipadapt.eval.metrics import classification_report, mean_std
    from clipadapt.methods.dn import DistributionNormalizer
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    if options.dn_repeats < 1:
        raise ConfigError(f"--dn-repeats must be >= 1, got {options.dn_repeats}")
    pool_split = _source_split(features, options)
    pool = pool_split.image
    test = features.split(options.split)
    labels = test.label
    draws, first_logits = [], None
    logit = features.logit_params()
    dn_kwargs = {"lam": options.dn_lambda, "n_samples": options.dn_samples, "text_mean": options.dn_text_mean,
                 **logit.kwargs()}
    for r in range(options.dn_repeats):
        seed = options.dn_seed + r
        model = DistributionNormalizer(seed=seed, **dn_kwargs).fit(pool, features.text)
        logits = model.predict_logits(test.image)
        if first_logits is None:
            first_logits = logits
        if labels is not None:
            draws.append({"seed": seed, **classification_report(logits, labels)})
    notes: list[str] = []
    extra: dict[str, Any] = {
        "dn": dn_source_info(options.dn_source, options.split, model.n_image_samples_, model.n_text_samples_,
                             options.dn_samples,
                             shared=test.n if options.dn_source == options.split else shared_images(pool_split, test))
    }
    extra["dn"]["views"] = test.views  # V > 1: test-time augmentation, raw views averaged before DN
    if labels is not None:  # the same split without DN, so one results file shows DN's effect
        extra["without_dn"] = classification_report(
            ZeroShotClassifier(**logit.kwargs()).fit(features.text).predict_logits(test.image), labels)
    if labels is not None and test.views > 1:  # TTA and no-TTA from one extraction
        extra["tta"] = {"first view": first_view_results({**dn_kwargs, "seed": options.dn_seed}, pool, features.text,
                                                         test.image, labels)}
    samples = "all" if options.dn_samples is None else options.dn_samples
    if draws and options.dn_repeats > 1:
        summary = {}
        for key in ("top1", "top5"):
            summary[f"{key}_mean"], summary[f"{key}_std"] = mean_std(d[key] for d in draws)
        identical = model.n_image_samples_ >= pool.shape[0]  # every pool image in every draw: one draw repeated
        extra["dn_repeats"] = {"repeats": options.dn_repeats, **summary, "draws": draws, "draws_identical": identical,
                               "note": "top1/top5 at the top level are those of the first draw (seed --dn-seed)"}
        if identical:
            notes.append(f"dn: the {options.dn_repeats} draws are identical: each uses every one of the "
                         f"{pool.shape[0]} --dn-source images (--dn-samples {samples}), so --dn-repeats has nothing "
                         "to vary")
        else:
            notes.append(f"dn over {options.dn_repeats} draws: "
                         f"top1 {summary['top1_mean']:.2f} ± {summary['top1_std']:.2f}")
    hyper = {"lambda": options.dn_lambda, "n_samples": samples,
             "seed": options.dn_seed, "text_mean": options.dn_text_mean, "order": ORDER[options.dn_text_mean],
             **logit.describe()}
    return MethodResult(logits=first_logits, hyperparameters=hyper, extra=extra, notes=notes)
