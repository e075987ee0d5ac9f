"""`get_feature_set`: (model, dataset, splits) -> FeatureSet, through the cache; the encoder is loaded only
when something is missing, so a second run never touches it. Every cache entry stores its split as shards plus
an index: `get_sharded_feature_set` returns them as memory-mapped `ShardedSplit`s (splits larger than memory),
`get_feature_set` loads them into memory. How images are encoded is one `ExtractOptions`."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from clipadapt.errors import ConfigError, DatasetError
from clipadapt.features.cache import (
    CacheEntry,
    FeatureCache,
    cache_writes,
    canonical_json,
    dataset_fingerprint,
    image_key,
    text_key,
)
from clipadapt.features.extract import ExtractOptions, encode_split_shards, extract_text, read_skipped
from clipadapt.features.featureset import FeatureSet
from clipadapt.features.shards import ShardedFeatureSet

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
        raise ConfigError(f"dataset must be a spec string or a {{split: dataset}} mapping, got "
                          f"{type(dataset).__name__}")
    for split, idx in (indices or {}).items():
        if split in built:
            built[split] = built[split].subset(list(idx))
    return built


def get_feature_set(model: str | None, dataset: str | Mapping[str, Any], splits: Iterable[str] = DEFAULT_SPLITS,
                    options: ExtractOptions | None = None, *, indices: Mapping[str, list[int]] | None = None,
                    cache_dir: str | Path | None = None, device: str | None = None, adapter: str | Path | None = None,
                    encoder=None, **option_values: Any) -> FeatureSet:
    """Raw image embeddings of `splits` and class text embeddings for (model, dataset), cached, in memory.

    `options` (`ExtractOptions`, or its fields given as keywords, e.g. `views={'train': 10}, batch_size=32`):
    `views` an int for every split or {split: V} (V > 1 = seeded augmented views); `file_check` how the key
    notices image files edited in place — 'stat' (size + mtime, default), 'sha256' (exact, slow) or 'none'.
    `indices`: {split: row indices} to encode a subset (e.g. few-shot samples). `encoder`: an already loaded
    Encoder to use instead of loading `model`.

    Each split is the sharded cache entry of `get_sharded_feature_set` loaded into memory. Each entry is filled
    under its inter-process lock (`FeatureCache.lock`): processes asking for the same features at once encode
    them once; the others wait and read the result.
    """
    request = _prepare(model, dataset, splits, ExtractOptions.of(options, **option_values), indices=indices,
                       cache_dir=cache_dir, device=device, adapter=adapter, encoder=encoder)
    fetched = _fetch_splits(request, in_memory=True)
    return FeatureSet(classnames=request.classnames, text=request.text, splits=fetched.splits,
                      meta=_feature_set_meta(request, fetched))


def get_sharded_feature_set(model: str | None, dataset: str | Mapping[str, Any],
                            splits: Iterable[str] = DEFAULT_SPLITS, options: ExtractOptions | None = None, *,
                            indices: Mapping[str, list[int]] | None = None, cache_dir: str | Path | None = None,
                            device: str | None = None, adapter: str | Path | None = None, encoder=None,
                            **option_values: Any) -> ShardedFeatureSet:
    """`get_feature_set` for splits larger than memory: each split comes back as the cache entry's shards, a
    memory-mapped `ShardedSplit` (the `<split>.shards.json` index); nothing is assembled or concatenated in
    memory. Same arguments, cache entries, locks, resume and verification as `get_feature_set`.
    """
    request = _prepare(model, dataset, splits, ExtractOptions.of(options, **option_values), indices=indices,
                       cache_dir=cache_dir, device=device, adapter=adapter, encoder=encoder)
    fetched = _fetch_splits(request, in_memory=False)
    return ShardedFeatureSet(classnames=request.classnames, text=request.text, splits=fetched.splits,
                             meta=_feature_set_meta(request, fetched))


# ----------------------------------------------------------------------------------------- the shared steps
@dataclass
class _Request:
    """What every split of one call shares: the cache, the options, the (lazy) encoder and its fingerprint, the
    datasets, the class names and templates, and the class text embeddings with their cache entry."""

    cache: FeatureCache
    options: ExtractOptions
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


def _prepare(model, dataset, splits, options: ExtractOptions, *, indices, cache_dir, device, adapter,
             encoder) -> _Request:
    """Resolve the encoder fingerprint (without loading the model), build the datasets, check their class
    names agree, and fetch the class text embeddings (cached)."""
    splits = list(dict.fromkeys(splits))
    if not splits:
        raise ConfigError("no splits requested")
    for split in splits:
        options.for_split(split)  # views >= 1, checked before anything is built
    precision = options.precision
    fingerprint = _encoder_fingerprint(model, encoder, device=device, precision=precision, adapter=adapter)
    lazy = _LazyEncoder(model, device=device, precision=precision, adapter=adapter, fingerprint=fingerprint,
                        encoder=encoder)
    datasets = _build_datasets(dataset, splits, indices)
    first = datasets[splits[0]]
    label = dataset if isinstance(dataset, str) else str(getattr(first, "name", "dataset"))
    classnames = list(first.classnames)
    for split, ds in datasets.items():
        if list(ds.classnames) != classnames:
            raise DatasetError(f"split '{split}' of {label} has other class names than '{splits[0]}'")
    templates = list(getattr(first, "templates", None) or DEFAULT_TEMPLATES)
    request = _Request(FeatureCache(cache_dir), options, lazy, fingerprint, datasets, label, classnames, templates,
                       encoder_given=encoder is not None)
    request.text, request.text_entry = _class_text(request)
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


def _class_text(request: _Request) -> tuple[Tensor, CacheEntry]:
    """The (C, T, D) class text embeddings, from the cache or encoded under the text entry's lock."""
    key = text_key(request.fingerprint, request.classnames, request.templates)
    entry = request.cache.text_entry(key)
    with request.cache.lock(entry), cache_writes(entry.path):
        text = request.cache.load_text(key)
        request.logit = entry.manifest().get("logit") if text is not None else None
        if request.logit is None:  # an entry from before logit scales were recorded is re-encoded once
            encoder = request.lazy.get()
            text = extract_text(encoder, request.classnames, request.templates, progress=request.options.progress)
            params = getattr(encoder, "logit_params", None)  # an Encoder-like object without it: the default
            request.logit = params() if params is not None else {}
            request.cache.save_text(key, text, extra={"logit": request.logit})
    return text, entry


def _fetch_splits(request: _Request, *, in_memory: bool) -> _Fetched:
    """Each split through its cache entry, under the entry's lock: cached, migrated from an older cache version,
    or encoded and published as shards (`_cached_or_encoded`); loaded into memory when `in_memory`, else opened
    memory-mapped; the class text is attached (the entry is a feature directory)."""
    out = _Fetched()
    for split, ds in request.datasets.items():
        opts = request.options.for_split(split)
        fingerprint = dataset_fingerprint(ds, file_check=opts.file_check, progress=opts.progress)
        key = image_key(request.fingerprint, fingerprint, views=opts.views, seed=opts.seed)
        entry = request.cache.image_entry(key)
        with request.cache.lock(entry), cache_writes(entry.path):
            features, skipped, hit = _cached_or_encoded(request, entry, ds, split, opts, in_memory=in_memory)
            meta = _entry_meta(request, split, opts, entry)
            request.cache.attach_text(entry, request.text_entry, meta)
        if hit:
            log.info("cached features for %s/%s: %s", request.label, split, entry.path)
        out.splits[split], out.entries[split], out.skipped[split] = features, str(entry.path), len(skipped)
    return out


def _cached_or_encoded(request: _Request, entry: CacheEntry, ds: Any, split: str, opts: ExtractOptions, *,
                       in_memory: bool) -> tuple[Any, list[dict], bool]:
    """(the split — in memory or memory-mapped —, skipped records, True if read from the cache) of one split. A
    miss encodes the missing shards (resuming) and publishes them with an index, never assembling them; the
    in-memory form is then read from those shards. Call it holding the entry's lock."""
    cache, paths = request.cache, getattr(ds, "paths", None)

    def cached():
        if in_memory:
            return cache.load_split(entry, split, len(request.classnames))
        return cache.open_split(entry, split)

    found = cached()
    if found is None and cache.migrate(entry, split, paths, opts.shard_size):
        found = cached()
    if found is not None:
        _refuse_skipped(split, found[1], opts.on_error)
        return found[0], found[1], True
    entry.begin()
    shards = encode_split_shards(request.lazy.get(), ds, opts, shard_dir=entry.shard_dir, key=entry.key)
    skipped = read_skipped(entry.shard_dir)
    sharded = cache.publish_shards(entry, split, shards, paths, skipped)
    return (sharded.load() if in_memory else sharded), skipped, False


def _refuse_skipped(split: str, skipped: list[dict], on_error: str) -> None:
    """A cached split with dropped rows is refused under on_error='fail' (never silently reduced)."""
    if skipped and on_error == "fail":
        raise DatasetError(
            f"the cached features of split '{split}' dropped {len(skipped)} unreadable images "
            f"(first: {skipped[0]['path']}); pass on_error='skip' to accept that, or fix the images"
        )


def _entry_meta(request: _Request, split: str, opts: ExtractOptions, entry: CacheEntry) -> dict[str, Any]:
    """meta.json of one image entry (which makes the entry a feature directory)."""
    return {
        "classnames": request.classnames,
        "model": request.fingerprint["model_id"],
        "dataset": request.label,
        "templates": request.templates,
        "split": split,
        "views": opts.views,
        "seed": opts.seed if opts.views > 1 else None,
        "cache_key": entry.digest,
        "text_cache_key": request.text_entry.digest,
        **(request.logit or {}),
    }


def _feature_set_meta(request: _Request, fetched: _Fetched) -> dict[str, Any]:
    """The returned set's meta: model, dataset, templates, views, seed, encoder, entries, skipped counts."""
    return {
        "model": request.fingerprint["model_id"],
        "dataset": request.label,
        "templates": request.templates,
        "views": {s: request.options.for_split(s).views for s in request.datasets},
        "seed": request.options.seed,
        "encoder": request.fingerprint,
        "cache": fetched.entries,
        "text_cache": str(request.text_entry.path),
        "skipped": fetched.skipped,
        "encoder_loaded": request.lazy.encoder is not None and not request.encoder_given,  # True: something was encoded
        **(request.logit or {}),
    }
