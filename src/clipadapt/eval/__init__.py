"""Metrics, hyper-parameter search and protocol runners."""

from clipadapt.eval.metrics import classification_report, mean_std, topk_accuracy

__all__ = ["classification_report", "mean_std", "topk_accuracy"]
