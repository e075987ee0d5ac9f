"""The few-shot protocol (docs/methods.md §7) for cache methods: shots × seeds × methods, searched on val, scored on
test.

For each (shots K, seed): K training images per class are sampled (the index list is written out), the cache is
built from those rows (with V augmented views when the train features have them), α/β(/γ) are searched on the
validation split and the chosen model is scored once on test. TA++/TX++ reuse exactly the same shots, seeds,
grids and cache rows as TA/TX, on features computed through the IMO adapter, so the comparison is paired.

Test labels are used in one place only, `_score_test`, after a method has produced its test logits; the fitting
and search code (`fit_and_predict`) receives the test *features* and never the labels. Test *images* are kept out
of selection too: before any search the validation rows (and the cache rows) are checked against the test split
(clipadapt.eval.protocol) — on CoOp's ImageNet 'val' is 'test', so the run stops and names `val_from_train`
(CLI `--val-from-train N`): N train images per class per seed, disjoint from that seed's shots, as validation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from clipadapt.constants import GRID_PRESETS, TIE_BREAKS
from clipadapt.data.fewshot import sample_disjoint, sample_few_shot, save_indices
from clipadapt.errors import ConfigError, FeatureDirError
from clipadapt.eval.metrics import mean_std, topk_accuracy
from clipadapt.eval.protocol import check_disjoint
from clipadapt.eval.search import TIP_GRID, TIPX_GRID, grid_preset, resolve_grid, search_tip_adapter, search_tip_x
from clipadapt.features.featureset import FeatureSet, FeatureSplit, LogitParams, logit_params
from clipadapt.methods.tip_adapter import TipAdapter, TipAdapterF
from clipadapt.methods.tip_x import TipX
from clipadapt.methods.zeroshot import ZeroShotClassifier

log = logging.getLogger(__name__)

METHOD_TABLE: dict[str, tuple[type, str | None, bool]] = {  # name: (estimator, grid family, on adapted features)
    "zeroshot": (ZeroShotClassifier, None, False),
    "tip": (TipAdapter, "tip", False),
    "tip-f": (TipAdapterF, "tip", False),
    "tipx": (TipX, "tipx", False),
    "tip++": (TipAdapter, "tip", True),
    "tipx++": (TipX, "tipx", True),
}
METHODS = tuple(METHOD_TABLE)
DEFAULT_GRIDS = {"tip": TIP_GRID, "tipx": TIPX_GRID}


@dataclass
class FewShotConfig:
    """What to run. `grids[family][param]` overrides a default grid (family 'tip' or 'tipx').

    `grid_preset` ('tip-adapter', 'sus-x', 'imo'): a paper's grids and loop order (clipadapt.eval.search.grid_preset);
    `grids` then overrides axes of the preset. `tie_break`: 'grid-order' (the first tied point in loop order) or
    'centre' (the centre of the largest tied region).
    """

    shots: list[int]
    seeds: list[int]
    methods: list[str]
    allow_fewer: bool = False
    grids: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    tipf_epochs: int = 20
    chunk_size: int | None = None
    val_from_train: int | None = None  # N: validate on N train images per class (per seed, disjoint from its shots)
    grid_preset: str | None = None
    tie_break: str = "grid-order"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown few-shot method(s) {unknown}; available: {', '.join(METHODS)}")
        if not self.shots or any(k < 1 for k in self.shots):
            raise ConfigError(f"shots must be positive integers, got {self.shots}")
        if not self.seeds or not self.methods:
            raise ConfigError("give at least one seed and one method")
        if self.val_from_train is not None and self.val_from_train < 1:
            raise ConfigError("val_from_train (--val-from-train) must be >= 1 images per class, got "
                              f"{self.val_from_train}")
        if self.grid_preset is not None and self.grid_preset not in GRID_PRESETS:
            raise ConfigError(f"unknown grid preset '{self.grid_preset}'; available: {', '.join(GRID_PRESETS)}")
        if self.tie_break not in TIE_BREAKS:
            raise ConfigError(f"unknown tie break '{self.tie_break}'; available: {', '.join(TIE_BREAKS)}")
        for family, given in self.grids.items():
            if family not in DEFAULT_GRIDS or set(given) - set(DEFAULT_GRIDS[family]):
                raise ConfigError(f"grid {family}.{sorted(given)}: valid are tip.alpha/beta, tipx.alpha/beta/gamma")

    @property
    def needs_adapted(self) -> bool:
        return any(METHOD_TABLE[m][2] for m in self.methods)

    def grid(self, method: str) -> dict[str, list[float]]:
        family = METHOD_TABLE[method][1]
        base = grid_preset(self.grid_preset)[family].grid if self.grid_preset else DEFAULT_GRIDS[family]
        return resolve_grid(base, self.grids.get(family, {}))

    def search_options(self, method: str) -> dict[str, Any]:
        """`order` (the preset's loop nesting, or the default) and `tie_break` for the search functions."""
        order = grid_preset(self.grid_preset)[METHOD_TABLE[method][1]].order if self.grid_preset else None
        return {"order": order, "tie_break": self.tie_break}


# ------------------------------------------------------------------------------------------------ sources
class FewShotSource(Protocol):
    """Where features come from: a feature directory, or the extraction pipeline."""

    classnames: list[str]
    text: Tensor
    meta: dict[str, Any]

    def train_labels(self) -> Tensor: ...
    def eval_split(self, name: str, adapted: bool = False) -> FeatureSplit: ...
    def train_rows(self, indices: list[int], seed: int, adapted: bool = False) -> FeatureSplit: ...
    def train_eval_rows(self, indices: list[int], adapted: bool = False) -> FeatureSplit: ...
    def describe(self) -> dict[str, Any]: ...
    def index_meta(self) -> dict[str, Any]: ...


def check_paired(original: FeatureSet, adapted: FeatureSet, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    """Adapted features must be the same images, classes and backbone as the original ones."""
    where = f" ({adapted.source})" if adapted.source else ""
    if adapted.classnames != original.classnames:
        raise FeatureDirError(f"adapted features{where}: meta.json classnames differ from the original features'")
    check_same_model(original.meta, adapted.meta, original.dim, adapted.dim, "original features",
                     f"adapted features{where}")
    for name in splits:
        a, b = original.split(name), adapted.split(name)
        if a.n != b.n or (a.label is not None and b.label is not None and not torch.equal(a.label, b.label)):
            raise FeatureDirError(
                f"adapted features{where}: split '{name}' has {b.n} rows / labels that differ from the original "
                f"{a.n} rows — TA++/TX++ need the same images in the same order"
            )


def check_same_model(meta_a: dict, meta_b: dict, dim_a: int, dim_b: int, what_a: str, what_b: str) -> None:
    """Cache and evaluation features must come from one backbone (same D and, when recorded, same model)."""
    model_a, model_b = meta_a.get("model"), meta_b.get("model")
    if dim_a != dim_b or (model_a and model_b and model_a != model_b):
        raise FeatureDirError(
            f"{what_a} (model {model_a or '?'}, D={dim_a}) and {what_b} (model {model_b or '?'}, D={dim_b}) "
            "come from different models: the cache and the evaluated features must share the backbone"
        )


class DirectorySource:
    """A loaded feature directory (its train split used as is), plus optional adapted features (same rows).

    `splits`: the labelled splits it must have (default train, test and val when present; `clipadapt fit` needs
    no test split)."""

    def __init__(self, features: FeatureSet, adapted: FeatureSet | None = None, *,
                 splits: tuple[str, ...] | None = None):
        self.features, self.adapted = features, adapted
        self.classnames, self.text, self.meta = features.classnames, features.text, features.meta
        if splits is None:  # val may come from train
            splits = ("train", "val", "test") if features.has_split("val") else ("train", "test")
        for name in splits:
            features.split(name).labels(name)
        if adapted is not None:
            check_paired(features, adapted, splits)

    def _set(self, adapted: bool) -> FeatureSet:
        if adapted and self.adapted is None:
            raise ConfigError("tip++/tipx++ need adapted features: give --adapted-features DIR or --adapter CKPT")
        return self.adapted if adapted else self.features  # type: ignore[return-value]

    def train_labels(self) -> Tensor:
        return self.features.split("train").labels("train")

    def eval_split(self, name: str, adapted: bool = False) -> FeatureSplit:
        return self._set(adapted).split(name)

    def train_rows(self, indices: list[int], seed: int, adapted: bool = False) -> FeatureSplit:
        return self._set(adapted).split("train").subset(indices)

    def train_eval_rows(self, indices: list[int], adapted: bool = False) -> FeatureSplit:
        """Train rows used as validation: (n, D), a row's augmented views averaged when the split has views."""
        rows = self._set(adapted).split("train").subset(indices)
        return FeatureSplit(image=rows.pooled(), label=rows.label, paths=rows.paths)

    def index_meta(self) -> dict[str, Any]:
        """Provenance written into each index list (rows of the directory's train split)."""
        meta = self.features.meta
        return {"features": str(self.features.source) if self.features.source else None, "model": meta.get("model"),
                "dataset": meta.get("dataset"), "fingerprint": meta.get("fingerprint")}

    def describe(self) -> dict[str, Any]:
        out = self.features.describe()
        if self.adapted is not None:
            out["adapted"] = self.adapted.describe()
        return out


Fetch = Callable[..., FeatureSet]


class PipelineSource:
    """Features through `clipadapt.features.pipeline.get_feature_set` (model + dataset, content-addressed cache).

    `fetch(splits, views=None, seed=None, indices=None, adapter=None) -> FeatureSet` is get_feature_set with
    model and dataset bound. Only the sampled train images are encoded with `views` augmented views.
    `train_dataset` (a clipadapt.data.ImageDataset of the train split) gives the labels to sample from without
    encoding anything; without it one un-augmented pass over train is fetched for its labels.
    `use_val=False` (validation drawn from train) never fetches the dataset's 'val' split. `base`: features
    already fetched that give the class names, text and meta, and whose splits other than 'train' are the evaluated
    ones (`clipadapt fit` passes its validation features, so 'test' is never encoded).
    """

    def __init__(self, fetch: Fetch, *, views: int = 10, adapter: str | Path | None = None, train_dataset: Any = None,
                 use_val: bool = True, base: FeatureSet | None = None):
        if views < 1:
            raise ConfigError(f"--views must be >= 1, got {views}")
        self.fetch, self.views, self.adapter, self.train_dataset = fetch, views, adapter, train_dataset
        if base is None:
            self.eval_splits = ["val", "test"] if use_val else ["test"]
            self.base = fetch(list(self.eval_splits))
        else:
            self.eval_splits = [s for s in base.splits if s != "train" and (use_val or s != "val")]
            self.base = base
        self.classnames, self.text, self.meta = self.base.classnames, self.base.text, self.base.meta
        self._adapted_eval: FeatureSet | None = None
        self._labels: Tensor | None = None

    def train_labels(self) -> Tensor:
        if self._labels is None and self.train_dataset is not None:
            self._labels = torch.as_tensor(self.train_dataset.labels, dtype=torch.long)
        if self._labels is None:  # one un-augmented pass over train (cached by the pipeline) for the labels
            self._labels = self.fetch(["train"]).split("train").labels("train")
        return self._labels

    def index_meta(self) -> dict[str, Any]:
        fingerprint = self.train_dataset.fingerprint() if self.train_dataset is not None else None
        return {"model": self.meta.get("model"), "dataset": self.meta.get("dataset"), "fingerprint": fingerprint}

    def _adapter(self, adapted: bool) -> str | Path | None:
        if adapted and self.adapter is None:
            raise ConfigError("tip++/tipx++ need --adapter CKPT (or --features with --adapted-features)")
        return self.adapter if adapted else None

    def eval_split(self, name: str, adapted: bool = False) -> FeatureSplit:
        if not adapted:
            return self.base.split(name)
        if self._adapted_eval is None:
            self._adapted_eval = self.fetch(list(self.eval_splits), adapter=self._adapter(True))
            check_paired(self.base, self._adapted_eval, tuple(self.eval_splits))
        return self._adapted_eval.split(name)

    def train_rows(self, indices: list[int], seed: int, adapted: bool = False) -> FeatureSplit:
        fs = self.fetch(["train"], views={"train": self.views}, seed=seed, indices={"train": indices},
                        adapter=self._adapter(adapted))
        rows = fs.split("train")
        check_same_model(self.base.meta, fs.meta, self.base.dim, rows.dim, "val/test features",
                         "train (cache) features")
        if rows.n != len(indices):
            raise FeatureDirError(f"the pipeline returned {rows.n} train rows for {len(indices)} sampled indices")
        return rows

    def train_eval_rows(self, indices: list[int], adapted: bool = False) -> FeatureSplit:
        """Train rows used as validation: one un-augmented view each, like the val/test splits."""
        fs = self.fetch(["train"], views={"train": 1}, indices={"train": indices}, adapter=self._adapter(adapted))
        rows = fs.split("train")
        if rows.n != len(indices):
            raise FeatureDirError(f"the pipeline returned {rows.n} train rows for {len(indices)} validation indices")
        return rows

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "train_views": self.views,
                "adapter": str(self.adapter) if self.adapter else None}


# ------------------------------------------------------------------------------------------------ sampling
def sample_shots(labels: Tensor, shots: int, seed: int, *, classnames: list[str], allow_fewer: bool) -> list[int]:
    """K train rows per class (clipadapt.data.fewshot: seeded, nested across K, sorted)."""
    return sample_few_shot(labels.tolist(), shots, seed, classnames=classnames, allow_fewer=allow_fewer)


# ------------------------------------------------------------------------------------------------ methods
@dataclass
class FittedMethod:
    """A method fitted on the cache rows with its validation-chosen hyper-parameters (`model` is the estimator,
    ready for `predict_logits`); what `clipadapt fit` stores in a head file."""

    model: Any
    hyperparameters: dict[str, Any]
    val_top1: float | None


@dataclass
class Prediction(FittedMethod):
    """A fitted method and its test logits (how they were chosen: validation only)."""

    test_logits: Tensor


def fit_method(
    method: str,
    config: FewShotConfig,
    text: Tensor,
    train: FeatureSplit | None,
    val: FeatureSplit,
    *,
    seed: int,
    adapted: tuple[FeatureSplit, FeatureSplit] | None = None,
    logit: LogitParams | None = None,
) -> FittedMethod:
    """Fit `method` (a METHOD_TABLE name) on the cache rows and choose its hyper-parameters on val.
    Sees no test split at all. `adapted`: (train, val) through the IMO adapter, for TA++/TX++.
    `logit`: the model's logit scale and bias for the zero-shot term (default: 100, no bias)."""
    estimator, family, _ = METHOD_TABLE[method]
    logit_kwargs = (logit or LogitParams()).kwargs()
    if family is None:  # zero-shot: no cache, nothing to search
        model = estimator(**logit_kwargs).fit(text)
        val_acc = topk_accuracy(model.predict_logits(val.image), val.labels("val"), (1,))["top1"]
        return FittedMethod(model, model.get_params(), val_acc)
    assert train is not None
    keys, key_labels = train.image, train.labels("train")
    grid = config.grid(method)
    a_train, a_val = adapted if adapted is not None else (None, None)
    if estimator is TipAdapterF:  # fine-tunes its keys, the epoch chosen on val
        model = TipAdapterF(epochs=config.tipf_epochs, seed=seed, **logit_kwargs).fit(
            keys, key_labels, text, val_features=val.image, val_labels=val.labels("val")
        )
    else:
        model = estimator(**logit_kwargs).fit(keys, key_labels, text, adapted_keys=a_train.image if a_train else None)
    a_val_image = a_val.image if a_val is not None else None
    options = config.search_options(method)
    if family == "tipx":
        result = search_tip_x(model, val.image, val.labels("val"), alphas=grid["alpha"], betas=grid["beta"],
                              gammas=grid["gamma"], adapted_val_features=a_val_image, chunk_size=config.chunk_size,
                              **options)
    else:
        result = search_tip_adapter(model, val.image, val.labels("val"), alphas=grid["alpha"], betas=grid["beta"],
                                    adapted_val_features=a_val_image, chunk_size=config.chunk_size, **options)
    best = model.with_params(**result.best)
    found = result.to_dict()
    searched = {key: found[key] for key in ("grid_size", "n_tied", "tie_break", "order")}
    extra = {"best_epoch": model.best_epoch_} if estimator is TipAdapterF else {}
    return FittedMethod(best, {**best.get_params(), **extra, **searched}, result.best_accuracy)


def fit_and_predict(
    method: str,
    config: FewShotConfig,
    text: Tensor,
    train: FeatureSplit | None,
    val: FeatureSplit,
    test_features: Tensor,
    *,
    seed: int,
    adapted: tuple[FeatureSplit, FeatureSplit, Tensor] | None = None,
    logit: LogitParams | None = None,
) -> Prediction:
    """Fit `method` (a METHOD_TABLE name) on the cache rows, choose its hyper-parameters on val, predict test.
    Sees no test labels. `adapted`: (train, val, test features) through the IMO adapter, for TA++/TX++.
    `logit`: the model's logit scale and bias for the zero-shot term (default: 100, no bias)."""
    fitted = fit_method(method, config, text, train, val, seed=seed,
                        adapted=(adapted[0], adapted[1]) if adapted is not None else None, logit=logit)
    if METHOD_TABLE[method][1] is None:
        logits = fitted.model.predict_logits(test_features)
    else:
        logits = fitted.model.predict_logits(test_features, adapted[2] if adapted is not None else None)
    return Prediction(fitted.model, fitted.hyperparameters, fitted.val_top1, logits)


# ------------------------------------------------------------------------------------------------ protocol
def _score_test(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """The only use of test labels."""
    return topk_accuracy(logits, labels, (1,))


def _to(split: FeatureSplit, device: torch.device | str | None) -> FeatureSplit:
    if device is None:
        return split
    label = split.label.to(device) if split.label is not None else None
    return FeatureSplit(image=split.image.to(device), label=label, paths=split.paths)


VAL_FIX = ("Draw validation from train instead: --val-from-train N (library: FewShotConfig(val_from_train=N)) takes N "
           "train images per class per seed, disjoint from that seed's shots.")
CACHE_FIX = "The train split itself contains test images: give a dataset whose train and test differ."


def validation_indices(train_labels: Tensor, shot_lists: dict[int, list[int]], per_class: int, seed: int, *,
                       classnames: list[str], allow_fewer: bool) -> list[int]:
    """`per_class` train rows per class for validation, disjoint from every shot list of this seed (`shot_lists`
    by K; nested, so the largest K's), seeded by `seed` (clipadapt.data.fewshot.sample_disjoint)."""
    exclude = sorted({i for idx in shot_lists.values() for i in idx})
    return sample_disjoint(train_labels.tolist(), per_class, seed, exclude=exclude, classnames=classnames,
                           allow_fewer=allow_fewer, what=f"--val-from-train {per_class} (seed {seed})")


def _index_meta(source: FewShotSource, **extra: Any) -> dict[str, Any]:
    return {**source.index_meta(), "split": "train", **extra}


def run_fewshot(
    source: FewShotSource,
    config: FewShotConfig,
    *,
    index_dir: Path | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every (shots, seed, method); returns {'runs', 'summary', 'indices', 'validation'}.

    Validation is the source's 'val' split, or with `config.val_from_train` N train rows per class per seed
    (disjoint from that seed's shots; listed under indices['val_seed<S>'] and written as val_seed<S>.json).
    Either way it is checked against the test split first (ProtocolError on any shared image).
    """
    jobs = _Jobs.prepare(source, config, device)
    train_labels = source.train_labels()
    if train_labels.numel() == 0:
        raise FeatureDirError("split 'train' has 0 rows, but few-shot sampling needs training images")
    shot_lists = _sample_shot_lists(source, config, train_labels, index_dir)
    if config.val_from_train is not None:
        jobs.val_lists = _sample_val_lists(source, config, train_labels, shot_lists, index_dir)
    runs: list[dict[str, Any]] = []
    pairs = [(k, s) for k in config.shots for s in config.seeds]
    for shots, seed in tqdm(pairs, desc="few-shot (shots, seed)", disable=not progress):
        runs += jobs.run(shots, seed, shot_lists[(shots, seed)])
    indices = {**{f"shots{k}_seed{s}": idx for (k, s), idx in shot_lists.items()},
               **{f"val_seed{s}": idx for s, idx in jobs.val_lists.items()}}
    return {"runs": runs, "summary": summarize(runs, config.methods), "indices": indices,
            "validation": _describe_validation(config, jobs.val_lists), "logit": jobs.logit.describe()}


def _sample_shot_lists(source: FewShotSource, config: FewShotConfig, train_labels: Tensor,
                       index_dir: Path | None) -> dict[tuple[int, int], list[int]]:
    """The train rows of every (shots, seed), in that order; each list written to `index_dir` as it is drawn."""
    shot_lists: dict[tuple[int, int], list[int]] = {}
    for shots in config.shots:
        for seed in config.seeds:
            idx = sample_shots(train_labels, shots, seed, classnames=source.classnames, allow_fewer=config.allow_fewer)
            shot_lists[(shots, seed)] = idx
            if index_dir is not None:
                save_indices(Path(index_dir) / f"shots{shots}_seed{seed}.json", idx,
                             meta=_index_meta(source, shots=shots, seed=seed))
    return shot_lists


def _sample_val_lists(source: FewShotSource, config: FewShotConfig, train_labels: Tensor,
                      shot_lists: dict[tuple[int, int], list[int]], index_dir: Path | None) -> dict[int, list[int]]:
    """`config.val_from_train` validation rows per class for every seed, disjoint from that seed's shots;
    each list written to `index_dir` as val_seed<S>.json."""
    n = int(config.val_from_train)  # type: ignore[arg-type]
    val_lists: dict[int, list[int]] = {}
    for seed in config.seeds:
        own = {k: shot_lists[(k, seed)] for k in config.shots}
        val_lists[seed] = validation_indices(train_labels, own, n, seed, classnames=source.classnames,
                                             allow_fewer=config.allow_fewer)
        if index_dir is not None:
            save_indices(Path(index_dir) / f"val_seed{seed}.json", val_lists[seed],
                         meta=_index_meta(source, role="val", val_per_class=n, seed=seed,
                                          disjoint_from=[f"shots{k}_seed{seed}.json" for k in config.shots]))
    return val_lists


def _describe_validation(config: FewShotConfig, val_lists: dict[int, list[int]]) -> dict[str, Any]:
    """Where validation came from, for the results file."""
    if not val_lists:
        return {"source": "split 'val'"}
    return {"source": "train", "per_class": config.val_from_train, "disjoint_from": "the seed's shots",
            "indices": {f"seed{s}": f"val_seed{s}" for s in val_lists}}


@dataclass
class _Jobs:
    """What every (shots, seed) job shares: the test split (and its adapted twin), validation, zero-shot results."""

    source: FewShotSource
    config: FewShotConfig
    device: torch.device | str | None
    text: Tensor
    test: FeatureSplit
    test_labels: Tensor
    logit: LogitParams
    adapted_test: FeatureSplit | None = None
    val_lists: dict[int, list[int]] = field(default_factory=dict)
    validations: dict[int | None, tuple[FeatureSplit, FeatureSplit | None]] = field(default_factory=dict)
    zero_shot: dict[int | None, Prediction] = field(default_factory=dict)

    @classmethod
    def prepare(cls, source: FewShotSource, config: FewShotConfig, device: torch.device | str | None) -> _Jobs:
        """Load test (and the 'val' split, checked against test, unless validating on train) before sampling or
        encoding anything."""
        text = source.text.to(device) if device is not None else source.text
        test = _to(source.eval_split("test").require_rows("test", "the few-shot test score"), device)
        jobs = cls(source, config, device, text, test, test.labels("test"), logit_params(source.meta))
        if config.val_from_train is None:
            jobs.validation(config.seeds[0])  # guard before sampling or encoding anything
        if config.needs_adapted:
            jobs.adapted_test = _to(source.eval_split("test", adapted=True), device)
        return jobs

    def validation(self, seed: int) -> tuple[FeatureSplit, FeatureSplit | None]:
        """(val, adapted val or None) of `seed`: the source's 'val' split (checked against test once), or with
        --val-from-train the seed's train rows `val_lists[seed]`."""
        indices = self.val_lists.get(seed)
        key = seed if indices is not None else None
        if key not in self.validations:
            dataset = self.source.meta.get("dataset")
            if indices is None:
                try:
                    val = self.source.eval_split("val")
                except FeatureDirError as e:
                    raise FeatureDirError(f"{e}; or validate on train rows: --val-from-train N") from e
                val.require_rows("val", "the hyper-parameter search (or validate on train rows: --val-from-train N)")
                name, fix = "val", VAL_FIX
            else:
                val = self.source.train_eval_rows(indices)
                name, fix = f"val (--val-from-train {self.config.val_from_train}, from train)", CACHE_FIX
            check_disjoint(val, self.test, selection_name=name, dataset=dataset,
                           purpose="the hyper-parameter search", fix=fix)
            a_val = None
            if self.config.needs_adapted:
                a_val = _to(self.source.eval_split("val", adapted=True) if indices is None
                            else self.source.train_eval_rows(indices, adapted=True), self.device)
            self.validations[key] = (_to(val, self.device), a_val)
        return self.validations[key]

    def run(self, shots: int, seed: int, idx: list[int]) -> list[dict[str, Any]]:
        """One run record per method on the cache rows `idx` of (shots, seed)."""
        val, adapted_val = self.validation(seed)
        train, adapted_train = self._cache_rows(idx, seed)
        runs = []
        for method in self.config.methods:
            pred = self._predict(method, seed, train, val, adapted_train, adapted_val)
            runs.append({"method": method, "shots": shots, "seed": seed, "cache_size": len(idx), "val_size": val.n,
                         "test_top1": _score_test(pred.test_logits, self.test_labels)["top1"],
                         "val_top1": pred.val_top1, "hyperparameters": pred.hyperparameters})
            log.debug("%s", runs[-1])
        return runs

    def _cache_rows(self, idx: list[int], seed: int) -> tuple[FeatureSplit, FeatureSplit | None]:
        """The cache's train rows (checked against test) and, for TA++/TX++, their adapted twins."""
        train = _to(self.source.train_rows(idx, seed), self.device)
        check_disjoint(train, self.test, selection_name="train", dataset=self.source.meta.get("dataset"),
                       purpose="the Tip-Adapter cache", fix=CACHE_FIX)
        adapted = _to(self.source.train_rows(idx, seed, adapted=True),
                      self.device) if self.config.needs_adapted else None
        return train, adapted

    def _predict(self, method: str, seed: int, train: FeatureSplit, val: FeatureSplit,
                 adapted_train: FeatureSplit | None, adapted_val: FeatureSplit | None) -> Prediction:
        """`fit_and_predict` for one method; zero-shot is computed once per validation split (it has no cache)."""
        if method == "zeroshot":
            key = seed if self.val_lists else None
            if key not in self.zero_shot:
                self.zero_shot[key] = fit_and_predict(method, self.config, self.text, None, val, self.test.image,
                                                      seed=seed, logit=self.logit)
            return self.zero_shot[key]
        adapted = None
        if METHOD_TABLE[method][2]:
            assert self.adapted_test is not None and adapted_train is not None and adapted_val is not None
            adapted = (adapted_train, adapted_val, self.adapted_test.image)
        return fit_and_predict(method, self.config, self.text, train, val, self.test.image, seed=seed, adapted=adapted,
                               logit=self.logit)


def summarize(runs: list[dict[str, Any]], methods: list[str]) -> list[dict[str, Any]]:
    """Mean ± std of test (and val) top-1 over seeds, per (method, shots), methods in the order given."""
    rows = []
    for method in methods:
        for shots in sorted({r["shots"] for r in runs if r["method"] == method}):
            group = [r for r in runs if r["method"] == method and r["shots"] == shots]
            mean, std = mean_std(r["test_top1"] for r in group)
            val_mean, _ = mean_std(r["val_top1"] for r in group)
            rows.append({"method": method, "shots": shots, "test_top1_mean": mean, "test_top1_std": std,
                         "val_top1_mean": val_mean, "seeds": len(group)})
    return rows


def summary_pivot(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method, one 'K-shot' column per shots value holding 'mean ± std'."""
    out: dict[str, dict[str, Any]] = {}
    for row in summary:
        out.setdefault(row["method"], {"method": row["method"]})[f"{row['shots']}-shot"] = (
            f"{row['test_top1_mean']:.2f} ± {row['test_top1_std']:.2f}"
        )
    return list(out.values())
