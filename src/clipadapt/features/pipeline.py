"""`get_feature_set`: (model, dataset, splits) -> FeatureSet, through the cache; the encoder is loaded only
when something is missing, so a second run never touches it. `get_sharded_feature_set`: the same, for splits
larger than memory — they stay as shards in the cache and come back as memory-mapped `ShardedSplit`s."""

from __future__ import annotations

import argparse
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from clipadapt.errors import ConfigError, DatasetError
from clipadapt.features.cache import CacheEntry, FeatureCache, canonical_json, dataset_fingerprint, image_key, text_key
from clipadapt.features.extract import (
    DEFAULT_SHARD_SIZE,
    encode_split_shards,
    extract_split,
    extract_text,
    read_skipped,
)
from clipadapt.features.featureset import FeatureSet, FeatureSplit
from clipadapt.features.io import load_split
from clipadapt.features.shards import ShardedFeatureSet, ShardedSplit, index_path, remove_stale_temp_files

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
    """Raw image embeddings of `splits` and class text embeddings for (model, dataset), cached, in memory.

    `views`: an int for every split or {split: V} (V > 1 = seeded augmented views, e.g. {'train': 10}).
    `indices`: {split: row indices} to encode a subset (e.g. few-shot samples). `encoder`: an already
    loaded Encoder to use instead of loading `model`. `file_check`: how the key notices image files edited in
    place — 'stat' (size + mtime, default), 'sha256' (hash every file: exact, slow) or 'none'.

    Each entry is filled under its inter-process lock (`FeatureCache.lock`): processes asking for the same
    features at once encode them once; the others wait and read the result. An entry stored sharded (by
    `get_sharded_feature_set`) is loaded from its shards.
    """
    request = _prepare(model, dataset, splits, indices=indices, cache_dir=cache_dir, device=device,
                       precision=precision, adapter=adapter, encoder=encoder, progress=progress)
    options = dict(batch_size=batch_size, num_workers=num_workers, on_error=on_error, shard_size=shard_size,
                   progress=progress)
    fetched = _fetch_splits(request, _cached_or_encoded, views=views, seed=seed, file_check=file_check, options=options)
    return FeatureSet(classnames=request.classnames, text=request.text, splits=fetched.splits,
                      meta=_feature_set_meta(request, fetched, views=views, seed=seed))


def get_sharded_feature_set(
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
) -> ShardedFeatureSet:
    """`get_feature_set` for splits larger than memory: each split stays in the cache as its shards plus a
    `<split>.shards.json` index and is returned as a memory-mapped `ShardedSplit`; nothing is assembled or
    concatenated in memory. Same arguments, same cache keys, locks, resume and verification as `get_feature_set`:
    an entry assembled earlier is reused as a one-shard split (no re-encoding), and a sharded entry serves a
    later `get_feature_set` call (loaded from its shards).
    """
    request = _prepare(model, dataset, splits, indices=indices, cache_dir=cache_dir, device=device,
                       precision=precision, adapter=adapter, encoder=encoder, progress=progress)
    options = dict(batch_size=batch_size, num_workers=num_workers, on_error=on_error, shard_size=shard_size,
                   progress=progress)
    fetched = _fetch_splits(request, _cached_or_encoded_sharded, views=views, seed=seed, file_check=file_check,
                            options=options)
    return ShardedFeatureSet(classnames=request.classnames, text=request.text, splits=fetched.splits,
                             meta=_feature_set_meta(request, fetched, views=views, seed=seed))


# ----------------------------------------------------------------------------------------- the shared steps
@dataclass
class _Request:
    """What every split of one call shares: the cache, the (lazy) encoder and its fingerprint, the datasets,
    the class names and templates, and the class text embeddings with their cache entry."""

    cache: FeatureCache
    lazy: _LazyEncoder
    fingerprint: dict[str, Any]
    datasets: dict[str, Any]
    label: str
    classnames: list[str]
    templates: list[str]
    encoder_given: bool
    text: Tensor | None = None
    text_entry: CacheEntry | None = None
    logit: dict[str, Any] | None = None  # the model's {'logit_scale', 'logit_bias'}, recorded with the text entry


@dataclass
class _Fetched:
    """Per split: the features (FeatureSplit or ShardedSplit), the cache entry path, the skipped-row count."""

    splits: dict[str, Any] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def _prepare(model, dataset, splits, *, indices, cache_dir, device, precision, adapter, encoder, progress) -> _Request:
    """Resolve the encoder fingerprint (without loading the model), build the datasets, check their class
    names agree, and fetch the class text embeddings (cached)."""
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise ConfigError("no splits requested")
    fingerprint = _encoder_fingerprint(model, encoder, device=device, precision=precision, adapter=adapter)
    lazy = _LazyEncoder(model, device=device, precision=precision, adapter=adapter, fingerprint=fingerprint, encoder=encoder)
    datasets = _build_datasets(dataset, splits, indices)
    label = _dataset_label(dataset, datasets)
    first = datasets[splits[0]]
    classnames = list(first.classnames)
    for split, ds in datasets.items():
        if list(ds.classnames) != classnames:
            raise DatasetError(f"split '{split}' of {label} has other class names than '{splits[0]}'")
    templates = list(getattr(first, "templates", None) or DEFAULT_TEMPLATES)
    request = _Request(FeatureCache(cache_dir), lazy, fingerprint, datasets, label, classnames, templates,
                       encoder_given=encoder is not None)
    request.text, request.text_entry = _class_text(request, progress)
    return request


def _encoder_fingerprint(model: str | None, encoder, *, device, precision: str, adapter) -> dict[str, Any]:
    """The given encoder's fingerprint (checked against `model`), else `model`'s, computed without loading it."""
    from clipadapt.encoders import encoder_fingerprint, parse_model_id

    if encoder is not None:
        if model is not None and str(model) != encoder.model_id and str(parse_model_id(model)) != encoder.model_id:
            raise ConfigError(f"model '{model}' differs from the given encoder's model '{encoder.model_id}'")
        return encoder.fingerprint()
    if model is None:
        raise ConfigError("give a model id (e.g. ViT-B-32@openai) or an encoder")
    return encoder_fingerprint(model, device=device, precision=precision, adapter=adapter)


def _class_text(request: _Request, progress: bool) -> tuple[Tensor, CacheEntry]:
    """The (C, T, D) class text embeddings, from the cache or encoded under the text entry's lock."""
    key = text_key(request.fingerprint, request.classnames, request.templates)
    entry = request.cache.text_entry(key)
    with request.cache.lock(entry):
        text = request.cache.load_text(key)
        request.logit = entry.manifest().get("logit") if text is not None else None
        if request.logit is None:  # an entry from before logit scales were recorded is re-encoded once
            encoder = request.lazy.get()
            text = extract_text(encoder, request.classnames, request.templates, progress=progress)
            params = getattr(encoder, "logit_params", None)  # an Encoder-like object without it: the default
            request.logit = params() if params is not None else {}
            request.cache.save_text(key, text, extra={"logit": request.logit})
    return text, entry


def _fetch_splits(request: _Request, fetch: Callable[..., tuple[Any, list[dict], bool]], *, views, seed: int,
                  file_check: str, options: dict[str, Any]) -> _Fetched:
    """Each split through its cache entry: under the entry's lock, `fetch` returns it cached or encodes it
    (`_cached_or_encoded` in memory, `_cached_or_encoded_sharded` as shards); the class text is attached."""
    out = _Fetched()
    for split, ds in request.datasets.items():
        v = _views_for(views, split)
        key = image_key(request.fingerprint, dataset_fingerprint(ds, file_check=file_check, progress=options["progress"]),
                        views=v, seed=seed)
        entry = request.cache.image_entry(key)
        with request.cache.lock(entry):
            features, skipped, hit = fetch(request.cache, entry, key, ds, split, len(request.classnames), request.lazy,
                                           views=v, seed=seed, **options)
            request.cache.attach_text(entry, request.text_entry, _entry_meta(request, split, v, seed, entry))
        if hit:
            log.info("cached features for %s/%s: %s", request.label, split, entry.path)
        out.splits[split], out.entries[split], out.skipped[split] = features, str(entry.path), len(skipped)
    return out


def _entry_meta(request: _Request, split: str, views: int, seed: int, entry: CacheEntry) -> dict[str, Any]:
    """meta.json of one image entry (which makes the entry a feature directory)."""
    return {
        "classnames": request.classnames,
        "model": request.fingerprint["model_id"],
        "dataset": request.label,
        "templates": request.templates,
        "split": split,
        "views": views,
        "seed": seed if views > 1 else None,
        "cache_key": entry.digest,
        "text_cache_key": request.text_entry.digest,
        **(request.logit or {}),
    }


def _feature_set_meta(request: _Request, fetched: _Fetched, *, views, seed: int) -> dict[str, Any]:
    """The returned set's meta: model, dataset, templates, views, seed, encoder, entries, skipped counts."""
    return {
        "model": request.fingerprint["model_id"],
        "dataset": request.label,
        "templates": request.templates,
        "views": {s: _views_for(views, s) for s in request.datasets},
        "seed": seed,
        "encoder": request.fingerprint,
        "cache": fetched.entries,
        "text_cache": str(request.text_entry.path),
        "skipped": fetched.skipped,
        "encoder_loaded": request.lazy.encoder is not None and not request.encoder_given,  # True: something was encoded
        **(request.logit or {}),
    }


def _refuse_skipped(split: str, skipped: list[dict], on_error: str) -> None:
    """A cached split with dropped rows is refused under on_error='fail' (never silently reduced)."""
    if skipped and on_error == "fail":
        raise DatasetError(
            f"the cached features of split '{split}' dropped {len(skipped)} unreadable images "
            f"(first: {skipped[0]['path']}); pass on_error='skip' to accept that, or fix the images"
        )


def _begin_encoding(entry: CacheEntry) -> None:
    """Create the entry (key.json) and delete temp files a process that died mid-write left (we hold the lock)."""
    entry.begin()
    for directory in (entry.shard_dir, entry.path):
        remove_stale_temp_files(directory)


def _cached_or_encoded(cache: FeatureCache, entry: CacheEntry, key: dict, ds: Any, split: str, num_classes: int,
                       lazy: _LazyEncoder, *, views: int, seed: int, batch_size: int, num_workers: int,
                       on_error: str, shard_size: int, progress: bool) -> tuple[FeatureSplit, list[dict], bool]:
    """(features in memory, skipped records, True if read from the cache) of one split; a miss encodes the
    missing shards, assembles them and publishes `<split>.safetensors`. Call it holding the entry's lock."""
    cached = cache.load_split(entry, split, num_classes)
    if cached is not None:
        _refuse_skipped(split, cached[1], on_error)
        return cached[0], cached[1], True
    if index_path(entry.path, split).is_file():  # stored as shards: repair it as shards, never assemble it (a
        # reader may hold a ShardedSplit of these files; assembling would delete them under it)
        sharded, skipped, _ = _cached_or_encoded_sharded(
            cache, entry, key, ds, split, num_classes, lazy, views=views, seed=seed, batch_size=batch_size,
            num_workers=num_workers, on_error=on_error, shard_size=shard_size, progress=progress)
        return load_split(entry.path, split, num_classes=num_classes, dim=sharded.dim), skipped, False
    _begin_encoding(entry)
    features = extract_split(
        lazy.get(), ds, views=views, seed=seed, batch_size=batch_size, num_workers=num_workers,
        on_error=on_error, shard_dir=entry.shard_dir, shard_size=shard_size, key=key, progress=progress,
    )
    skipped = read_skipped(entry.shard_dir)
    cache.save_split(entry, split, features, skipped)
    return features, skipped, False


def _cached_or_encoded_sharded(cache: FeatureCache, entry: CacheEntry, key: dict, ds: Any, split: str,
                               num_classes: int, lazy: _LazyEncoder, *, views: int, seed: int, batch_size: int,
                               num_workers: int, on_error: str, shard_size: int,
                               progress: bool) -> tuple[ShardedSplit, list[dict], bool]:
    """(memory-mapped split, skipped records, True if read from the cache) of one split; a miss encodes the
    missing shards and publishes them with an index, never assembling. Call it holding the entry's lock."""
    cached = cache.open_sharded(entry, split)
    if cached is not None:
        _refuse_skipped(split, cached[1], on_error)
        return cached[0], cached[1], True
    _begin_encoding(entry)
    shards = encode_split_shards(
        lazy.get(), ds, views=views, seed=seed, batch_size=batch_size, num_workers=num_workers,
        on_error=on_error, shard_dir=entry.shard_dir, shard_size=shard_size, key=key, progress=progress,
    )
    skipped = read_skipped(entry.shard_dir)
    return cache.publish_shards(entry, split, shards, getattr(ds, "paths", None), skipped), skipped, False


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
