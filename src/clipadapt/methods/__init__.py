"""Pure-tensor methods in estimator style: keyword-only hyper-parameters, fit(...) -> self, predict_logits."""

from clipadapt.methods.dn import DistributionNormalizer
from clipadapt.methods.ensembles import (
    MajorityVote,
    MaxConfidence,
    MeanLogits,
    MeanProbs,
    MinEntropy,
    Stacking,
    TemperatureScaledMean,
)
from clipadapt.methods.logit_controller import NeuralLogitController
from clipadapt.methods.tip_adapter import TipAdapter, TipAdapterF
from clipadapt.methods.tip_x import TipX
from clipadapt.methods.zeroshot import ZeroShotClassifier

__all__ = [
    "DistributionNormalizer",
    "MajorityVote",
    "MaxConfidence",
    "MeanLogits",
    "MeanProbs",
    "MinEntropy",
    "NeuralLogitController",
    "Stacking",
    "TemperatureScaledMean",
    "TipAdapter",
    "TipAdapterF",
    "TipX",
    "ZeroShotClassifier",
]
