"""Plain-file I/O, torch-free (the bottom layer: any package may import it, the CLI parser included).

Durable atomic writes: every write goes to a temporary file in the same directory, is fsynced and renamed into
place, then the directory is fsynced, so a reader never sees a half-written file, even after a crash or power loss
(`atomic_path`, `atomic_open`). Text and JSON are read as UTF-8 or refused with an error naming the file and the
first undecodable byte. Plus file hashing and hard-link-or-copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from clipadapt.errors import ClipadaptError, FeatureDirError


# ----------------------------------------------------------------------------------------- atomic writes
def _read_umask() -> int:
    """The process umask. Reading it means setting it, so this runs once, at import, before threads exist."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()
NEW_FILE_MODE = 0o666 & ~UMASK  # what open() would give: mkstemp's 0600 would hide results from the group


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file name beside `path` for a writer that needs a name (safetensors). On a clean exit the temp file
    is fsynced and renamed over `path`, then the directory is fsynced: after a crash or power loss `path` holds
    the old bytes or all the new ones. On any exception the temp file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, NEW_FILE_MODE)  # after the writer: safetensors renames its own 0600 temp file over `tmp`
        with open(tmp, "r+b") as f:  # fsync applies to the file, whichever descriptor wrote it
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise with_path(e, path) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def with_path(error: OSError, path: str | Path) -> OSError:
    """`error` naming `path` when it names no file (a write() that hit ENOSPC names none), so the CLI's message
    says which output failed; the same exception when it already names one."""
    if error.filename is not None or error.errno is None:
        return error
    return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file to stream into (nothing is buffered in memory), replacing `path` durably on a clean exit and
    leaving it untouched, with no temp file, on an exception — see `atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file + fsync + rename in the same directory."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (cache manifests, checkpoint fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to `dst` atomically (a copy where links are not possible, e.g. across file systems). On any
    failure (a copy cut short, `dst` a directory, ...) the temp name is removed and `dst` is untouched."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:  # a copy that hit a full disk names no file
        tmp.unlink(missing_ok=True)
        raise with_path(e, dst) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------------------- reading
UTF8_BOM = b"\xef\xbb\xbf"


def read_text(path: str | Path, *, what: str, error: type[ClipadaptError] = FeatureDirError) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped); `error` naming the file when it is missing
    ("<path>: <what> not found") or not UTF-8 (the byte offset and line of the first undecodable byte, "expected
    UTF-8"). Every text file clipadapt reads (class names, CSV, split JSON, variants, captions) goes through here."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found")
    data = path.read_bytes()
    skip = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = skip + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise error(
            f"{path}: {what} is not UTF-8 text: byte 0x{data[offset]:02x} at byte offset {offset} (line {line}) "
            "cannot be decoded; expected UTF-8 — re-save the file as UTF-8"
        ) from None


def read_json(path: str | Path, *, what: str, error: type[ClipadaptError] = FeatureDirError) -> Any:
    """The parsed JSON of `path`; `error` naming the file when it is missing ("<path>: <what> not found"), not
    UTF-8 (see `read_text`) or not valid JSON. `what` says what the file should be, e.g. "shard index"."""
    try:
        return json.loads(read_text(path, what=what, error=error))
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from e
