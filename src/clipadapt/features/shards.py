"""Row-range shard files: the one naming, atomic writer, reader and resume check of the project, plus
feature splits larger than memory read memory-mapped, and statistics computed streaming.

A shard holds consecutive rows [start, stop) of a split and is written atomically (temp file + rename) as
`<shard_dir>/rows-<start:09d>-<stop:09d>.safetensors` with tensors 'image' (rows, D) or (rows, V, D), 'row'
(rows,) (the dataset row of each embedding), optional 'label' (rows,), and the rows skipped for unreadable
images listed in the file's metadata ('skipped', JSON). The extraction pipeline (`features.extract`), its
torchrun variant (`features.distributed`) and `save_sharded_split` all write shards with `write_shard`.

`ShardedSplit` reads such shards memory-mapped (only the headers are parsed), either from a shard directory
(`ShardedSplit.from_dir`, e.g. the extraction pipeline's `shards/` folder) or from an index JSON:

    DIR/<split>.shards.json   {"format": "clipadapt-shards-v1", "split": "test", "n": N, "dim": D, "views": V,
                               "shards": [{"file": "<split>.shards/rows-000000000-000001024.safetensors",
                                           "start": 0, "stop": 1024}, ...]}

`iter_chunks(rows)` yields (image, label) chunks of exactly `rows` rows (the last may be shorter; chunks may
cross shard boundaries) without loading the split; `load()` materialises a FeatureSplit (the project's one
assembler: the shards copied in row order into one preallocated tensor). Every cache entry stores its splits
this way (features.cache).

Streaming statistics consume such chunks in one pass (or, for pairs, chunk against chunk):
`streaming_mean` (DN's means, docs/methods.md §2) and `streaming_pair_histograms` (the IMO same-/different-class
cosine-similarity histograms, docs/methods.md §5).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from clipadapt.adapters.overlap import (
    DEFAULT_BINS,
    IMOResult,
    PairHistogramAccumulator,
    imo_bin_edges,
    overlap_from_counts,
)
from clipadapt.constants import DEFAULT_SHARD_SIZE  # re-exported; defined there so the CLI parser is torch-free
from clipadapt.errors import CacheError, ConfigError, FeatureDirError
from clipadapt.features.checksums import check_checksums, write_checksums
from clipadapt.features.featureset import FeatureSplit
from clipadapt.features.io import META_FILE, TEXT_FILE, atomic_save_tensors, index_path, read_paths
from clipadapt.fileio import atomic_write_json, link_or_copy, read_json
from clipadapt.ops import l2_normalize, pool_views

log = logging.getLogger(__name__)

INDEX_FORMAT = "clipadapt-shards-v1"
SHARD_NAME = re.compile(r"(\d+)-(\d+)\.safetensors$")  # also matches older 'START-STOP.safetensors' names
SHARD_KEY_FILE = "key.json"


# ----------------------------------------------------------------------------------------- plan + naming
def plan_shards(n: int, shard_size: int = DEFAULT_SHARD_SIZE) -> list[tuple[int, int]]:
    """Row ranges [start, stop) covering 0..n in shards of `shard_size` rows; the same cut for any number of
    processes, so a run can resume under another world size."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def shard_file_name(start: int, stop: int) -> str:
    """Row-range shard name, zero-padded so lexical order is row order: 'rows-000001024-000002048.safetensors'."""
    return f"rows-{start:09d}-{stop:09d}.safetensors"


def shard_path(shard_dir: str | Path, start: int, stop: int) -> Path:
    """The file of the shard holding rows [start, stop) in `shard_dir`."""
    return Path(shard_dir) / shard_file_name(start, stop)


# ----------------------------------------------------------------------------------------- one shard
@dataclass(frozen=True)
class Shard:
    """One shard file holding rows [start, stop) of the split."""

    path: Path
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def write_shard(
    directory: str | Path,
    start: int,
    image: Tensor,
    label: Tensor | None = None,
    *,
    stop: int | None = None,
    rows: Tensor | None = None,
    skipped: Sequence[dict[str, Any]] = (),
) -> Path:
    """Write dataset rows [start, stop) as one shard file, atomically (temp file + rename): a writer that dies
    leaves at most a temp file, never a half-written shard.

    `rows`: the dataset row of each embedding (default start, start+1, ...); `skipped`: records of the rows of
    the range that have no embedding (unreadable images); `stop` defaults to start + len(image) + len(skipped).
    """
    row = torch.arange(start, start + image.shape[0]) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    if row.shape[0] != image.shape[0] or (label is not None and label.shape[0] != image.shape[0]):
        raise ConfigError(f"shard at row {start}: 'image', 'row' and 'label' must have the same number of rows")
    stop = start + image.shape[0] + len(skipped) if stop is None else stop
    tensors = {"image": image.float(), "row": row.long()}
    if label is not None:
        tensors["label"] = label.long()
    path = shard_path(directory, start, stop)
    atomic_save_tensors(path, tensors, metadata={"skipped": json.dumps(list(skipped))})
    return path


def read_shard(path: Path) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """The tensors of one shard written by `write_shard` and its skipped-row records; CacheError when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            skipped = json.loads((f.metadata() or {}).get("skipped", "[]"))
    except Exception as e:  # noqa: BLE001 - any failure here means a corrupt shard
        raise CacheError(f"{path}: unreadable shard ({e})") from e
    names = ("image", "row", "label") if "label" in tensors else ("image", "row")
    if not {"image", "row"} <= set(tensors) or len({len(tensors[k]) for k in names}) != 1:
        raise CacheError(f"{path}: shard must hold aligned tensors 'image', 'row' (and 'label' if labelled) "
                         f"(found {sorted(tensors)})")
    return tensors, skipped


def shard_skipped(path: Path) -> list[dict[str, Any]]:
    """The skipped-row records in a shard's metadata, read from its header only; CacheError when unreadable."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("skipped", "[]"))
    except Exception as e:  # noqa: BLE001 - any failure here means a corrupt shard
        raise CacheError(f"{path}: unreadable shard ({e})") from e


def shard_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a safetensors file, read from its header only (memory-mapped, no data loaded)."""
    if not path.is_file():
        raise FeatureDirError(f"{path}: shard file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as e:
        raise FeatureDirError(f"{path}: not a readable safetensors shard ({e})") from e


# ----------------------------------------------------------------------------------------- resume
def shard_is_valid(path: Path, start: int, stop: int) -> bool:
    """A finished shard: readable, rows within range, every row either encoded or recorded as skipped."""
    if not path.is_file():
        return False
    try:
        tensors, skipped = read_shard(path)
    except CacheError as e:
        log.warning("%s; re-encoding rows %d..%d", e, start, stop)
        return False
    rows = set(tensors["row"].tolist()) | {int(s["row"]) for s in skipped}
    if rows != set(range(start, stop)):
        log.warning("%s: covers the wrong rows; re-encoding rows %d..%d", path, start, stop)
        return False
    return True


def missing_shards(shard_dir: Path, shards: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The shards of the plan that are not finished yet (in order)."""
    return [(s, e) for s, e in shards if not shard_is_valid(shard_path(shard_dir, s, e), s, e)]


def check_shard_key(shard_dir: Path, key: dict[str, Any] | None) -> None:
    """Tie `shard_dir` (a shard directory or a whole cache entry) to the computation `key` (written to key.json):
    a directory holding another key is removed, never reused. `key=None` checks nothing."""
    if key is None:
        return
    path = Path(shard_dir) / SHARD_KEY_FILE
    if path.is_file():
        try:
            same = json.loads(path.read_text()) == json.loads(json.dumps(key))
        except json.JSONDecodeError:
            same = False
        if not same:
            log.warning("%s holds another key; discarding its contents", shard_dir)
            shutil.rmtree(shard_dir)
    if not path.is_file():
        atomic_write_json(path, key)


def remove_stale_temp_files(shard_dir: Path) -> int:
    """Delete temp files left by a process that died while writing a shard; returns how many: ours
    ('.<name>.<random>.tmp', `features.io.atomic_path`) and safetensors' own ('.tmp<random>', which its save_file
    writes beside our temp file before renaming it over). Only call it when no other process writes into `shard_dir`."""
    directory = Path(shard_dir)
    stale = (sorted(p for p in {*directory.glob(".*.tmp"), *directory.glob(".tmp*")} if p.is_file())
             if directory.is_dir() else [])
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


# ----------------------------------------------------------------------------------------- the split
class ShardedSplit:
    """A split stored as row-range shard files, read memory-mapped chunk by chunk.

    `shards` are the files in row order; their shapes are validated from the headers (same D and views,
    'label' present in all or none, rows consecutive from 0). Shards whose rows were all skipped (no embedding)
    are left out; with skipped rows, split row i is the i-th embedded row, as in the assembled split.
    """

    def __init__(self, shards: Sequence[str | Path], *, name: str = "split"):
        if not shards:
            raise FeatureDirError(f"sharded split '{name}' lists no shard files")
        self.name = name
        self.paths_file: Path | None = None  # <split>.paths.json beside the index: the source image of each row
        self.shards: list[Shard] = []
        self._image_shape: tuple[int, ...] | None = None
        self.has_labels: bool | None = None
        start = 0
        for path in map(Path, shards):
            header = shard_header(path)
            if header.get("image", (None,))[0] == 0:
                continue  # every row of this range was skipped as unreadable: nothing to read
            rows = self._check_shard(path, header)
            self.shards.append(Shard(path, start, start + rows))
            start += rows
        if not self.shards:
            raise FeatureDirError(f"sharded split '{name}': its {len(shards)} shard file(s) hold no rows")

    def _check_shard(self, path: Path, header: dict[str, tuple[int, ...]]) -> int:
        image = header.get("image")
        if image is None or len(image) not in (2, 3):
            raise FeatureDirError(f"{path.name}: tensor 'image' must be (rows, D) or (rows, V, D), got {image}")
        if self._image_shape is not None and image[1:] != self._image_shape:
            raise FeatureDirError(
                f"{path.name}: tensor 'image' has per-row shape {image[1:]} but earlier shards have {self._image_shape}"
            )
        self._image_shape = image[1:]
        label = header.get("label")
        if label is not None and label != (image[0],):
            raise FeatureDirError(f"{path.name}: tensor 'label' must be ({image[0]},) like 'image', got {label}")
        if self.has_labels is not None and self.has_labels != (label is not None):
            raise FeatureDirError(f"{path.name}: tensor 'label' is {'missing' if label is None else 'present'} "
                                  "here but not in the other shards")
        self.has_labels = label is not None
        return image[0]

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path, split: str | None = None) -> ShardedSplit:
        """Open from an index JSON file, or from a feature directory + split name (DIR/<split>.shards.json)."""
        path = Path(path)
        if split is not None:
            check_checksums(path)  # a directory: its checksums.json sizes (sha256 under --verify)
            path = index_path(path, split)
        index = read_json(path, what="shard index")
        entries = index.get("shards") if isinstance(index, dict) else None
        if not isinstance(entries, list):
            raise FeatureDirError(f"{path}: field 'shards' must be a list of {{file, start, stop}}")
        expected = 0
        for i, e in enumerate(entries):
            if not (isinstance(e, dict) and isinstance(e.get("file"), str)
                    and all(isinstance(e.get(k), int) for k in ("start", "stop"))):
                raise FeatureDirError(f"{path}: shards[{i}] must be {{\"file\": str, \"start\": int, \"stop\": int}}, "
                                      f"got {e!r}")
            if e["start"] != expected:
                raise FeatureDirError(f"{path}: shard {e.get('file')} starts at row {e.get('start')}, expected "
                                      f"{expected}")
            expected = e["stop"]
        out = cls([path.parent / e["file"] for e in entries], name=index.get("split", split or path.stem))
        for e, shard in zip(entries, out.shards):
            if (shard.start, shard.stop) != (e["start"], e["stop"]):
                raise FeatureDirError(
                    f"{shard.path.name}: holds rows [{shard.start}, {shard.stop}) but {path.name} says "
                    f"[{e['start']}, {e['stop']})"
                )
        if index.get("n") is not None and index["n"] != out.n:
            raise FeatureDirError(f"{path}: says n={index['n']} but its shards hold {out.n} rows")
        paths_file = path.parent / f"{out.name}.paths.json"
        out.paths_file = paths_file if paths_file.is_file() else None
        return out

    @classmethod
    def from_dir(cls, directory: str | Path, *, name: str = "split") -> ShardedSplit:
        """Open every row-range shard file '...<start>-<stop>.safetensors' in `directory`, in row order; the ranges
        must follow each other without a gap (an unfinished extraction is an error naming the missing rows)."""
        directory = Path(directory)
        files = sorted(
            (int(m.group(1)), int(m.group(2)), p) for p in directory.glob("*.safetensors")
            if (m := SHARD_NAME.search(p.name))
        )
        expected = 0
        for start, stop, path in files:
            if start != expected:
                raise FeatureDirError(f"{directory}: no shard holds rows [{expected}, {start}) (next: {path.name})")
            expected = stop
        return cls([p for _, _, p in files], name=name)

    # ------------------------------------------------------------------ shape
    @property
    def n(self) -> int:
        return self.shards[-1].stop

    @property
    def dim(self) -> int:
        return int(self._image_shape[-1])

    @property
    def views(self) -> int:
        return int(self._image_shape[0]) if len(self._image_shape) == 2 else 1

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ShardedSplit({self.name!r}, n={self.n}, dim={self.dim}, views={self.views}, shards={len(self.shards)})"

    # ------------------------------------------------------------------ reading
    def read_rows(self, start: int, stop: int, *, mapped: bool = False) -> tuple[Tensor, Tensor | None]:
        """Rows [start, stop) as (image, label|None), reading only those rows from the memory-mapped shards, copied
        shard by shard into one preallocated tensor. `mapped=True` (streaming chunks): rows within one shard come
        back as a view of its memory-mapped file, not copied (valid while the file is not rewritten in place)."""
        if not 0 <= start <= stop <= self.n:
            raise ConfigError(f"rows [{start}, {stop}) outside split '{self.name}' of {self.n} rows")
        inside = [s for s in self.shards if s.start <= start and stop <= s.stop and start < stop] if mapped else []
        if inside:
            with safe_open(str(inside[0].path), framework="pt") as f:
                rows = slice(start - inside[0].start, stop - inside[0].start)
                label = f.get_slice("label")[rows].long() if self.has_labels else None
                return f.get_slice("image")[rows].float(), label
        image = torch.empty((stop - start, *self._image_shape), dtype=torch.float32)
        label = torch.empty(stop - start, dtype=torch.long) if self.has_labels else None
        for shard in self.shards:
            lo, hi = max(start, shard.start), min(stop, shard.stop)
            if lo >= hi:
                continue
            with safe_open(str(shard.path), framework="pt") as f:
                image[lo - start : hi - start] = f.get_slice("image")[lo - shard.start : hi - shard.start]
                if label is not None:
                    label[lo - start : hi - start] = f.get_slice("label")[lo - shard.start : hi - shard.start]
        return image, label

    def rows(self) -> list[int]:
        """The dataset row of each split row, from the shards' 'row' tensors (skipped rows are absent)."""
        rows: list[int] = []
        for shard in self.shards:
            with safe_open(str(shard.path), framework="pt") as f:
                rows += f.get_tensor("row").tolist()
        return rows

    def iter_chunks(self, chunk_rows: int, *, start: int = 0) -> Iterator[tuple[Tensor, Tensor | None]]:
        """(image, label|None) chunks of `chunk_rows` rows from row `start` on (the last chunk may be shorter)."""
        if chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}")
        for lo in range(start, self.n, chunk_rows):
            yield self.read_rows(lo, min(lo + chunk_rows, self.n), mapped=True)

    def chunks(self, chunk_rows: int) -> Chunks:
        """A re-iterable view over `iter_chunks(chunk_rows)` (for functions that scan twice)."""
        return Chunks(self, chunk_rows)

    def load(self) -> FeatureSplit:
        """The whole split in memory (for small data), with the source paths when `paths_file` is known: the shards
        copied into one preallocated tensor (peak: the split plus one shard's slice)."""
        image, label = self.read_rows(0, self.n)
        paths = read_paths(self.paths_file) if self.paths_file is not None else None
        if paths is not None and len(paths) != self.n:
            raise FeatureDirError(f"{self.paths_file.name}: lists {len(paths)} paths for {self.n} rows")
        return FeatureSplit(image=image, label=label, paths=paths)

    def files(self) -> list[Path]:
        """The shard files holding rows, in row order."""
        return [s.path for s in self.shards]


@dataclass(frozen=True)
class Chunks:
    """Re-iterable (image, label) chunks of a ShardedSplit or an in-memory FeatureSplit."""

    source: ShardedSplit | FeatureSplit
    chunk_rows: int

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        return iter_split_chunks(self.source, self.chunk_rows)


def iter_split_chunks(
    source: ShardedSplit | FeatureSplit, chunk_rows: int, *, start: int = 0
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """(image, label|None) chunks of a sharded split or an in-memory FeatureSplit alike."""
    if isinstance(source, ShardedSplit):
        yield from source.iter_chunks(chunk_rows, start=start)
        return
    image, label = source.image, source.label
    for lo in range(start, image.shape[0], chunk_rows):
        yield image[lo : lo + chunk_rows], (label[lo : lo + chunk_rows] if label is not None else None)


def predict_chunked(predict: Callable[[Tensor], Tensor], source: ShardedSplit | FeatureSplit,
                    chunk_rows: int) -> Tensor:
    """`predict` (e.g. an estimator's `predict_logits`) applied chunk by chunk, outputs concatenated in row order:
    the (N, C) logits of a split whose (N, D) features need not fit in memory."""
    outputs = [predict(image) for image, _ in iter_split_chunks(source, chunk_rows)]
    if not outputs:
        raise ConfigError("predict_chunked over an empty split")
    return torch.cat(outputs)


# ----------------------------------------------------------------------------------------- writing
def write_shard_index(directory: str | Path, split: str, shard_paths: Sequence[str | Path]) -> Path:
    """Validate the shards (consecutive rows, same shapes) and write DIR/<split>.shards.json atomically."""
    directory = Path(directory)
    sharded = ShardedSplit(shard_paths, name=split)
    index = {
        "format": INDEX_FORMAT,
        "split": split,
        "n": sharded.n,
        "dim": sharded.dim,
        "views": sharded.views,
        "labels": bool(sharded.has_labels),
        "shards": [
            {"file": str(s.path.resolve().relative_to(directory.resolve())), "start": s.start, "stop": s.stop}
            for s in sharded.shards
        ],
    }
    path = index_path(directory, split)
    atomic_write_json(path, index)
    return path


def save_sharded_split(directory: str | Path, split: str, features: FeatureSplit, *,
                       shard_size: int = DEFAULT_SHARD_SIZE) -> ShardedSplit:
    """Write an in-memory split as row-range shards under DIR/<split>.shards/ plus its index; returns it opened."""
    shard_dir = Path(directory) / f"{split}.shards"
    paths = [
        write_shard(shard_dir, lo, features.image[lo:hi], features.label[lo:hi] if features.label is not None else None)
        for lo, hi in plan_shards(features.n, shard_size)  # a ConfigError for shard_size < 1
    ]
    return ShardedSplit.open(write_shard_index(directory, split, paths))


@dataclass
class ShardedFeatureSet:
    """A FeatureSet whose image splits stay on disk as memory-mapped `ShardedSplit`s (never held in memory):
    class names, (C, T, D) or (C, D) class text embeddings, {split: ShardedSplit} and metadata."""

    classnames: list[str]
    text: Tensor
    splits: dict[str, ShardedSplit]
    meta: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> ShardedSplit:
        if name not in self.splits:
            raise FeatureDirError(f"sharded feature set has no split '{name}' (available: {sorted(self.splits)})")
        return self.splits[name]


def save_sharded_feature_dir(features: ShardedFeatureSet, directory: str | Path, *, checksums: bool = True) -> Path:
    """Write a feature directory whose splits are sharded: per split `<split>.shards.json` and the shard files in
    `<split>.shards/` (hard links to the source files, copies across file systems; nothing is read into memory),
    `<split>.paths.json` when the split has one; then text.safetensors and meta.json (last).

    A `<split>.safetensors` or shard file an earlier write left in the directory is removed, so the directory
    holds the new split only."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, split in features.splits.items():
        _link_sharded_split(directory, name, split)
    atomic_save_tensors(directory / TEXT_FILE, {"text": features.text.float()})
    atomic_write_json(directory / META_FILE, {**features.meta, "classnames": list(features.classnames)})
    if checksums:  # hashes the linked shards once, so later byte corruption (here or in the cache) is detectable
        write_checksums(directory)
    return directory


def _link_sharded_split(directory: Path, name: str, split: ShardedSplit) -> None:
    """Link one split's shard files into DIR/<name>.shards/, write its index, drop what an earlier write left."""
    shard_dir = directory / f"{name}.shards"
    linked = [shard_dir / source.name for source in split.files()]
    for source, target in zip(split.files(), linked):
        link_or_copy(source, target)
    paths_file = directory / f"{name}.paths.json"
    if split.paths_file is not None:
        link_or_copy(split.paths_file, paths_file)
    else:
        paths_file.unlink(missing_ok=True)
    write_shard_index(directory, name, linked)
    keep = {p.name for p in linked}
    for stale in shard_dir.glob("*.safetensors"):
        if stale.name not in keep:
            stale.unlink()
    (directory / f"{name}.safetensors").unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------- streaming statistics
def streaming_mean(chunks: Iterable[Tensor | tuple[Tensor, Tensor | None]], *, normalize: bool = False) -> Tensor:
    """(D,) mean over all rows of the chunks, accumulated in float64 in one pass (DN's μ, docs/methods.md §2).

    Chunks are (rows, D) or (rows, V, D) tensors or (image, label) pairs; views are averaged first (raw, like
    `FeatureSplit.pooled`). `normalize=True` L2-normalises each row before averaging.
    """
    total, count = None, 0
    for chunk in chunks:
        x = pool_views(chunk[0] if isinstance(chunk, (tuple, list)) else chunk)
        if normalize:
            x = l2_normalize(x)
        s = x.double().sum(0)
        total = s if total is None else total + s
        count += x.shape[0]
    if count == 0:
        raise ConfigError("streaming_mean over no rows")
    return (total / count).float()


def streaming_pair_histograms(
    source: ShardedSplit | FeatureSplit,
    *,
    bins: int | None = None,
    chunk_rows: int = 4096,
):
    """The IMO metric (docs/methods.md §5) of a split read chunk by chunk: every pair i<j, exact, no sampling.

    Returns the same `clipadapt.adapters.overlap.IMOResult` as the in-memory `imo_overlap(image, label)`:
    the chunk-against-chunk similarities go through the IMO module's own `PairHistogramAccumulator` (same bins,
    same bucketing). Memory O(chunk_rows²); the split is read once per chunk, so `source` may be a
    memory-mapped ShardedSplit larger than memory. Views are averaged and rows L2-normalised.
    """
    edges = imo_bin_edges(DEFAULT_BINS if bins is None else bins)
    acc = PairHistogramAccumulator(edges)
    n = 0
    for image_a, label_a in iter_split_chunks(source, chunk_rows):
        if label_a is None:
            raise FeatureDirError(f"split '{getattr(source, 'name', 'split')}' has no labels: the IMO metric "
                                  "needs them")
        a = l2_normalize(pool_views(image_a).float())
        # chunks b start at chunk a with the same boundaries, so the first b is the diagonal block
        for j, (image_b, label_b) in enumerate(iter_split_chunks(source, chunk_rows, start=n)):
            sims = a @ l2_normalize(pool_views(image_b).float()).T
            same = label_a[:, None] == label_b[None, :]
            if j == 0:
                upper = torch.triu_indices(sims.shape[0], sims.shape[1], offset=1)
                sims, same = sims[upper[0], upper[1]], same[upper[0], upper[1]]
            acc.add(sims, same)
        n += image_a.shape[0]
    same_counts, diff_counts, same_sum, diff_sum = acc.result()
    n_same, n_diff = int(same_counts.sum()), int(diff_counts.sum())
    if n_same == 0 or n_diff == 0:
        raise ConfigError(f"streaming IMO: no {'same' if n_same == 0 else 'different'}-class pairs among {n} rows")
    width = edges[1:] - edges[:-1]
    return IMOResult(
        overlap=overlap_from_counts(same_counts, diff_counts),
        same_hist=same_counts.double() / (n_same * width),
        diff_hist=diff_counts.double() / (n_diff * width),
        bin_edges=edges, n_same=n_same, n_diff=n_diff, sampled=False, total_pairs=n * (n - 1) // 2, seed=None,
        sample=None, same_mean=same_sum / n_same, diff_mean=diff_sum / n_diff,
    )
