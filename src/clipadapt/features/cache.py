"""The content-addressed feature cache.

    $ROOT/images/<slug>-<digest16>/   one (encoder, dataset split, views, seed): a valid feature directory
        key.json                      the full key (written first; shards check it)
        shards/rows-*.safetensors     the split's row-range shards (features.shards format): written while
                                      encoding (resume from here) and kept as the split itself
        shards/key.json               the same key (ties the shards to it)
        <split>.shards.json           index of the shards (features.shards)
        <split>.paths.json            source image of each row
        <split>.skipped.json          unreadable images dropped by on_error='skip' (row, path, error)
        text.safetensors, meta.json   the class text embeddings last used with it + feature-dir metadata
        manifest.json                 written last: the key again + sha256 of every data file
    $ROOT/text/<slug>-<digest16>/      one (encoder, classnames, templates)
        key.json, text.safetensors (C, T, D), manifest.json (+ the model's "logit": {logit_scale, logit_bias})

    $ROOT/locks/{images,text}/<entry name>.lock   one inter-process lock per entry (`FeatureCache.lock`)

Every image entry has one storage form, shards plus an index: `open_split` opens it memory-mapped,
`load_split` loads it into memory. Entries of cache version 1 (an assembled `<split>.safetensors` or shards) are
migrated once, without the encoder, when first asked for (`FeatureCache.migrate`).

ROOT = cache_dir argument / $CLIPADAPT_CACHE / ~/.cache/clipadapt. The digest is sha256 of the canonical JSON
of the key; an entry is used only when its manifest holds the same key and every file hashes as recorded —
anything else is logged and recomputed, never silently reused. The dataset part of an image key includes a
digest of every source file's (size, mtime_ns) (or, opt-in, its sha256), so an image rewritten in place gives
another key. Processes sharing a cache take the entry's lock around check -> encode -> publish: the second
one waits, then finds a complete entry. A read-only cache serves its complete entries without the lock; a write
to it (or a full disk) is a `CacheError` naming the file (`cache_writes`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm.auto import tqdm

from clipadapt.constants import CACHE_ENV, cache_root  # noqa: F401 - re-exported: features.cache.cache_root
from clipadapt.errors import CacheError, ConfigError, FeatureDirError
from clipadapt.features.featureset import FeatureSplit
from clipadapt.features.io import META_FILE, TEXT_FILE, atomic_save_tensors, load_split, load_tensors
from clipadapt.features.shards import (
    ShardedSplit,
    check_shard_key,
    index_path,
    plan_shards,
    remove_stale_temp_files,
    shard_path,
    write_shard,
    write_shard_index,
)
from clipadapt.fileio import atomic_open, atomic_write_json, file_sha256, link_or_copy, read_json

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: every image entry is shards + index (1: an assembled <split>.safetensors, or shards)
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
LOCKS_DIR = "locks"
FILE_CHECKS = ("stat", "sha256", "none")  # how the image key notices edited source files
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)
WRITE_ERRNOS = (*READ_ONLY_ERRNOS, errno.ENOSPC, errno.EDQUOT)
T = TypeVar("T")


# ----------------------------------------------------------------------------------------- keys
def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace: equal content gives equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()


def source_files(dataset: Any) -> list[str] | None:
    """The file behind each row of `dataset`, or None when its rows are not files.

    `dataset.source_files()` when the dataset has it (clipadapt.data's ImageDataset: None for in-memory
    torchvision datasets); otherwise its `paths` (other DatasetLike objects, e.g. tests' fakes), where an entry
    that is not a file on disk simply counts as missing."""
    method = getattr(dataset, "source_files", None)
    if callable(method):
        files = method()
        return None if files is None else [str(f) for f in files]
    paths = getattr(dataset, "paths", None)
    return None if paths is None else [str(p) for p in paths]


def _file_record(path: str, check: str) -> str:
    """'size:mtime_ns' (stat) or the sha256 of one file; '-' when it is not a readable file."""
    try:
        st = os.stat(path)
        if check == "sha256":
            return file_sha256(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "-"


def files_digest(files: Sequence[str], check: str = "stat", *, progress: bool = False) -> dict[str, Any]:
    """{'check', 'missing', 'digest'}: sha256 over one record per file, in row order.

    'stat' (default) records (size, mtime_ns): one stat per file, ~µs each on a local disk, so a 1M-image
    dataset costs seconds, not the hour that hashing its bytes would; it misses only an edit that keeps both
    the size and the mtime (e.g. a tool restoring the old mtime). 'sha256' hashes every file's bytes (exact,
    reads the whole dataset)."""
    if check not in ("stat", "sha256"):
        raise ConfigError(f"file check must be 'stat' or 'sha256', got {check!r}")
    digest, missing, seen = hashlib.sha256(), 0, {}
    for path in tqdm(files, desc=f"check files ({check})", unit="file", disable=not progress or len(files) < 20_000):
        record = seen.get(path) or seen.setdefault(path, _file_record(path, check))  # rows sharing a file (tar
        # shards, arrow files) check it once
        missing += record == "-"
        digest.update(f"{record}\n".encode())
    return {"check": check, "missing": missing, "digest": digest.hexdigest()}


def dataset_fingerprint(dataset: Any, *, file_check: str = "stat", progress: bool = False) -> dict[str, Any]:
    """The dataset part of an image key: name, split, size, the dataset's own content fingerprint (which covers
    the split, paths, labels and any subset indices) and, for file-backed rows, a digest of the files' state
    (`files_digest`: size + mtime, or sha256 with file_check='sha256'; 'none' leaves it out).

    The files digest is kept here, not in `dataset.fingerprint()`: few-shot index lists record that one, and it
    must stay the same on another machine where the files have other mtimes."""
    if file_check not in FILE_CHECKS:
        raise ConfigError(f"file_check must be one of {FILE_CHECKS}, got {file_check!r}")
    fp = {
        "name": str(getattr(dataset, "name", type(dataset).__name__)),
        "split": str(getattr(dataset, "split", "")),
        "n": len(dataset),
        "fingerprint": str(dataset.fingerprint()),
    }
    files = source_files(dataset) if file_check != "none" else None
    if files is not None:
        fp["files"] = files_digest(files, file_check, progress=progress)
    return fp


def image_key(encoder: dict[str, Any], dataset: dict[str, Any], *, views: int, seed: int) -> dict[str, Any]:
    """Key of one split's image embeddings. The seed counts only when views > 1 (augmentation is random)."""
    return {
        "kind": "image",
        "version": CACHE_VERSION,
        "encoder": encoder,
        "dataset": dataset,
        "views": int(views),
        "seed": int(seed) if views > 1 else None,
    }


def text_key(encoder: dict[str, Any], classnames: Sequence[str], templates: Sequence[str]) -> dict[str, Any]:
    """Key of the class × template text embeddings."""
    return {
        "kind": "text",
        "version": CACHE_VERSION,
        "encoder": encoder,
        "classnames": list(classnames),
        "templates": list(templates),
    }


def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^A-Za-z0-9.@+-]+", "-", text).strip("-")[:80] or "entry"


def _weights_slug(encoder: dict[str, Any]) -> str:
    w = encoder.get("weights", {})
    short = {"tag": w.get("tag"), "checkpoint": f"ckpt{str(w.get('sha256', ''))[:8]}", "hf-hub": w.get("id"),
             "random-init": "random"}
    return f"{encoder.get('arch')}@{short.get(w.get('kind'), w.get('kind'))}"


# ----------------------------------------------------------------------------------------- writing errors
def _write_error(e: Exception, path: Path) -> CacheError | None:
    """The CacheError naming the file for an OSError of writing into the cache (read-only file system or
    directory, permission denied, disk full, quota), or None for any other error."""
    code = getattr(e, "errno", None)
    if code is None and re.search(r"code: 28\b|os error 28|No space left", str(e)):
        code = errno.ENOSPC  # safetensors reports the OS error inside its own error's message
    if code not in WRITE_ERRNOS:
        return None
    if code in READ_ONLY_ERRNOS:
        hint = ("the feature cache is not writable: its complete entries are still read, but this one has to be "
                "computed — give a writable --cache-dir (or $CLIPADAPT_CACHE)")
    else:
        hint = ("the disk is full: nothing half-written was published and the finished shards are kept — free "
                "space and run the command again to resume")
    return CacheError(f"{getattr(e, 'filename', None) or path}: cannot write ({os.strerror(code)}); {hint}")


@contextmanager
def cache_writes(path: Path) -> Iterator[None]:
    """Around the writes into a cache entry: their OSErrors (EROFS, EACCES, EPERM, ENOSPC, EDQUOT) become a
    CacheError naming the file (`path` when the error names none); any other error passes unchanged."""
    try:
        yield
    except (OSError, SafetensorError) as e:
        error = _write_error(e, path)
        if error is None:
            raise
        raise error from e


# ----------------------------------------------------------------------------------------- entries
class CacheEntry:
    """One directory of the cache, addressed by its key."""

    def __init__(self, path: Path, key: dict[str, Any]):
        self.path, self.key = Path(path), json.loads(canonical_json(key))
        self.digest = key_digest(self.key)

    def __repr__(self) -> str:
        return f"CacheEntry({self.path})"

    @property
    def shard_dir(self) -> Path:
        return self.path / SHARDS_DIR

    def is_complete(self) -> bool:
        return (self.path / MANIFEST_FILE).is_file()

    def verify(self) -> tuple[str | None, list[str]]:
        """(why the entry must not be used or None, the data files that fail their size/sha256 check).

        Every file is checked, not only up to the first bad one: `invalidate` deletes them all, so that a resumed
        entry re-encodes each damaged shard instead of re-publishing it."""
        manifest_path = self.path / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"{manifest_path.name} unreadable ({e})", []
        if canonical_json(manifest.get("key")) != canonical_json(self.key):
            return "stored key differs from the requested key", []
        reasons, bad = [], []
        for name, record in manifest.get("files", {}).items():
            path = self.path / name
            if not path.is_file():
                reasons.append(f"{name} missing")
            elif path.stat().st_size != record.get("bytes") or file_sha256(path) != record.get("sha256"):
                reasons.append(f"{name} is corrupt (size or sha256 differs from the manifest)")
                bad.append(name)
        if not reasons:
            return None, []
        more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
        return reasons[0] + more, bad

    def begin(self) -> None:
        """Start or resume filling the entry (call holding its lock): create it and its key.json — a directory
        holding another key (a digest clash or an old layout) is emptied first, `shards.check_shard_key` — tie
        an image entry's shards/ to the key, and delete the temp files a process that died mid-write left."""
        check_shard_key(self.path, self.key)
        if self.key.get("kind") != "text":
            check_shard_key(self.shard_dir, self.key)
        for directory in (self.shard_dir, self.path):
            remove_stale_temp_files(directory)

    def commit(self, files: Sequence[str], extra: dict[str, Any] | None = None) -> None:
        """Write the manifest (last): the key and the size + sha256 of each data file."""
        records = {}
        for name in files:
            path = self.path / name
            records[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        manifest = {"key": self.key, "digest": self.digest, "files": records, **(extra or {})}
        atomic_write_json(self.path / MANIFEST_FILE, manifest)

    def invalidate(self, reason: str, remove: Sequence[str] = ()) -> None:
        """Log why and drop the manifest, so the entry is recomputed; `remove`: data files that failed their
        check, deleted so that they are re-encoded (the other shards stay for resuming)."""
        log.warning("cache entry %s: %s; recomputing", self.path, reason)
        (self.path / MANIFEST_FILE).unlink(missing_ok=True)
        for name in remove:
            (self.path / name).unlink(missing_ok=True)

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST_FILE).read_text())


class FeatureCache:
    """Image and text embeddings stored by key under one root directory."""

    def __init__(self, root: str | Path | None = None):
        self.root = cache_root(root)

    def __repr__(self) -> str:
        return f"FeatureCache({self.root})"

    @contextmanager
    def lock(self, entry: CacheEntry) -> Iterator[None]:
        """Hold `entry`'s inter-process lock (ROOT/locks/<kind>/<entry>.lock) around check -> encode -> publish.

        A second process asking for the same entry waits here (logged), then sees the finished entry. Re-entrant
        in one thread (the torchrun path holds it while its rank 0 publishes through get_feature_set). The lock
        is an OS file lock (flock), released by the kernel if the holder dies, so a crash never leaves it stuck;
        the small .lock files stay. Locks on network file systems are only as reliable as their flock.
        Where the lock file cannot be created (a read-only cache, e.g. a team's shared one) a complete entry is
        read without it — nobody can change it — and an incomplete one is a CacheError naming the lock file."""
        lock = self._acquire(entry)
        try:
            yield
        finally:
            if lock is not None:
                lock.release()

    def _acquire(self, entry: CacheEntry) -> FileLock | None:
        path = self.root / LOCKS_DIR / entry.path.parent.name / f"{entry.path.name}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            memo = (os.getpid(), str(path))  # a forked child must not inherit its parent's lock state
            lock = _LOCKS.get(memo) or _LOCKS.setdefault(memo, FileLock(str(path)))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("waiting for another process to finish cache entry %s", entry.path)
                lock.acquire()
            return lock
        except OSError as e:
            if e.errno not in READ_ONLY_ERRNOS or not entry.is_complete():
                raise _write_error(e, path) or e from e
            log.info("cache %s is read-only (%s): reading the complete entry %s without its lock", self.root,
                     e.strerror, entry.path)
            return None

    def image_entry(self, key: dict[str, Any]) -> CacheEntry:
        ds = key["dataset"]
        slug = _slug(_weights_slug(key["encoder"]), ds.get("name"), ds.get("split"), f"v{key['views']}")
        return CacheEntry(self.root / "images" / f"{slug}-{key_digest(key)[:16]}", key)

    def text_entry(self, key: dict[str, Any]) -> CacheEntry:
        slug = _slug(_weights_slug(key["encoder"]), f"{len(key['classnames'])}cls", f"{len(key['templates'])}tpl")
        return CacheEntry(self.root / "text" / f"{slug}-{key_digest(key)[:16]}", key)

    @staticmethod
    def _verified(entry: CacheEntry, read: Callable[[CacheEntry], T]) -> T | None:
        """`read(entry)` when the entry is complete and its manifest and files verify; else None: missing, or
        logged and invalidated (the files that failed are deleted, so only they are recomputed)."""
        if not entry.is_complete():
            return None
        reason, bad = entry.verify()
        if reason is None:
            try:
                return read(entry)
            except (FeatureDirError, CacheError, OSError, json.JSONDecodeError, ValueError, KeyError) as e:
                reason = str(e)
        entry.invalidate(reason, remove=bad)
        return None

    # ------------------------------------------------------------------------------- text
    def load_text(self, key: dict[str, Any]) -> Tensor | None:
        """The cached (C, T, D) text embeddings, or None (missing, or logged as invalid). A valid entry of cache
        version 1 is copied into the current one (once), with the logit scale and bias its manifest records."""

        def read(entry: CacheEntry) -> Tensor:
            text = load_tensors(entry.path / TEXT_FILE)["text"]
            if text.ndim != 3 or text.shape[:2] != (len(key["classnames"]), len(key["templates"])):
                raise FeatureDirError(f"text tensor has shape {tuple(text.shape)}")
            return text.float()

        text = self._verified(self.text_entry(key), read)
        old = self.text_entry({**key, "version": 1})
        if text is None and (text := self._verified(old, read)) is not None:
            log.warning("cache entry %s was written by an older clipadapt (cache version 1): copied into the "
                        "current format", old.path)
            logit = old.manifest().get("logit")
            self.save_text(key, text, extra=None if logit is None else {"logit": logit})
            shutil.rmtree(old.path, ignore_errors=True)
        return text

    def save_text(self, key: dict[str, Any], text: Tensor, extra: dict[str, Any] | None = None) -> CacheEntry:
        """Store the text embeddings; `extra` (e.g. the model's `logit` scale and bias) goes into the manifest."""
        entry = self.text_entry(key)
        entry.begin()
        atomic_save_tensors(entry.path / TEXT_FILE, {"text": text.float()})
        entry.commit([TEXT_FILE], extra=extra)
        return entry

    # ------------------------------------------------------------------------------- image splits
    def open_split(self, entry: CacheEntry, split: str) -> tuple[ShardedSplit, list[dict]] | None:
        """The cached split opened memory-mapped (`ShardedSplit`, nothing loaded) and its skipped records, or None
        (missing, or logged as invalid)."""

        def read(entry: CacheEntry) -> tuple[ShardedSplit, list[dict]]:
            manifest = entry.manifest()
            sharded = ShardedSplit.open(entry.path, split)
            if (sharded.n, sharded.dim) != (manifest.get("n", sharded.n), manifest.get("dim", sharded.dim)):
                raise FeatureDirError(f"{split}: holds ({sharded.n}, D={sharded.dim}) rows but the manifest says "
                                      f"({manifest.get('n')}, D={manifest.get('dim')})")
            return sharded, self._skipped(entry, split)

        return self._verified(entry, read)

    def load_split(self, entry: CacheEntry, split: str, num_classes: int) -> tuple[FeatureSplit, list[dict]] | None:
        """The cached split loaded into memory from its shards (validated by `io.load_split`) and its skipped
        records, or None (missing, or logged as invalid)."""

        def read(entry: CacheEntry) -> tuple[FeatureSplit, list[dict]]:
            dim = int(entry.manifest().get("dim", 0))
            return load_split(entry.path, split, num_classes=num_classes, dim=dim), self._skipped(entry, split)

        return self._verified(entry, read)

    @staticmethod
    def _skipped(entry: CacheEntry, split: str) -> list[dict]:
        path = entry.path / f"{split}.skipped.json"
        return read_json(path, what="skipped-rows file") if path.is_file() else []

    def publish_shards(self, entry: CacheEntry, split: str, shards: Sequence[tuple[int, int]],
                       paths: Sequence[Any] | None, skipped: list[dict]) -> ShardedSplit:
        """Publish the encoded shards of `entry.shard_dir` as the entry's split: the index `<split>.shards.json`,
        `<split>.paths.json` (streamed, row by row), `<split>.skipped.json`, then the manifest listing every
        shard file. Nothing is loaded or concatenated. Call holding the entry's lock."""
        files = [shard_path(entry.shard_dir, start, stop) for start, stop in shards]
        keep = {f.name for f in files}
        for stray in entry.shard_dir.glob("*.safetensors"):  # shards of another --shard-size (not in the key)
            if stray.name not in keep:
                stray.unlink()
        index = write_shard_index(entry.path, split, files)
        written = [index.name, f"{split}.skipped.json"]
        if paths is not None:
            _write_shard_paths(entry.path / f"{split}.paths.json", files, paths)
            written.append(f"{split}.paths.json")
        else:
            (entry.path / f"{split}.paths.json").unlink(missing_ok=True)
        atomic_write_json(entry.path / f"{split}.skipped.json", skipped)
        sharded = ShardedSplit.open(index)
        names = [f.relative_to(entry.path).as_posix() for f in files]
        entry.commit([*names, *written], extra={"split": split, "n": sharded.n, "dim": sharded.dim,
                                                "views": sharded.views, "storage": "sharded"})
        return sharded

    def migrate(self, entry: CacheEntry, split: str, paths: Sequence[Any] | None, shard_size: int) -> bool:
        """One-way migration: when the cache-version-1 entry of `entry`'s key is valid (assembled in one
        `<split>.safetensors`, or sharded), re-store its rows as `entry`'s shards — shard by shard, without the
        encoder — publish them and delete the old entry. False when there is none. Call holding the lock."""
        old = self.image_entry({**entry.key, "version": 1})
        found = self._verified(old, lambda e: _open_v1(e, split))
        if found is None:
            return False
        log.warning("cache entry %s was written by an older clipadapt (cache version 1): re-storing it as shards "
                    "in %s (once; the encoder is not needed)", old.path, entry.path)
        rows, skipped = found
        dropped = {int(r["row"]): r for r in skipped}
        entry.begin()
        plan, at = plan_shards(int(entry.key["dataset"]["n"]), shard_size), 0
        for start, stop in plan:
            kept = [r for r in range(start, stop) if r not in dropped]
            image, label = rows.read_rows(at, at + len(kept), mapped=True)
            write_shard(entry.shard_dir, start, image, label, stop=stop, rows=torch.tensor(kept, dtype=torch.long),
                        skipped=[dropped[r] for r in range(start, stop) if r in dropped])
            at += len(kept)
        self.publish_shards(entry, split, plan, paths, skipped)
        shutil.rmtree(old.path, ignore_errors=True)
        return True

    def attach_text(self, entry: CacheEntry, text_entry: CacheEntry, meta: dict[str, Any]) -> None:
        """Make an image entry a complete feature directory: link its text file and write meta.json
        (only when they changed: other templates were used this time, or the text entry was re-encoded — after
        its file failed verification — so the entry's link still holds the old bytes)."""
        meta_path = entry.path / META_FILE
        try:
            current = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        except json.JSONDecodeError:
            current = {}
        source, target = text_entry.path / TEXT_FILE, entry.path / TEXT_FILE
        if current == json.loads(canonical_json(meta)) and _same_bytes(source, target):
            return
        link_or_copy(source, target)
        atomic_write_json(meta_path, meta)


def _open_v1(entry: CacheEntry, split: str) -> tuple[ShardedSplit, list[dict]]:
    """A cache-version-1 entry's split as shards (its index, or its one assembled file) and its skipped records,
    checked to hold one row per readable dataset row."""
    index = index_path(entry.path, split)
    assembled = entry.path / f"{split}.safetensors"
    rows = ShardedSplit.open(index) if index.is_file() else ShardedSplit([assembled], name=split)
    skipped, n = FeatureCache._skipped(entry, split), int(entry.key["dataset"]["n"])
    if rows.n + len(skipped) != n:
        raise FeatureDirError(f"{split}: {rows.n} rows + {len(skipped)} skipped for a dataset of {n} rows")
    return rows, skipped


def _same_bytes(source: Path, target: Path) -> bool:
    """`target` is `source` (the same hard-linked file) or, where links fell back to copies, holds its bytes."""
    if not target.is_file():
        return False
    if os.path.samefile(source, target):
        return True
    return source.stat().st_size == target.stat().st_size and file_sha256(source) == file_sha256(target)


def _write_shard_paths(target: Path, shard_files: Sequence[Path], paths: Sequence[Any]) -> None:
    """`<split>.paths.json`: the source path of each embedded row, in row order, streamed shard by shard (each
    shard's 'row' tensor says which dataset rows it holds; skipped rows are absent)."""
    with atomic_open(target) as f:
        f.write(b"[")
        first = True
        for path in shard_files:
            with safe_open(str(path), framework="pt") as shard:
                rows = shard.get_tensor("row").tolist()
            for r in rows:
                f.write((("\n  " if first else ",\n  ") + json.dumps(str(paths[r]), ensure_ascii=False)).encode())
                first = False
        f.write(b"\n]\n")


_LOCKS: dict[tuple[int, str], FileLock] = {}  # one FileLock object per lock file in this process (re-entrancy)


__all__ = [
    "CACHE_VERSION",
    "FILE_CHECKS",
    "CacheEntry",
    "FeatureCache",
    "cache_root",
    "cache_writes",
    "canonical_json",
    "dataset_fingerprint",
    "files_digest",
    "image_key",
    "key_digest",
    "source_files",
    "text_key",
]
