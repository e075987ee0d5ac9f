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
from clipadapt.methods import ZeroShotClassifier

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
    "load_feature_dir",
    "save_feature_dir",
]
