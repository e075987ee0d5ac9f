"""clipadapt: make pretrained CLIP-style models better at test time, without retraining them.

Public names are resolved lazily (clipadapt._lazy): `import clipadapt` alone does not import torch, so the
command line answers `--help` and argument errors fast.
"""

from typing import TYPE_CHECKING

from clipadapt._lazy import lazy_exports
from clipadapt.constants import __version__ as __version__  # re-exported

if TYPE_CHECKING:
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
    from clipadapt.heads import load_head
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
    "load_head",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "clipadapt.errors": ["CacheError", "ClipadaptError", "ConfigError", "DatasetError", "FeatureDirError",
                         "NotFittedError", "WeightsUnavailableError"],
    "clipadapt.features": ["FeatureSet", "FeatureSplit", "load_feature_dir", "save_feature_dir"],
    "clipadapt.methods": ["DistributionNormalizer", "MajorityVote", "MaxConfidence", "MeanLogits", "MeanProbs",
                          "MinEntropy", "NeuralLogitController", "Stacking", "TemperatureScaledMean", "TipAdapter",
                          "TipAdapterF", "TipX", "ZeroShotClassifier"],
    "clipadapt.heads": ["load_head"],
})
