"""Feature sets and the on-disk feature-directory format."""

from typing import TYPE_CHECKING

from clipadapt._lazy import lazy_exports

if TYPE_CHECKING:
    from clipadapt.features.featureset import SPLIT_NAMES, FeatureSet, FeatureSplit
    from clipadapt.features.io import load_feature_dir, save_feature_dir

__all__ = ["SPLIT_NAMES", "FeatureSet", "FeatureSplit", "load_feature_dir", "save_feature_dir"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "clipadapt.features.featureset": ["SPLIT_NAMES", "FeatureSet", "FeatureSplit"],
    "clipadapt.features.io": ["load_feature_dir", "save_feature_dir"],
})
