"""Integrity manifests of the directories clipadapt writes (issue 12, item 9): `DIR/checksums.json` records the
size and sha256 of every file of a feature directory (plain or sharded) or retrieval directory, written last.

    {"format": "clipadapt-checksums-1", "files": {"meta.json": {"bytes": 123, "sha256": "..."}, ...}}

Readers check it on every load: the sizes always (one `stat` per file: free on the happy path), the sha256 only
when asked (`--verify` on the commands that read feature directories, `verifying()` in the library, or
`clipadapt verify DIR`), because hashing reads every byte. A directory without checksums.json (written by an older
clipadapt, by hand, or a built-in set) is read as before, unchecked. A hard-linked sharded `--out` shares its
shard files with the cache: bytes corrupted in either place are caught by the hash check of the manifest written
when the directory was made.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from clipadapt.errors import FeatureDirError
from clipadapt.fileio import atomic_write_json, file_sha256, read_json

CHECKSUMS_FILE = "checksums.json"
FORMAT = "clipadapt-checksums-1"

_VERIFY_HASHES: contextvars.ContextVar[bool] = contextvars.ContextVar("clipadapt_verify_hashes", default=False)


@contextlib.contextmanager
def verifying(enabled: bool = True) -> Iterator[None]:
    """Inside this block every checked directory read also compares sha256s (what `--verify` turns on)."""
    token = _VERIFY_HASHES.set(bool(enabled))
    try:
        yield
    finally:
        _VERIFY_HASHES.reset(token)


def _data_files(directory: Path) -> list[Path]:
    """Every regular file under `directory` except the manifest and hidden/temp files, sorted."""
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.name != CHECKSUMS_FILE
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def write_checksums(directory: str | Path) -> Path:
    """Record the size and sha256 of every file in `directory` (atomically); call it after the last write."""
    directory = Path(directory)
    files = {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _data_files(directory)}
    path = directory / CHECKSUMS_FILE
    atomic_write_json(path, {"format": FORMAT, "files": files})
    return path


def _records(directory: Path) -> dict[str, dict[str, Any]] | None:
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        return None
    data = read_json(path, what="checksums file")
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(files, dict):
        raise FeatureDirError(f"{path}: not a clipadapt checksums file (expected format {FORMAT!r} and 'files')")
    for name, record in files.items():
        parts = PurePosixPath(name).parts
        if (PurePosixPath(name).is_absolute() or ".." in parts or not isinstance(record, dict)
                or not isinstance(record.get("bytes"), int) or not isinstance(record.get("sha256"), str)):
            raise FeatureDirError(f"{path}: entry {name!r} must be a relative path inside the directory with "
                                  "{'bytes': int, 'sha256': str}")
    return files


def check_checksums(directory: str | Path, *, hashes: bool | None = None) -> int | None:
    """Compare `directory` with its checksums.json: each listed file present with its recorded size, and with
    `hashes` (default: inside `verifying()`) its recorded sha256. Returns how many files were checked, None when
    there is no checksums.json; a FeatureDirError listing every mismatch otherwise."""
    directory = Path(directory)
    records = _records(directory)
    if records is None:
        return None
    hashes = _VERIFY_HASHES.get() if hashes is None else hashes
    problems = []
    for name, record in records.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != record["bytes"]:
            problems.append(f"{name} has {size} bytes, {CHECKSUMS_FILE} records {record['bytes']}")
        elif hashes and file_sha256(path) != record["sha256"]:
            problems.append(f"{name}: sha256 differs from {CHECKSUMS_FILE} (bytes changed in place)")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise FeatureDirError(
            f"{directory}: {len(problems)} of {len(records)} files do not match {CHECKSUMS_FILE}: {shown}. The "
            f"directory was changed or corrupted after clipadapt wrote it: write it again (a sharded --out shares "
            f"its shard files with the cache: re-extract), or delete {CHECKSUMS_FILE} to accept the change")
    return len(records)


def unlisted_files(directory: str | Path) -> list[str]:
    """Files present in `directory` that its checksums.json does not list (added after it was written)."""
    directory = Path(directory)
    records = _records(directory) or {}
    return [p.relative_to(directory).as_posix() for p in _data_files(directory)
            if p.relative_to(directory).as_posix() not in records]
