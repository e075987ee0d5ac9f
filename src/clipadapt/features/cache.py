"""The content-addressed feature cache.

    $ROOT/images/<slug>-<digest16>/   one (encoder, dataset split, views, seed): a valid feature directory
        key.json                      the full key (written first; shards check it)
        shards/rows-*.safetensors     while encoding (resume from here); removed once assembled
        <split>.safetensors           'image' (N, D) | (N, V, D), 'label' (N,)
        <split>.paths.json            source image of each row
        <split>.skipped.json          unreadable images dropped by on_error='skip' (row, path, error)
        text.safetensors, meta.json   the class text embeddings last used with it + feature-dir metadata
        manifest.json                 written last: the key again + sha256 of every data file
    $ROOT/text/<slug>-<digest16>/      one (encoder, classnames, templates)
        key.json, text.safetensors (C, T, D), manifest.json

ROOT = cache_dir argument / $CLIPADAPT_CACHE / ~/.cache/clipadapt. The digest is sha256 of the canonical JSON
of the key; an entry is used only when its manifest holds the same key and every file hashes as recorded —
anything else is logged and recomputed, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor

from clipadapt.errors import FeatureDirError
from clipadapt.features.featureset import FeatureSplit
from clipadapt.features.io import (
    META_FILE,
    TEXT_FILE,
    atomic_save_tensors,
    atomic_write_json,
    file_sha256,
    load_split,
    load_tensors,
    read_json,
)
from clipadapt.features.shards import SHARD_KEY_FILE, check_shard_key

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_ENV = "CLIPADAPT_CACHE"
KEY_FILE = SHARD_KEY_FILE  # key.json: one file name for both ties
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"


# ----------------------------------------------------------------------------------------- keys
def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: the argument, else $CLIPADAPT_CACHE, else ~/.cache/clipadapt."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clipadapt"
    return Path(root).expanduser()


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace: equal content gives equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(key).encode()).hexdigest()


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """The dataset part of an image key: name, split, size and the dataset's own content fingerprint
    (which covers the split and any subset indices)."""
    return {
        "name": str(getattr(dataset, "name", type(dataset).__name__)),
        "split": str(getattr(dataset, "split", "")),
        "n": len(dataset),
        "fingerprint": str(dataset.fingerprint()),
    }


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
    short = {"tag": w.get("tag"), "checkpoint": f"ckpt{str(w.get('sha256', ''))[:8]}", "hf-hub": w.get("id"), "random-init": "random"}
    return f"{encoder.get('arch')}@{short.get(w.get('kind'), w.get('kind'))}"


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

    def problem(self) -> str | None:
        """Why this complete-looking entry must not be used (None when it verifies)."""
        manifest_path = self.path / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"{manifest_path.name} unreadable ({e})"
        if canonical_json(manifest.get("key")) != canonical_json(self.key):
            return "stored key differs from the requested key"
        for name, record in manifest.get("files", {}).items():
            path = self.path / name
            if not path.is_file():
                return f"{name} missing"
            if path.stat().st_size != record.get("bytes") or file_sha256(path) != record.get("sha256"):
                return f"{name} is corrupt (size or sha256 differs from the manifest)"
        return None

    def begin(self) -> None:
        """Create the directory and its key.json; a directory holding another key (a digest clash or an old
        layout) is emptied first — the same tie as a shard directory's (`shards.check_shard_key`)."""
        check_shard_key(self.path, self.key)

    def commit(self, files: Sequence[str], extra: dict[str, Any] | None = None) -> None:
        """Write the manifest (last): the key and the size + sha256 of each data file."""
        records = {}
        for name in files:
            path = self.path / name
            records[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        atomic_write_json(self.path / MANIFEST_FILE, {"key": self.key, "digest": self.digest, "files": records, **(extra or {})})

    def invalidate(self, reason: str) -> None:
        """Log why and drop the manifest, so the entry is recomputed (shards stay for resuming)."""
        log.warning("cache entry %s: %s; recomputing", self.path, reason)
        (self.path / MANIFEST_FILE).unlink(missing_ok=True)

    def manifest(self) -> dict[str, Any]:
        return json.loads((self.path / MANIFEST_FILE).read_text())


class FeatureCache:
    """Image and text embeddings stored by key under one root directory."""

    def __init__(self, root: str | Path | None = None):
        self.root = cache_root(root)

    def __repr__(self) -> str:
        return f"FeatureCache({self.root})"

    def image_entry(self, key: dict[str, Any]) -> CacheEntry:
        ds = key["dataset"]
        slug = _slug(_weights_slug(key["encoder"]), ds.get("name"), ds.get("split"), f"v{key['views']}")
        return CacheEntry(self.root / "images" / f"{slug}-{key_digest(key)[:16]}", key)

    def text_entry(self, key: dict[str, Any]) -> CacheEntry:
        slug = _slug(_weights_slug(key["encoder"]), f"{len(key['classnames'])}cls", f"{len(key['templates'])}tpl")
        return CacheEntry(self.root / "text" / f"{slug}-{key_digest(key)[:16]}", key)

    # ------------------------------------------------------------------------------- text
    def load_text(self, key: dict[str, Any]) -> Tensor | None:
        """The cached (C, T, D) text embeddings, or None (missing, or logged as invalid)."""
        entry = self.text_entry(key)
        if not entry.is_complete():
            return None
        reason = entry.problem()
        if reason is None:
            try:
                text = load_tensors(entry.path / TEXT_FILE)["text"]
                if text.ndim == 3 and text.shape[:2] == (len(key["classnames"]), len(key["templates"])):
                    return text.float()
                reason = f"text tensor has shape {tuple(text.shape)}"
            except (FeatureDirError, KeyError) as e:
                reason = str(e)
        entry.invalidate(reason)
        return None

    def save_text(self, key: dict[str, Any], text: Tensor) -> CacheEntry:
        entry = self.text_entry(key)
        entry.begin()
        atomic_save_tensors(entry.path / TEXT_FILE, {"text": text.float()})
        entry.commit([TEXT_FILE])
        return entry

    # ------------------------------------------------------------------------------- image splits
    def load_split(self, entry: CacheEntry, split: str, num_classes: int) -> tuple[FeatureSplit, list[dict]] | None:
        """The cached split and its skipped records, or None (missing, or logged as invalid)."""
        if not entry.is_complete():
            return None
        reason = entry.problem()
        if reason is None:
            try:
                dim = int(entry.manifest().get("dim", 0))
                loaded = load_split(entry.path, split, num_classes=num_classes, dim=dim)
                skipped_path = entry.path / f"{split}.skipped.json"
                skipped = read_json(skipped_path, what="skipped-rows file") if skipped_path.is_file() else []
                return loaded, skipped
            except (FeatureDirError, OSError, json.JSONDecodeError, ValueError) as e:
                reason = str(e)
        entry.invalidate(reason)
        return None

    def save_split(self, entry: CacheEntry, split: str, features: FeatureSplit, skipped: list[dict]) -> None:
        """Write the assembled split, then the manifest; the shards are no longer needed."""
        from clipadapt.features.io import save_split

        save_split(entry.path, split, features)
        atomic_write_json(entry.path / f"{split}.skipped.json", skipped)
        files = [f"{split}.safetensors", f"{split}.skipped.json"] + ([f"{split}.paths.json"] if features.paths is not None else [])
        entry.commit(files, extra={"split": split, "n": features.n, "dim": features.dim, "views": features.views})
        shutil.rmtree(entry.shard_dir, ignore_errors=True)

    def attach_text(self, entry: CacheEntry, text_entry: CacheEntry, meta: dict[str, Any]) -> None:
        """Make an image entry a complete feature directory: link its text file and write meta.json
        (only when they changed, e.g. other templates were used this time)."""
        meta_path = entry.path / META_FILE
        try:
            current = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        except json.JSONDecodeError:
            current = {}
        if current == json.loads(canonical_json(meta)) and (entry.path / TEXT_FILE).is_file():
            return
        _link_or_copy(text_entry.path / TEXT_FILE, entry.path / TEXT_FILE)
        atomic_write_json(meta_path, meta)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` atomically (copy when links are not possible)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


__all__ = [
    "CACHE_VERSION",
    "CacheEntry",
    "FeatureCache",
    "cache_root",
    "canonical_json",
    "dataset_fingerprint",
    "image_key",
    "key_digest",
    "text_key",
]
