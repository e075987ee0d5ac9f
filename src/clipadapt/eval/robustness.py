"""Distribution-shift robustness of the few-shot cache methods (docs/methods.md §7): a cache built on ImageNet, scored
on ImageNet-V2 / -Sketch / -A / -R.

Per (shots, seed, method) the cache is sampled from ImageNet's train split and the hyper-parameters are searched on
ImageNet validation rows (clipadapt.eval.fewshot: the same sampling, validation and `fit_and_predict` as `fewshot`);
the fitted model then predicts each variant's test features. ImageNet-A and -R cover 200 of the 1000 classes:
their logits are restricted to those columns (`variant_class_indices`, from the WordNet ids shipped in
clipadapt/data/imagenet.json) before the top-1, and their labels index that 200-class list. The search never sees
a variant, and each variant is scored as its own matrix (Tip-X's ψ range is taken on the matrix being scored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from clipadapt.errors import ConfigError, FeatureDirError
from clipadapt.features.featureset import FeatureSplit

VARIANTS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def variant_class_indices(name: str) -> list[int] | None:
    """ImageNet class index of each class of variant `name` in its label order; None when it has all 1000."""
    from clipadapt.data.catalog import imagenet_meta

    if name not in VARIANTS:
        raise ConfigError(f"unknown ImageNet variant '{name}'; known: {', '.join(VARIANTS)}")
    meta = imagenet_meta()
    key = f"{name}_wnids"
    if key not in meta:
        return None
    position = {w: i for i, w in enumerate(meta["wnids"])}
    return [position[w] for w in meta[key]]


@dataclass
class Variant:
    """A variant's test features (labels in its own class order), the class map, and optional adapted twins."""

    name: str
    test: FeatureSplit
    class_indices: list[int] | None
    adapted_test: FeatureSplit | None = None

    def check(self, num_classes: int) -> None:
        labels = self.test.labels(f"{self.name} test")
        expected = len(self.class_indices) if self.class_indices is not None else num_classes
        if int(labels.max()) >= expected:
            raise FeatureDirError(f"{self.name}: labels reach {int(labels.max())} but the variant has "
                                  f"{expected} classes")

    def top1(self, logits: Tensor) -> float:
        """Top-1 (%) over the variant's classes only."""
        from clipadapt.eval.metrics import topk_accuracy

        if self.class_indices is not None:
            logits = logits[:, self.class_indices]
        return topk_accuracy(logits, self.test.labels(self.name), (1,))["top1"]


def run_robustness(source: Any, config: Any, variants: list[Variant], *, progress: bool = True) -> dict[str, Any]:
    """{'runs': one row per (method, shots, seed, variant) incl. 'imagenet' itself, 'summary'} for a FewShotSource."""
    from tqdm import tqdm

    from clipadapt.eval.fewshot import METHOD_TABLE, _sample_shot_lists, _sample_val_lists, fit_and_predict, summarize
    from clipadapt.features.featureset import logit_params

    if config.val_from_train is None:
        raise ConfigError("robustness validates on ImageNet train rows: give val_from_train (--val-from-train N); "
                          "CoOp's ImageNet 'val' is its test set")
    for v in variants:
        v.check(len(source.classnames))
        if config.needs_adapted and v.adapted_test is None:
            raise ConfigError(f"tip++/tipx++ need adapted features of {v.name} too")
    imagenet = Variant("imagenet", source.eval_split("test"), None,
                       source.eval_split("test", adapted=True) if config.needs_adapted else None)
    labels = source.train_labels()
    logit = logit_params(source.meta)
    shot_lists = _sample_shot_lists(source, config, labels, None)  # the same draws as `fewshot`, before encoding
    val_lists = _sample_val_lists(source, config, labels, shot_lists, None)
    runs = []
    for (shots, seed), idx in tqdm(shot_lists.items(), desc="robustness (shots, seed)", disable=not progress):
        val = source.train_eval_rows(val_lists[seed])
        train = source.train_rows(idx, seed)
        a_val = source.train_eval_rows(val_lists[seed], adapted=True) if config.needs_adapted else None
        a_train = source.train_rows(idx, seed, adapted=True) if config.needs_adapted else None
        for method in config.methods:
            for v in [imagenet, *variants]:
                adapted = (a_train, a_val, v.adapted_test.image) if METHOD_TABLE[method][2] else None
                pred = fit_and_predict(method, config, source.text,
                                       None if method == "zeroshot" else train, val, v.test.image, seed=seed,
                                       adapted=adapted, logit=logit)
                runs.append({"method": method, "shots": shots, "seed": seed, "dataset": v.name,
                             "test_top1": v.top1(pred.test_logits), "val_top1": pred.val_top1,
                             "hyperparameters": pred.hyperparameters,
                             "classes": len(v.class_indices) if v.class_indices else len(source.classnames)})
    summary = []
    for name in ["imagenet", *[v.name for v in variants]]:
        summary += [{"dataset": name, **row} for row
                    in summarize([r for r in runs if r["dataset"] == name], config.methods)]
    return {"runs": runs, "summary": summary, "logit": logit.describe()}
