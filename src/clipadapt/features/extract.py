"""Encode a dataset split into raw image embeddings, shard by shard, resumably; encode class prompts.

Shards cover fixed row ranges `[start, end)` of the dataset and are written with the project's one shard
writer, `features.shards.write_shard` (atomic; `<shard_dir>/rows-<start>-<end>.safetensors`, tensors `image`,
`row` and, for labelled data, `label`; the rows skipped for unreadable images are listed in the file's
metadata). A run finds the shards already written (`shards.missing_shards`) and encodes only the missing ones
(`encode_split_shards`); the shards are the split — `shards.ShardedSplit` reads them memory-mapped, and its
`load()` (the one assembler) copies them in row order into one tensor (`extract_split`). Because every shard is
independent (and the random views of row i depend only on (seed, i)), N processes can each encode a disjoint
block of `plan_shards(...)` (`features.distributed` under torchrun) and one process publishes them.

`ExtractOptions` carries how images are encoded (batch size, workers, on_error, shard size, precision, file
check, progress, views, seed), built once by the CLI and passed down unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from clipadapt.constants import DEFAULT_BATCH_SIZE
from clipadapt.encoders.augment import normalize_uint8, pil_to_uint8, row_generator, split_eval_transform
from clipadapt.errors import CacheError, ConfigError, DatasetError
from clipadapt.features.featureset import FeatureSplit
from clipadapt.features.shards import (
    DEFAULT_SHARD_SIZE,
    ShardedSplit,
    check_shard_key,
    missing_shards,
    plan_shards,
    shard_path,
    shard_skipped,
    write_shard,
)
from clipadapt.fileio import atomic_write_json, read_json

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")
SKIPPED_FILE = "skipped.json"


class DatasetLike(Protocol):
    """What extraction needs from a `clipadapt.data` dataset."""

    name: str
    split: str
    classnames: list[str]
    paths: Sequence[Any]

    def __len__(self) -> int: ...
    def __getitem__(self, i: int) -> tuple[Any, int]: ...


# ----------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ExtractOptions:
    """How images are encoded: built once (the CLI: `cli._common.extract_options`) and passed down unchanged
    through `get_feature_set`, `extract_distributed`, `encode_split_shards` and `encode_shards`.

    `views`: V seeded augmented views per image (V > 1), an int for every split or {split: V}; `seed` counts only
    with V > 1. `on_error`: 'fail' or 'skip' unreadable images. `shard_size`: rows per resumable shard.
    `precision`: the encoder's ('auto': AMP on cuda, fp32 on cpu). `file_check`: how the cache key notices image
    files edited in place ('stat', 'sha256', 'none')."""

    batch_size: int = DEFAULT_BATCH_SIZE
    num_workers: int = 0
    on_error: str = "fail"
    shard_size: int = DEFAULT_SHARD_SIZE
    precision: str = "auto"
    file_check: str = "stat"
    progress: bool = True
    views: int | Mapping[str, int] = 1
    seed: int = 0

    @classmethod
    def of(cls, options: ExtractOptions | None = None, **values: Any) -> ExtractOptions:
        """`options` (default: the defaults) with the fields named in `values` replaced (TypeError for others)."""
        return dataclasses.replace(options or cls(), **values)

    def for_split(self, split: str) -> ExtractOptions:
        """These options with `split`'s view count as an int (a ConfigError when it is below 1)."""
        v = self.views.get(split, 1) if isinstance(self.views, Mapping) else self.views
        if int(v) < 1:
            raise ConfigError(f"views for split '{split}' must be >= 1, got {v}")
        return dataclasses.replace(self, views=int(v))


# ----------------------------------------------------------------------------------------- loading rows
@dataclass
class _Item:
    row: int
    label: int
    pixels: Tensor | None
    error: str | None


class _RowDataset(torch.utils.data.Dataset):
    """Dataset rows -> pixels: (3, H, W) eval view, or (V, 3, H, W) seeded augmented views.

    When the eval transform ends in ToTensor + Normalize (open_clip's do), rows come out as uint8 after the PIL
    stage and are normalised per batch (`normalize_uint8`): less per-image work, 4x less data between worker
    processes and to the device. Errors never escape a worker: they come back as records and the main process
    decides (fail or skip).
    """

    def __init__(self, dataset: DatasetLike, preprocess, augment, views: int, seed: int):
        self.dataset, self.preprocess, self.augment = dataset, preprocess, augment
        self.views, self.seed = views, seed
        split = split_eval_transform(preprocess) if views == 1 else None
        self.pil_stage = split[0] if split else None
        self.uint8 = views > 1 or split is not None  # the augmentation always has a uint8 path
        # what `normalize_uint8` applies per batch to uint8 rows
        self.mean, self.std = (augment.mean, augment.std) if views > 1 else (split[1:] if split else (None, None))

    def __len__(self) -> int:
        return len(self.dataset)

    def _path(self, row: int) -> str:
        try:
            return str(self.dataset.paths[row])
        except (AttributeError, IndexError, TypeError):
            return f"row {row}"

    def _pixels(self, image, row: int) -> Tensor:
        if self.views > 1:
            return self.augment.views_uint8(image, self.views, row_generator(self.seed, row))
        if self.pil_stage is not None:
            return pil_to_uint8(self.pil_stage(image))
        return self.preprocess(image)

    def __getitem__(self, row: int) -> _Item:
        try:
            image, label = self.dataset[row]
            pixels = self._pixels(image, row)
        except DatasetError as e:
            return _Item(row, -1, None, str(e))
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for truncated / undecodable files
            return _Item(row, -1, None, f"{self._path(row)}: cannot read image ({type(e).__name__}: {e})")
        return _Item(row, -1 if label is None else int(label), pixels, None)


@dataclass
class _Batch:
    rows: list[int]
    labels: list[int]
    pixels: Tensor | None  # stacked pixels of the readable rows
    errors: list[_Item]

    def pin_memory(self) -> _Batch:  # called by DataLoader(pin_memory=True)
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self


def _collate(items: list[_Item]) -> _Batch:
    ok = [it for it in items if it.pixels is not None]
    return _Batch(
        rows=[it.row for it in ok],
        labels=[it.label for it in ok],
        pixels=torch.stack([it.pixels for it in ok]) if ok else None,
        errors=[it for it in items if it.pixels is None],
    )


def _batches(shards: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Row batches that never cross a shard boundary (so each shard can be written as soon as it is done)."""
    return [list(range(b, min(b + batch_size, end))) for start, end in shards for b in range(start, end, batch_size)]


def _threaded_batches(rows_ds: _RowDataset, batches: list[list[int]], pin: bool, ahead: int = 2) -> Iterator[_Batch]:
    """Batches decoded by one background thread, `ahead` batches in advance, in order.

    PIL decoding/resizing and the torch forward both release the GIL, so this overlaps image loading with
    encoding without worker processes (no start-up cost, no pickling of images between processes).
    """

    def load(rows: list[int]) -> _Batch:
        batch = _collate([rows_ds[r] for r in rows])
        return batch.pin_memory() if pin else batch

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipadapt-decode") as pool:
        pending: deque[Future] = deque(pool.submit(load, b) for b in batches[:ahead])
        for nxt in batches[ahead:] + [None] * len(pending):
            batch = pending.popleft().result()
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield batch


def _load_batches(rows_ds: _RowDataset, batches: list[list[int]], num_workers: int, pin: bool) -> Iterable[_Batch]:
    """num_workers > 0: a DataLoader with worker processes; 0: one background decoding thread."""
    if num_workers <= 0:
        return _threaded_batches(rows_ds, batches, pin)
    return DataLoader(
        rows_ds, batch_sampler=batches, num_workers=num_workers, collate_fn=_collate, pin_memory=pin,
        persistent_workers=False,
    )


# ----------------------------------------------------------------------------------------- encoding
def encode_shards(enc, dataset: DatasetLike, shards: Sequence[tuple[int, int]], shard_dir: Path,
                  options: ExtractOptions | None = None, **values: Any) -> None:
    """Encode the given shards and write each one atomically as soon as its last batch is encoded. `options`
    (or its fields given as `values`): views, seed, batch_size, num_workers, on_error, progress."""
    if not shards:
        return
    opts = ExtractOptions.of(options, **values)
    views, seed, on_error = int(opts.views), opts.seed, opts.on_error
    augment = enc.train_transform() if views > 1 else None
    rows_ds = _RowDataset(dataset, enc.preprocess, augment, views, seed)
    loader = _load_batches(rows_ds, _batches(shards, opts.batch_size), opts.num_workers, pin=enc.device.type == "cuda")
    bounds = {start: end for start, end in shards}
    total = sum(e - s for s, e in shards)
    desc = f"encode {getattr(dataset, 'name', 'dataset')}/{getattr(dataset, 'split', '?')}"
    current: dict[str, Any] | None = None
    with tqdm(total=total, desc=desc, unit="img", disable=not opts.progress, dynamic_ncols=True) as bar:
        for batch in loader:
            first = min(batch.rows + [it.row for it in batch.errors])
            if current is None:
                start = max(s for s in bounds if s <= first)
                current = {"start": start, "end": bounds[start], "image": [], "label": [], "row": [], "skipped": []}
            for item in batch.errors:
                if on_error == "fail":
                    raise DatasetError(f"{item.error} (use on_error='skip' / --on-error skip to drop "
                                       "unreadable images)")
                log.warning("skipping unreadable image: %s", item.error)
                current["skipped"].append({"row": item.row, "path": rows_ds._path(item.row), "error": item.error})
            if batch.pixels is not None:
                pixels = batch.pixels
                if rows_ds.uint8:  # normalise the whole batch at once, on the encoder's device
                    pixels = normalize_uint8(pixels.to(enc.device, non_blocking=True), rows_ds.mean, rows_ds.std)
                if views > 1:  # (B, V, 3, H, W) -> encode B*V, back to (B, V, D)
                    flat = enc.encode_images(pixels.flatten(0, 1))
                    current["image"].append(flat.view(pixels.shape[0], views, -1))
                else:
                    current["image"].append(enc.encode_images(pixels))
                current["label"].extend(batch.labels)
                current["row"].extend(batch.rows)
            bar.update(len(batch.rows) + len(batch.errors))
            done = len(current["row"]) + len(current["skipped"])
            if done == current["end"] - current["start"]:
                _write_shard(shard_dir, current, views)
                current = None


def _write_shard(shard_dir: Path, shard: dict[str, Any], views: int) -> None:
    """Write one encoded shard; 'label' only when every encoded row has one (unlabeled datasets give -1)."""
    image = torch.cat(shard["image"]) if shard["image"] else torch.zeros((0, views, 0) if views > 1 else (0, 0))
    label = torch.tensor(shard["label"], dtype=torch.long)
    write_shard(shard_dir, shard["start"], image, label if bool((label >= 0).all()) else None,
                stop=shard["end"], rows=torch.tensor(shard["row"], dtype=torch.long), skipped=shard["skipped"])


def encode_split_shards(enc, dataset: DatasetLike, options: ExtractOptions | None = None, *, shard_dir: Path,
                        key: dict[str, Any] | None = None, **values: Any) -> list[tuple[int, int]]:
    """Encode every shard of `dataset` not yet finished in `shard_dir`; returns the shard plan (row ranges).

    The split stays as shard files (`ShardedSplit` reads them), and `shard_dir/skipped.json` lists the rows
    dropped as unreadable. Resumable: finished shards are reused (pass `key` to have shards of a different
    computation discarded). Shards left by an earlier on_error='skip' run are refused under 'fail'. `options`
    or its fields given as `values` (`ExtractOptions`).
    """
    opts = ExtractOptions.of(options, **values)
    if opts.on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got '{opts.on_error}'")
    if int(opts.views) < 1:
        raise ConfigError(f"views must be >= 1, got {opts.views}")
    if opts.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {opts.batch_size}")
    n = len(dataset)
    if n == 0:
        raise DatasetError(f"dataset {getattr(dataset, 'name', '?')} split '{getattr(dataset, 'split', '?')}' is empty")
    shard_dir = Path(shard_dir)
    check_shard_key(shard_dir, key)
    shards = plan_shards(n, opts.shard_size)
    todo = missing_shards(shard_dir, shards)
    if len(todo) < len(shards):
        log.info("resuming: %d of %d shards already encoded in %s", len(shards) - len(todo), len(shards), shard_dir)
    encode_shards(enc, dataset, todo, shard_dir, opts)
    skipped = [record for start, end in shards for record in shard_skipped(shard_path(shard_dir, start, end))]
    if skipped and opts.on_error == "fail":  # shards from an earlier 'skip' run
        raise DatasetError(f"{len(skipped)} unreadable images, first: {skipped[0]['error']} (use on_error='skip')")
    if len(skipped) == n:
        raise DatasetError(f"no image could be read ({n} rows skipped); first: {skipped[0]['error']}")
    atomic_write_json(shard_dir / SKIPPED_FILE, skipped)
    return shards


def extract_split(enc, dataset: DatasetLike, options: ExtractOptions | None = None, *, shard_dir: Path,
                  key: dict[str, Any] | None = None, **values: Any) -> FeatureSplit:
    """Raw image embeddings of `dataset` in memory: (N, D), or (N, V, D) for V seeded augmented views.

    `encode_split_shards` (resumable; on_error='skip' drops unreadable images and lists them in
    `shard_dir/skipped.json`, 'fail' raises DatasetError naming the path), then the shards loaded in row order
    (`ShardedSplit.load`: one preallocated tensor), each row's path taken from the shards' 'row' tensors.
    """
    shards = encode_split_shards(enc, dataset, options, shard_dir=shard_dir, key=key, **values)
    sharded = ShardedSplit([shard_path(shard_dir, start, stop) for start, stop in shards])
    split = sharded.load()
    paths = getattr(dataset, "paths", None)
    split.paths = None if paths is None else [str(paths[r]) for r in sharded.rows()]
    return split


def read_skipped(shard_dir: Path) -> list[dict[str, Any]]:
    """The skipped-row records `extract_split` wrote (row, path, error)."""
    path = Path(shard_dir) / SKIPPED_FILE
    return read_json(path, what="skipped-rows file", error=CacheError) if path.is_file() else []


# ----------------------------------------------------------------------------------------- text
def prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class × template prompts, class-major: prompt (c, t) at c * T + t."""
    if not templates:
        raise ConfigError("no prompt templates given")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ConfigError(f"prompt template {bad[0]!r} has no '{{}}' placeholder for the class name")
    return [t.format(c) for c in classnames for t in templates]


def extract_text(enc, classnames: Sequence[str], templates: Sequence[str], *, progress: bool = False) -> Tensor:
    """Raw class-prompt embeddings (C, T, D), one per class × template."""
    texts, step = prompts(classnames, templates), 1024
    starts = tqdm(range(0, len(texts), step), desc="encode prompts", disable=not progress or len(texts) <= step)
    text = torch.cat([enc.encode_texts(texts[start:start + step]) for start in starts])
    return text.view(len(classnames), len(templates), -1)
