"""Feature sets and the on-disk feature-directory format."""

from clipadapt.features.featureset import SPLIT_NAMES, FeatureSet, FeatureSplit, LogitParams, logit_params
from clipadapt.features.io import load_feature_dir, save_feature_dir

__all__ = [
    "SPLIT_NAMES", "FeatureSet", "FeatureSplit", "LogitParams", "load_feature_dir", "logit_params", "save_feature_dir",
]
