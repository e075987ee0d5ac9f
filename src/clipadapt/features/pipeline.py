"""`get_feature_set`: (model, dataset, splits) -> FeatureSet, through the cache; the encoder is loaded only
when something is missing, so a second run never touches it."""

from __future__ import annotations

import argparse
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping

from clipadapt.errors import ConfigError, DatasetError
from clipadapt.features.cache import FeatureCache, canonical_json, dataset_fingerprint, image_key, text_key
from clipadapt.features.extract import DEFAULT_SHARD_SIZE, extract_split, extract_text, read_skipped
from clipadapt.features.shards import remove_stale_temp_files
from clipadapt.features.featureset import FeatureSet, FeatureSplit

log = logging.getLogger(__name__)

DEFAULT_SPLITS = ("train", "val", "test")
DEFAULT_TEMPLATES = ("a photo of a {}.",)


_ENCODERS: OrderedDict[str, Any] = OrderedDict()  # recently loaded encoders, reused by later calls
ENCODER_MEMO_SIZE = 2  # e.g. a model with and without its adapter, alternating in the few-shot protocol


def clear_encoder_memo() -> None:
    """Forget the encoders kept for reuse (frees their memory)."""
    _ENCODERS.clear()


class _LazyEncoder:
    """Loads the encoder on first use only, reusing one loaded by a recent call with the same fingerprint."""

    def __init__(self, model: str | None, *, device, precision: str, adapter, fingerprint: dict, encoder=None):
        self.model, self.device, self.precision, self.adapter = model, device, precision, adapter
        self.encoder = encoder
        self.memo_key = canonical_json({"encoder": fingerprint, "device": str(device)})

    def get(self):
        if self.encoder is None and self.memo_key in _ENCODERS:
            _ENCODERS.move_to_end(self.memo_key)
            self.encoder = _ENCODERS[self.memo_key]
        if self.encoder is None:
            from clipadapt.encoders import load_encoder

            log.info("loading encoder %s", self.model)
            self.encoder = load_encoder(self.model, device=self.device, precision=self.precision, adapter=self.adapter)
            _ENCODERS[self.memo_key] = self.encoder
            while len(_ENCODERS) > ENCODER_MEMO_SIZE:
                _ENCODERS.popitem(last=False)
        return self.encoder


def _build_datasets(dataset: Any, splits: Iterable[str], indices: Mapping[str, list[int]] | None) -> dict[str, Any]:
    """{split: dataset}: built from a spec string by clipadapt.data, or given directly as {split: dataset}."""
    if isinstance(dataset, str):
        from clipadapt.data import build_dataset  # lazy: the data package is only needed for specs

        built = {s: build_dataset(dataset, s) for s in splits}
    elif isinstance(dataset, Mapping):
        missing = [s for s in splits if s not in dataset]
        if missing:
            raise DatasetError(f"dataset has no split {missing[0]!r}; available: {sorted(dataset)}")
        built = {s: dataset[s] for s in splits}
    else:
        raise ConfigError(f"dataset must be a spec string or a {{split: dataset}} mapping, got {type(dataset).__name__}")
    for split, idx in (indices or {}).items():
        if split in built:
            built[split] = built[split].subset(list(idx))
    return built


def _views_for(views: int | Mapping[str, int], split: str) -> int:
    v = views.get(split, 1) if isinstance(views, Mapping) else views
    if int(v) < 1:
        raise ConfigError(f"views for split '{split}' must be >= 1, got {v}")
    return int(v)


def _dataset_label(dataset: Any, datasets: dict[str, Any]) -> str:
    if isinstance(dataset, str):
        return dataset
    return str(getattr(next(iter(datasets.values())), "name", "dataset"))


def get_feature_set(
    model: str | None,
    dataset: str | Mapping[str, Any],
    splits: Iterable[str] = DEFAULT_SPLITS,
    *,
    views: int | Mapping[str, int] = 1,
    seed: int = 0,
    indices: Mapping[str, list[int]] | None = None,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 64,
    adapter: str | Path | None = None,
    on_error: str = "fail",
    encoder=None,
    precision: str = "auto",
    num_workers: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    file_check: str = "stat",
) -> FeatureSet:
    """Raw image embeddings of `splits` and class text embeddings for (model, dataset), cached.

    `views`: an int for every split or {split: V} (V > 1 = seeded augmented views, e.g. {'train': 10}).
    `indices`: {split: row indices} to encode a subset (e.g. few-shot samples). `encoder`: an already
    loaded Encoder to use instead of loading `model`. `file_check`: how the key notices image files edited in
    place — 'stat' (size + mtime, default), 'sha256' (hash every file: exact, slow) or 'none'.

    Each entry is filled under its inter-process lock (`FeatureCache.lock`): processes asking for the same
    features at once encode them once; the others wait and read the result.
    """
    from clipadapt.encoders import encoder_fingerprint

    splits = list(dict.fromkeys(splits))
    if not splits:
        raise ConfigError("no splits requested")
    if encoder is not None:
        if model is not None and str(model) != encoder.model_id:
            from clipadapt.encoders import parse_model_id

            if str(parse_model_id(model)) != encoder.model_id:
                raise ConfigError(f"model '{model}' differs from the given encoder's model '{encoder.model_id}'")
        fingerprint = encoder.fingerprint()
    elif model is None:
        raise ConfigError("give a model id (e.g. ViT-B-32@openai) or an encoder")
    else:
        fingerprint = encoder_fingerprint(model, device=device, precision=precision, adapter=adapter)
    lazy = _LazyEncoder(model, device=device, precision=precision, adapter=adapter, fingerprint=fingerprint, encoder=encoder)
    cache = FeatureCache(cache_dir)
    datasets = _build_datasets(dataset, splits, indices)

    first = datasets[splits[0]]
    classnames = list(first.classnames)
    for split, ds in datasets.items():
        if list(ds.classnames) != classnames:
            raise DatasetError(f"split '{split}' of {_dataset_label(dataset, datasets)} has other class names than '{splits[0]}'")
    templates = list(getattr(first, "templates", None) or DEFAULT_TEMPLATES)

    tkey = text_key(fingerprint, classnames, templates)
    text_entry = cache.text_entry(tkey)
    with cache.lock(text_entry):
        text = cache.load_text(tkey)
        if text is None:
            text = extract_text(lazy.get(), classnames, templates, progress=progress)
            cache.save_text(tkey, text)

    feature_splits: dict[str, FeatureSplit] = {}
    entries, skipped_counts = {}, {}
    for split in splits:
        ds = datasets[split]
        v = _views_for(views, split)
        key = image_key(fingerprint, dataset_fingerprint(ds, file_check=file_check, progress=progress), views=v, seed=seed)
        entry = cache.image_entry(key)
        meta = {
            "classnames": classnames,
            "model": fingerprint["model_id"],
            "dataset": _dataset_label(dataset, datasets),
            "templates": templates,
            "split": split,
            "views": v,
            "seed": seed if v > 1 else None,
            "cache_key": entry.digest,
            "text_cache_key": text_entry.digest,
        }
        with cache.lock(entry):
            features, skipped, hit = _cached_or_encoded(
                cache, entry, key, ds, split, len(classnames), lazy, views=v, seed=seed, batch_size=batch_size,
                num_workers=num_workers, on_error=on_error, shard_size=shard_size, progress=progress,
            )
            cache.attach_text(entry, text_entry, meta)
        if hit:
            log.info("cached features for %s/%s: %s", _dataset_label(dataset, datasets), split, entry.path)
        feature_splits[split] = features
        entries[split] = str(entry.path)
        skipped_counts[split] = len(skipped)

    meta = {
        "model": fingerprint["model_id"],
        "dataset": _dataset_label(dataset, datasets),
        "templates": templates,
        "views": {s: _views_for(views, s) for s in splits},
        "seed": seed,
        "encoder": fingerprint,
        "cache": entries,
        "text_cache": str(text_entry.path),
        "skipped": skipped_counts,
        "encoder_loaded": lazy.encoder is not None and encoder is None,  # True: something had to be encoded
    }
    return FeatureSet(classnames=classnames, text=text, splits=feature_splits, meta=meta)


def _cached_or_encoded(cache: FeatureCache, entry, key: dict, ds: Any, split: str, num_classes: int,
                       lazy: _LazyEncoder, *, views: int, seed: int, batch_size: int, num_workers: int,
                       on_error: str, shard_size: int, progress: bool) -> tuple[FeatureSplit, list[dict], bool]:
    """(features, skipped records, True if read from the cache) of one split.
    Call it holding the entry's lock: no other process writes into the entry meanwhile."""
    cached = cache.load_split(entry, split, num_classes)
    if cached is not None:
        if cached[1] and on_error == "fail":
            raise DatasetError(
                f"the cached features of split '{split}' dropped {len(cached[1])} unreadable images "
                f"(first: {cached[1][0]['path']}); pass on_error='skip' to accept that, or fix the images"
            )
        return cached[0], cached[1], True
    entry.begin()
    for directory in (entry.shard_dir, entry.path):  # left by a process that died mid-write (we hold the lock)
        remove_stale_temp_files(directory)
    features = extract_split(
        lazy.get(), ds, views=views, seed=seed, batch_size=batch_size, num_workers=num_workers,
        on_error=on_error, shard_dir=entry.shard_dir, shard_size=shard_size, key=key, progress=progress,
    )
    skipped = read_skipped(entry.shard_dir)
    cache.save_split(entry, split, features, skipped)
    return features, skipped, False


def _splits_from_args(args: argparse.Namespace) -> list[str]:
    """The evaluated split plus the splits the chosen `eval --method` reads."""
    splits = [getattr(args, "split", None) or "test"]
    method = getattr(args, "method", None)
    if method:
        from clipadapt.eval.registry import get_eval_method

        splits += list(get_eval_method(method).splits)
    return list(dict.fromkeys(splits))


def feature_set_from_args(args: argparse.Namespace, splits: Iterable[str] | None = None) -> FeatureSet:
    """get_feature_set driven by CLI arguments (--model, --dataset, --cache-dir, --device, --batch-size and,
    when a command defines them, --views/--train-views, --seed, --adapter, --on-error, --num-workers,
    --precision). `splits=None`: the evaluated split plus those the eval method needs."""
    splits = list(splits) if splits is not None else _splits_from_args(args)
    views: int | dict[str, int] = getattr(args, "views", None) or 1
    train_views = getattr(args, "train_views", None)
    if train_views:
        views = {s: (train_views if s == "train" else (views if isinstance(views, int) else 1)) for s in splits}
    return get_feature_set(
        args.model,
        args.dataset,
        splits,
        views=views,
        seed=getattr(args, "seed", None) or 0,
        indices=getattr(args, "indices", None),
        cache_dir=getattr(args, "cache_dir", None),
        device=getattr(args, "device", None),
        batch_size=getattr(args, "batch_size", None) or 64,
        adapter=getattr(args, "adapter", None),
        on_error=getattr(args, "on_error", None) or "fail",
        precision=getattr(args, "precision", None) or "auto",
        num_workers=getattr(args, "num_workers", None) or 0,
        file_check=getattr(args, "file_check", None) or "stat",
    )
