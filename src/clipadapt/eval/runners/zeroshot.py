"""`clipadapt eval --method zeroshot`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipadapt.eval.registry import EvalOptions, MethodResult, register_eval_method

if TYPE_CHECKING:  # torch-backed: imported in run_zeroshot, so building the CLI parser stays torch-free
    from clipadapt.features.featureset import FeatureSet


@register_eval_method("zeroshot", help="CLIP zero-shot with prompt ensembling (docs/methods.md §1)")
def run_zeroshot(features: FeatureSet, options: EvalOptions) -> MethodResult:
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    logit = features.logit_params()  # the model's own scale and bias, or 100 / none (said in logit_source)
    model = ZeroShotClassifier(**logit.kwargs()).fit(features.text)
    logits = model.predict_logits(features.split(options.split).image)
    return MethodResult(logits=logits, hyperparameters=logit.describe())
