"""Feature sets and the on-disk feature-directory format."""

from clipadapt.features.featureset import SPLIT_NAMES, FeatureSet, FeatureSplit
from clipadapt.features.io import load_feature_dir, save_feature_dir

__all__ = ["SPLIT_NAMES", "FeatureSet", "FeatureSplit", "load_feature_dir", "save_feature_dir"]
