"""Where a results file came from: schema, clipadapt version, git commit, command line, time, model, data.

Every command that writes results puts `provenance(...)` under the key `"provenance"` of its results JSON, so two
results files can be compared and traced back to the code, the command and the data that produced them.

Data fingerprints (`path_fingerprint`, `files-sha256-v1:<hex>`): a sha256 over every regular file under the path
(or the file itself), in sorted relative-path order, of its relative name, its size and its bytes; a file larger
than `FULL_HASH_BYTES` contributes `SAMPLES` evenly spaced windows of `SAMPLE_BYTES` (first and last included)
instead of every byte. So the fingerprint of a typical feature directory (splits up to 16 MiB) covers all of its
contents; for larger files it notices any re-extraction, any change of shape, of model or of most rows, but not
an edit of a single row between two windows. It costs at most ~1 MiB of reads per large file, whatever its size.

Torch-free, and it never raises for a missing git checkout or an unreadable file: provenance must not be the reason
a finished run fails to write its results.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from clipadapt.constants import __version__

SCHEMA = "clipadapt-results/1"
FINGERPRINT_SCHEME = "files-sha256-v1"
FULL_HASH_BYTES = 16 * 2**20
SAMPLES = 16
SAMPLE_BYTES = 64 * 2**10


def provenance(argv: Sequence[str] | None, *, model: Any = None, data: Any = None,
               data_fingerprint: Any = None) -> dict[str, Any]:
    """The provenance block of a results file.

    argv: the command line after the program name (None: this process's `sys.argv[1:]`); model: the model id(s);
    data: what was read (a path, a dataset spec, or a dict of them); data_fingerprint: `path_fingerprint` of it
    (or a dict of them, same keys), or another fingerprint whose prefix says how it was made
    (`dataset-sha256:` for a dataset's item list)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return {
        "schema": SCHEMA,
        "clipadapt_version": __version__,
        "git_commit": git_commit(),
        "command": shlex.join(["clipadapt", *map(str, argv)]),
        "created_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": sys.version.split()[0],
        "model": model,
        "data": _plain(data),
        "data_fingerprint": data_fingerprint,
    }


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


# ----------------------------------------------------------------------------------------- git
@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout clipadapt is imported from (its HEAD, read from the .git files, no subprocess);
    None when it is installed outside a checkout or the files cannot be read. Uncommitted edits are not detected."""
    try:
        gitdir = _find_gitdir(Path(__file__).resolve().parent)
        return _resolve_head(gitdir) if gitdir else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _find_gitdir(start: Path) -> Path | None:
    """The git directory of the checkout holding `start`: `.git` as a folder, or a worktree's `.git` file."""
    for folder in (start, *start.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():  # a linked worktree or submodule: "gitdir: PATH"
            text = dot_git.read_text().strip()
            if text.startswith("gitdir:"):
                target = Path(text[len("gitdir:"):].strip())
                return target if target.is_absolute() else (folder / target).resolve()
    return None


def _resolve_head(gitdir: Path) -> str | None:
    head = (gitdir / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head if _is_sha(head) else None  # detached HEAD
    ref = head[len("ref:"):].strip()
    common = gitdir
    if (gitdir / "commondir").is_file():  # a worktree's branch refs live in the main repository's git dir
        common = (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
    for root in (gitdir, common):
        loose = root / ref
        if loose.is_file():
            sha = loose.read_text().strip()
            return sha if _is_sha(sha) else None
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name.strip() == ref and _is_sha(sha):
                return sha
    return None


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text)


# ----------------------------------------------------------------------------------------- data fingerprints
def path_fingerprint(path: str | Path | None) -> str | None:
    """`files-sha256-v1:<hex>` of a file or a directory tree (module docstring: the scheme); None for None, a spec
    that is not a path (e.g. `coop:pets:/data`), or a path that cannot be read."""
    return None if path is None else paths_fingerprint([path], prefix_index=False)


def paths_fingerprint(paths: Iterable[str | Path], *, prefix_index: bool = True) -> str | None:
    """One fingerprint of several files/directories, in the given order (their files named `<i>/<relative path>`)."""
    try:
        files = []
        for i, path in enumerate(map(Path, paths)):
            prefix = f"{i}/" if prefix_index else ""
            if path.is_file():
                files.append((prefix + path.name, path))
            elif path.is_dir():
                files += sorted((prefix + p.relative_to(path).as_posix(), p) for p in _walk(path))
            else:
                return None
        if not files:
            return None
        digest = hashlib.sha256(FINGERPRINT_SCHEME.encode())
        for name, file in files:
            _update(digest, name, file)
        return f"{FINGERPRINT_SCHEME}:{digest.hexdigest()}"
    except OSError:
        return None


def _walk(directory: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .lock folders, editor files
        for name in files:
            if not name.startswith(".") and not name.endswith((".lock", ".tmp")):
                yield Path(root) / name


def _update(digest: Any, name: str, file: Path) -> None:
    size = file.stat().st_size
    digest.update(f"\0{name}\0{size}\0".encode())
    with open(file, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            return
        step = (size - SAMPLE_BYTES) / (SAMPLES - 1)
        for i in range(SAMPLES):
            f.seek(int(i * step))
            digest.update(f.read(SAMPLE_BYTES))
