"""clipadapt: make pretrained CLIP-style models better at test time, without retraining them."""

from clipadapt.errors import (
    CacheError,
    ClipadaptError,
    ConfigError,
    DatasetError,
    FeatureDirError,
    NotFittedError,
    WeightsUnavailableError,
)
from clipadapt.features import FeatureSet, FeatureSplit, load_feature_dir, save_feature_dir
from clipadapt.methods import (
    DistributionNormalizer,
    MajorityVote,
    MaxConfidence,
    MeanLogits,
    MeanProbs,
    MinEntropy,
    NeuralLogitController,
    Stacking,
    TemperatureScaledMean,
    TipAdapter,
    TipAdapterF,
    TipX,
    ZeroShotClassifier,
)

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ClipadaptError",
    "ConfigError",
    "DatasetError",
    "FeatureDirError",
    "FeatureSet",
    "FeatureSplit",
    "NotFittedError",
    "WeightsUnavailableError",
    "ZeroShotClassifier",
    "DistributionNormalizer",
    "TipAdapter",
    "TipAdapterF",
    "TipX",
    "MeanLogits",
    "MeanProbs",
    "MajorityVote",
    "MaxConfidence",
    "MinEntropy",
    "TemperatureScaledMean",
    "Stacking",
    "NeuralLogitController",
    "load_feature_dir",
    "save_feature_dir",
]
