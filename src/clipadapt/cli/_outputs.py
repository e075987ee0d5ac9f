"""Every command's output paths: checked before anything is computed, and directories written whole.

Each output option is marked where it is declared (`output_option`; `add_out_argument` marks `--out`) with its kind:
- DIR: a directory the command fills (`--out DIR`, `import-features --out`, `extract --out`, `--save-embeddings`).
  The command writes into a staging directory beside the target (`.NAME.<random>.clipadapt-tmp`), which is renamed
  into place when the command succeeds and removed when it fails (an error, ENOSPC, Ctrl-C): a half-written DIR is
  never left. An existing non-empty target is refused unless `--overwrite` (added to every command with a DIR
  output), which replaces the whole directory: nothing of the earlier run survives. `--overwrite` never replaces
  `/`, the home directory, or the working directory or one of its ancestors.
- FILE: one file (`--save-logits`, `--table`, `--out FILE.json`, ...), written atomically by its writer
  (clipadapt.fileio); an existing file is replaced. A FILE or DIR output inside a staged DIR is written into it.
- RESUME: a directory the command resumes into (`suite run --out`, `adapter train --out`): "existing" means
  resume, so an existing non-empty directory must hold the command's MARKER file (suite.json, train_state.pt).

`prepare_outputs(args)`, called by `cli.main` after parsing and before the command runs, refuses (OutputError):
1. an output that is, or lies inside, an input, and a DIR output that contains an input (symlinks resolved). The
   inputs are every existing path the other arguments name: Path-typed options, and the path-like parts of spec
   strings (`imagefolder:ROOT`, `test=IMAGES.npy:LABELS.npy`, `DIR:SPLIT`, `a.npy,b.npy`, `ARCH@/ckpt.pt`);
2. an output whose place is not writable (read-only file system, no permission, a file where a directory is
   needed, a directory where a file is needed), probed by creating and removing a temp file there;
3. two outputs naming the same path.
While the command runs, what it prints names the targets, not the staging directories.
Torch-free (imported when the parser is built).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipadapt.constants import cache_root
from clipadapt.errors import OutputError
from clipadapt.fileio import UMASK, fsync_directory

DIR, FILE, RESUME = "dir", "file", "resume"
STAGING_SUFFIX = ".clipadapt-tmp"
_MARK = "clipadapt_output"  # attribute set on an argparse action: (kind or kind(args, path) -> kind, marker)
# string options whose value is a spec naming input paths even without a '/' or a suffix (`imagefolder:data`)
SPEC_OPTIONS = {"dataset", "data", "model", "models", "queries", "gallery", "config", "sets", "features",
                "adapted_features"}
_SPEC_SEPARATORS = re.compile(r"[=:,@]")

Kind = str | Callable[[argparse.Namespace, Path], str]


# ----------------------------------------------------------------------------------------- declaring outputs
def output_option(action: argparse.Action, kind: Kind, *, marker: str | None = None) -> argparse.Action:
    """Mark `action` as an output path of kind DIR, FILE or RESUME (RESUME: `marker` is the file an existing run
    directory holds), or a callable (args, path) -> kind when the kind depends on the arguments."""
    setattr(action, _MARK, (kind, marker))
    return action


def is_output(action: argparse.Action) -> bool:
    return hasattr(action, _MARK)


def nested_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and its nested subcommand parsers (adapter train, suite run, ...)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from nested_parsers(child)


def add_overwrite_options(parser: argparse.ArgumentParser) -> None:
    """--overwrite on every (nested) parser that has an output which may be a DIR."""
    for p in nested_parsers(parser):
        marks = [getattr(a, _MARK) for a in p._actions if is_output(a)]
        if any(kind not in (FILE, RESUME) for kind, _ in marks) and "--overwrite" not in p._option_string_actions:
            p.add_argument("--overwrite", action="store_true",
                           help="replace an existing non-empty output directory whole (nothing of the earlier run is "
                                "kept); without it such a directory is refused")


# ----------------------------------------------------------------------------------------- reading the arguments
def command_actions(args: argparse.Namespace) -> list[argparse.Action]:
    """The actions of the (nested) command that parsed `args` (`_parser` is set by cli.build_parser)."""
    actions = []
    parser = getattr(args, "_parser", None)
    while parser is not None:
        actions += parser._actions
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        parser = sub.choices.get(getattr(args, sub.dest, None)) if sub else None
    return actions


def _option_name(action: argparse.Action) -> str:
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _paths_in(value: Any, spec: bool) -> Iterator[Path]:
    """The paths a value names: a Path (existing or not: `--cache-dir` may be created by the run), the existing
    path-like parts of a spec string, recursively in lists."""
    if isinstance(value, Path):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _paths_in(v, spec)
    elif isinstance(value, str):
        for token in {value, *_SPEC_SEPARATORS.split(value)}:
            token = token.split("[", 1)[0].strip()  # FILE.npy[0][100:500]
            if token and (spec or "/" in token or Path(token).suffix) and os.path.lexists(token):
                yield Path(token)


@dataclass
class _Output:
    option: str
    dest: str
    kind: str
    marker: str | None
    given: Path       # as typed
    target: Path      # symlinks resolved


def _outputs(args: argparse.Namespace, actions: list[argparse.Action]) -> list[_Output]:
    outputs, seen = [], set()
    for action in actions:
        if not is_output(action) or action.dest in seen:
            continue
        seen.add(action.dest)
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        kind, marker = getattr(action, _MARK)
        given = Path(value)
        outputs.append(_Output(_option_name(action), action.dest, kind(args, given) if callable(kind) else kind,
                               marker, given, given.resolve()))
    return outputs


def _inputs(args: argparse.Namespace, actions: list[argparse.Action], output_dests: set[str]) -> list[tuple[str, Path]]:
    inputs = []
    for action in actions:
        if (action.dest in output_dests or action.dest.startswith("_") or is_output(action) or action.choices
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))):
            continue
        value = getattr(args, action.dest, None)
        if action.dest == "cache_dir" and value is None:
            value = default_cache_root()
        inputs += [(_option_name(action), path.resolve()) for path in _paths_in(value, action.dest in SPEC_OPTIONS)]
    return inputs


def default_cache_root() -> Path | None:
    """The feature cache root without --cache-dir (constants.cache_root); None when there is no home directory."""
    try:
        return cache_root()
    except (RuntimeError, KeyError):  # no $CLIPADAPT_CACHE, no $HOME and no passwd entry
        return None


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


# ----------------------------------------------------------------------------------------- checks
def _check_not_inputs(outputs: list[_Output], inputs: list[tuple[str, Path]]) -> None:
    for out in outputs:
        for option, path in inputs:
            if _inside(out.target, path):
                where = "is" if out.target == path else "lies inside"
                raise OutputError(f"{out.option} {out.given}: {where} the input {path} ({option}); writing there "
                                  "would overwrite the command's own input — choose an output path outside its inputs")
            if out.kind == DIR and _inside(path, out.target):
                raise OutputError(f"{out.option} {out.given}: contains the input {path} ({option}); the output "
                                  "directory is replaced whole — choose an output path outside its inputs")
    for a, b in itertools.combinations(outputs, 2):
        if a.target == b.target:
            raise OutputError(f"{a.option} and {b.option} name the same path {a.given}; give each its own")


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_writable(out: _Output, folder: Path) -> None:
    """Create and remove a temp file in the nearest existing directory at or above `folder`."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{out.option} {out.given}: {existing} is a file, not a directory; choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".clipadapt-probe-")
    except OSError as e:
        raise OutputError(f"{out.option} {out.given}: cannot write in {existing}: {e.strerror or e} "
                          f"[{errno.errorcode.get(e.errno, e.errno)}]; choose a writable place") from e
    os.close(fd)
    os.unlink(probe)


def _protected(target: Path) -> bool:
    """Directories --overwrite never replaces: the root, the home directory, the working directory and its parents."""
    cwd = Path.cwd().resolve()
    return target == Path(target.anchor) or target == _home() or _inside(cwd, target)


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError):  # no $HOME and no passwd entry
        return None


def _check_place(out: _Output, overwrite: bool) -> None:
    t, name = out.target, f"{out.option} {out.given}"
    if out.kind == FILE:
        if t.is_dir():
            raise OutputError(f"{name}: is a directory; {out.option} takes a file path")
        _check_writable(out, t.parent)
        return
    if t.exists() and not t.is_dir():
        raise OutputError(f"{name}: exists and is a file; {out.option} takes a directory")
    non_empty = t.is_dir() and any(t.iterdir())
    if out.kind == RESUME:
        if non_empty and not (t / out.marker).is_file():
            raise OutputError(f"{name}: the directory is not empty and holds no {out.marker}, so it is not a run "
                              "to resume; choose a new directory (or an earlier run's, to resume it)")
        _check_writable(out, t)
        return
    if non_empty and not overwrite:
        raise OutputError(f"{name}: the directory exists and is not empty; pass --overwrite to replace it whole "
                          "(nothing of it is kept), or choose a new directory")
    if non_empty and _protected(t):
        raise OutputError(f"{name}: --overwrite does not replace the root, home or working directory (or a parent "
                          "of the working directory); choose a directory of its own")
    _check_writable(out, t.parent)


def _is_secondary_rank() -> bool:
    """A torchrun worker other than rank 0: outputs are rank 0's to write (checked on every rank alike)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and int(os.environ.get("RANK", "0") or 0) != 0


# ----------------------------------------------------------------------------------------- staging
class Outputs:
    """The checked outputs of one command run: a context manager that renames each staged directory into place
    when the block ends normally (and `keep` is still true) and removes it otherwise."""

    def __init__(self, args: argparse.Namespace, staged: list[tuple[_Output, Path]], created: list[Path]):
        self.args, self.staged, self.created, self.keep = args, staged, created, True
        self._stdout = None

    def shown(self, text: Any) -> str:
        """`text` with each staging directory replaced by the target the user named."""
        text = str(text)
        for out, tmp in self.staged:
            text = text.replace(str(tmp), str(out.given))
        return text

    def __enter__(self) -> Outputs:
        if self.staged:
            self._stdout, sys.stdout = sys.stdout, _ShownStream(sys.stdout, self.shown)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._stdout is not None:
            sys.stdout, self._stdout = self._stdout, None
        if exc_type is None and self.keep:
            try:
                self.commit()
            except BaseException:
                self.discard()  # what was not renamed into place
                raise
        else:
            self.discard()

    def commit(self) -> None:
        overwrite = bool(getattr(self.args, "overwrite", False))
        for out, tmp in self.staged:
            if not overwrite and out.target.is_dir() and any(out.target.iterdir()):
                self.staged = [s for s in self.staged if s[1] != tmp]  # keep the results where they are
                raise OutputError(f"{out.option} {out.given}: the directory was filled by something else while the "
                                  f"command ran (another run?); the results are in {tmp} — move them yourself")
            _replace_dir(tmp, out.target)
            self.staged = [s for s in self.staged if s[1] != tmp]
            setattr(self.args, out.dest, out.given)

    def discard(self) -> None:
        for out, tmp in self.staged:
            shutil.rmtree(tmp, ignore_errors=True)
            setattr(self.args, out.dest, out.given)
        for folder in reversed(self.created):  # parents made for the staging directory, deepest first
            with contextlib.suppress(OSError):  # not empty: something else wrote there
                folder.rmdir()


class _ShownStream:
    """stdout whose text names the output targets instead of their staging directories."""

    def __init__(self, stream: Any, shown: Callable[[str], str]):
        self._stream, self._shown = stream, shown

    def write(self, text: str) -> int:
        return self._stream.write(self._shown(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Rename the staging directory `tmp` to `target`, replacing whatever directory is there, then fsync."""
    if target.is_dir() and any(target.iterdir()):
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".clipadapt-old"))
        os.replace(target, old)  # onto the empty directory just made
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)  # an absent or empty target
    fsync_directory(target.parent)


def _make_parents(folder: Path) -> list[Path]:
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        os.mkdir(path)
    return list(reversed(missing))


def _stage(out: _Output) -> tuple[Path, list[Path]]:
    created = _make_parents(out.target.parent)
    tmp = Path(tempfile.mkdtemp(dir=out.target.parent, prefix=f".{out.target.name}.", suffix=STAGING_SUFFIX))
    os.chmod(tmp, 0o777 & ~UMASK)
    return tmp, created


def prepare_outputs(args: argparse.Namespace, *, stage: bool = True) -> Outputs:
    """Check the outputs of the parsed command line `args` (module docstring) and, with `stage`, point each DIR
    output (and each output inside one) at its staging directory. Raises OutputError before anything is computed."""
    actions = command_actions(args)
    outputs = _outputs(args, actions)
    if not outputs:
        return Outputs(args, [], [])
    _check_not_inputs(outputs, _inputs(args, actions, {o.dest for o in outputs}))
    overwrite = bool(getattr(args, "overwrite", False))
    dirs = [o for o in outputs if o.kind == DIR]
    outer = {o.dest: next((d for d in dirs if d is not o and _inside(o.target, d.target)), None) for o in outputs}
    for out in outputs:
        if outer[out.dest] is None:  # one inside a staged directory is new there
            _check_place(out, overwrite)
    if not stage or _is_secondary_rank():
        return Outputs(args, [], [])
    staged, created = [], []
    try:
        for out in dirs:
            if outer[out.dest] is None:
                tmp, made = _stage(out)
                staged.append((out, tmp))
                created += made
    except OSError:
        Outputs(args, staged, created).discard()
        raise
    tmps = {out.dest: tmp for out, tmp in staged}
    for out in outputs:
        host = outer[out.dest]
        if host is not None:  # e.g. --save-logits DIR/logits.npy beside --out DIR
            setattr(args, out.dest, tmps[host.dest] / out.target.relative_to(host.target))
        elif out.dest in tmps:
            setattr(args, out.dest, tmps[out.dest])
    return Outputs(args, staged, created)
