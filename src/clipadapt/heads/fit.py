"""Fitting a head: the few-shot protocol of `clipadapt fewshot` for one (shots, seed, method), or DN / zero-shot as
`clipadapt eval --method` computes them — the same estimators, sampling, validation and search code
(clipadapt.eval.fewshot.fit_method), so the stored classifier scores a test split exactly as those commands do.

`fit_fewshot` samples K shots per class with the seed (clipadapt.data.fewshot; `shots=None`: every train row),
validates on the source's 'val' split or on `config.val_from_train` train rows per class disjoint from the
shots, and searches α/β(/γ) on validation. When the source has a test split, validation and cache rows are
checked against it first (clipadapt.eval.protocol), as in `fewshot`; test is never scored here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipadapt.constants import DEFAULT_LAMBDA, DEFAULT_TEXT_MEAN
from clipadapt.errors import ClipadaptError, ConfigError
from clipadapt.eval.fewshot import (
    CACHE_FIX,
    METHOD_TABLE,
    VAL_FIX,
    DirectorySource,
    FewShotConfig,
    FewShotSource,
    fit_method,
    sample_shots,
    validation_indices,
)
from clipadapt.eval.metrics import topk_accuracy
from clipadapt.eval.protocol import check_disjoint
from clipadapt.features.featureset import FeatureSplit, LogitParams, logit_params
from clipadapt.heads.head import ESTIMATORS, Head
from clipadapt.methods.dn import DistributionNormalizer
from clipadapt.methods.zeroshot import ZeroShotClassifier


@dataclass
class FitResult:
    """The fitted estimator and how it was chosen: `selection` goes into the head's metadata."""

    estimator: Any
    selection: dict[str, Any]


def _test_split(source: FewShotSource) -> FeatureSplit | None:
    """The source's test split when it has one loaded (a feature directory); the pipeline never encodes test here."""
    if isinstance(source, DirectorySource) and source.features.has_split("test"):
        return source.eval_split("test")
    return None


def fit_fewshot(source: FewShotSource, method: str, config: FewShotConfig, *, shots: int | None,
                seed: int, val_split: str = "val") -> FitResult:
    """`method` (a clipadapt.eval.fewshot.METHOD_TABLE name) fitted on `shots` per class (None: all train rows)
    drawn with `seed`, its hyper-parameters searched on validation exactly as `fewshot` does (on the split
    `val_split`, or on train rows with `config.val_from_train`)."""
    if method not in METHOD_TABLE:
        raise ConfigError(f"fit_fewshot: unknown method {method!r}; available: {', '.join(METHOD_TABLE)}")
    _, family, adapted = METHOD_TABLE[method]
    dataset = source.meta.get("dataset")
    test = _test_split(source)
    train_labels = source.train_labels() if family is not None or config.val_from_train else None
    idx: list[int] | None = None
    if family is not None:
        assert train_labels is not None
        idx = (sample_shots(train_labels, shots, seed, classnames=source.classnames, allow_fewer=config.allow_fewer)
               if shots else list(range(int(train_labels.shape[0]))))
    val_idx = None
    if config.val_from_train:
        assert train_labels is not None
        val_idx = validation_indices(train_labels, {shots or 0: idx or []}, config.val_from_train, seed,
                                     classnames=source.classnames, allow_fewer=config.allow_fewer)
        val = source.train_eval_rows(val_idx)
        a_val = source.train_eval_rows(val_idx, adapted=True) if adapted else None
        val_name, fix = f"val (--val-from-train {config.val_from_train}, from train)", CACHE_FIX
    else:
        val = source.eval_split(val_split)
        a_val = source.eval_split(val_split, adapted=True) if adapted else None
        val_name, fix = val_split, VAL_FIX
    if test is not None:
        check_disjoint(val, test, selection_name=val_name, dataset=dataset, purpose="the hyper-parameter search",
                       fix=fix)
    train = a_train = None
    if idx is not None:
        train = source.train_rows(idx, seed)
        if test is not None:
            check_disjoint(train, test, selection_name="train", dataset=dataset, purpose="the Tip-Adapter cache",
                           fix=CACHE_FIX)
        a_train = source.train_rows(idx, seed, adapted=True) if adapted else None
    pair = (a_train, a_val) if adapted else None
    logit = logit_params(source.meta)  # the model's own scale/bias when meta.json records them, as `fewshot`
    fitted = fit_method(method, config, source.text, train, val, seed=seed, adapted=pair,  # type: ignore[arg-type]
                        logit=logit)
    validation = ({"source": f"split '{val_split}'", "n": val.n} if val_idx is None else
                  {"source": "train", "per_class": config.val_from_train, "n": val.n, "indices": val_idx,
                   "disjoint_from": "the shots"})
    selection = {"hyperparameters": fitted.hyperparameters, "val_top1": fitted.val_top1, "validation": validation,
                 "shots": shots if family is not None else None, "seed": seed if family is not None else None,
                 "cache_size": len(idx) if idx is not None else None, "cache_indices": idx,
                 "grid_preset": config.grid_preset, "tie_break": config.tie_break,
                 "searched": family is not None, "logit": logit.describe()}
    return FitResult(fitted.model, selection)


def fit_zeroshot(text, val: FeatureSplit | None, *, logit: LogitParams | None = None,
                 val_split: str = "val") -> FitResult:
    """Zero-shot as `eval --method zeroshot` computes it (`logit`: the model's scale and bias, default 100 / 0);
    the validation accuracy when a labelled val is given."""
    logit = logit or LogitParams()
    model = ZeroShotClassifier(**logit.kwargs()).fit(text)
    return FitResult(model, {"hyperparameters": model.get_params(), "val_top1": _val_top1(model, val),
                             "validation": {"source": f"split '{val_split}'", "n": val.n} if val is not None else None,
                             "searched": False, "logit": logit.describe()})


def fit_dn(text, pool: FeatureSplit, *, pool_name: str, val: FeatureSplit | None = None, lam: float = DEFAULT_LAMBDA,
           n_samples: int | None = 100, seed: int = 0, text_mean: str = DEFAULT_TEXT_MEAN,
           logit: LogitParams | None = None, val_split: str = "val") -> FitResult:
    """DN as `eval --method dn` computes it: the means drawn from `pool` (the unlabeled/val split given at fit
    time) and stored, so a head scores one image alone (docs/heads.md: stored vs transductive DN)."""
    logit = logit or LogitParams()
    model = DistributionNormalizer(lam=lam, n_samples=n_samples, seed=seed, text_mean=text_mean,
                                   **logit.kwargs()).fit(pool.image, text)
    info = model.describe()
    return FitResult(model, {"hyperparameters": {"lambda": lam, "n_samples": "all" if n_samples is None else n_samples,
                                                 "seed": seed, "text_mean": text_mean, **logit.kwargs()},
                             "val_top1": _val_top1(model, val),
                             "validation": {"source": f"split '{val_split}'", "n": val.n} if val is not None else None,
                             "dn": {"pool": pool_name, "pool_rows": pool.n, **info,
                                    "mean": "stored (fitted on the pool at fit time), not the test batch's"},
                             "searched": False, "logit": logit.describe()})


def _val_top1(model, val: FeatureSplit | None) -> float | None:
    if val is None or val.label is None:
        return None
    return topk_accuracy(model.predict_logits(val.image), val.label, (1,))["top1"]


# ------------------------------------------------------------------------------------------------ the model block
def weights_sha256(model_id: str, fingerprint: dict[str, Any] | None, *, look_for_file: bool) -> str | None:
    """sha256 of the model's weights file: a checkpoint's from its fingerprint; with `look_for_file` (an encoder
    was or will be loaded, so the weights are local) the local file of a tag/hub id; else None."""
    weights = (fingerprint or {}).get("weights") or {}
    if weights.get("kind") == "checkpoint":
        return weights.get("sha256")
    if not look_for_file or weights.get("kind") in (None, "random-init"):
        return None
    try:
        from clipadapt.encoders import parse_model_id
        from clipadapt.encoders.weights import file_sha256, resolve_weights

        local = resolve_weights(parse_model_id(model_id))["local"]
    except ClipadaptError:
        return None
    if local is None:
        return None
    local = Path(local)
    if local.is_dir():  # a hub snapshot: its weights file
        files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin"))
        local = files[0] if files else local
    return file_sha256(local) if local.is_file() else None


def model_block(meta: dict[str, Any], *, encoder_loaded: bool) -> dict[str, Any]:
    """What the head records of its model: id, whether clipadapt can build it (else: features only), weights
    (fingerprint and sha256), preprocessing, and the encoder fingerprint the features were computed with."""
    model_id = meta.get("model")
    fingerprint = meta.get("encoder")
    encodable = False
    if model_id:
        try:
            from clipadapt.encoders import encoder_fingerprint

            fingerprint = fingerprint or encoder_fingerprint(model_id, device="cpu")
            encodable = True
        except ClipadaptError:
            fingerprint = None
    fingerprint = dict(fingerprint or {})
    return {
        "id": str(fingerprint.get("model_id") or model_id) if model_id else None,
        "encodable": encodable,
        "weights": fingerprint.get("weights"),
        "weights_sha256": (weights_sha256(str(model_id), fingerprint, look_for_file=encoder_loaded)
                           if encodable else None),
        "preprocessing": fingerprint.get("preprocessing"),
        "encoder": fingerprint or None,
    }


def adapter_block(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, tensors) of an IMO adapter checkpoint, stored in a TA++/TX++ head."""
    from clipadapt.adapters.imo_adapter import _STRUCTURE_KEYS, adapter_checkpoint_sha256, load_adapter_checkpoint

    tensors, config = load_adapter_checkpoint(path)
    structure = {k: config[k] for k in _STRUCTURE_KEYS}
    return {"structure": structure, "sha256": adapter_checkpoint_sha256(path), "source": str(path)}, tensors


def build_head(method: str, result: FitResult, *, classnames: list[str], templates: list[str] | None, dim: int,
               model: dict[str, Any], provenance: dict[str, Any] | None = None, adapter: dict[str, Any] | None = None,
               adapter_tensors: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> Head:
    """A Head from a fit result and the facts its metadata records."""
    if method not in ESTIMATORS:
        raise ConfigError(f"unknown head method {method!r}; available: {', '.join(ESTIMATORS)}")
    selection = {k: v for k, v in result.selection.items() if k != "dn"}
    val = selection.get("val_top1")
    if isinstance(val, float) and math.isnan(val):
        selection["val_top1"] = None
    meta: dict[str, Any] = {
        "method": method,
        "classnames": list(classnames),
        "templates": list(templates) if templates else None,
        "dim": int(dim),
        "model": model,
        "selection": selection,
        "adapter": adapter,
        "data": data,
        "provenance": provenance,
        "notes": _notes(method),
    }
    if "dn" in result.selection:
        meta["dn"] = result.selection["dn"]
    return Head(result.estimator, meta, adapter_tensors)


def _notes(method: str) -> list[str]:
    notes = []
    if method == "dn":
        notes.append("DN uses the image/text means stored at fit time (docs/heads.md), not a mean over the images "
                     "being predicted (transductive DN)")
    if method in ("tipx", "tipx++"):
        notes.append("Tip-X's psi rescales the KL term over the rows scored together: score a whole set in one call")
    if ESTIMATORS[method][1]:
        notes.append("TA++/TX++: images are encoded twice, without and with the stored IMO adapter")
    return notes
