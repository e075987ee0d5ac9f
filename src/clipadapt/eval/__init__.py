"""Metrics, hyper-parameter search and protocol runners."""

from typing import TYPE_CHECKING

from clipadapt._lazy import lazy_exports

if TYPE_CHECKING:
    from clipadapt.eval.metrics import classification_report, mean_std, topk_accuracy

__all__ = ["classification_report", "mean_std", "topk_accuracy"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "clipadapt.eval.metrics": ["classification_report", "mean_std", "topk_accuracy"],
})
