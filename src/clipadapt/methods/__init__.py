"""Pure-tensor methods in estimator style: keyword-only hyper-parameters, fit(...) -> self, predict_logits."""

from clipadapt.methods.dn import DistributionNormalizer
from clipadapt.methods.zeroshot import ZeroShotClassifier

__all__ = ["DistributionNormalizer", "ZeroShotClassifier"]
