"""The conventions every subcommand follows: help with defaults and examples, `--out DIR` (results.json and its
tables/plots inside, old spellings still accepted with a deprecation note), provenance in each results file, the
baseline printed next to the method, and a quiet exit on a closed pipe.

Torch-free at import (the parser is built from it); feature-set helpers import nothing heavy either.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt.argtypes import range_text
from clipadapt.cli._outputs import DIR, FILE, nested_parsers, output_option
from clipadapt.errors import ClipadaptError
from clipadapt.report.provenance import path_fingerprint, paths_fingerprint, provenance
from clipadapt.report.tables import write_json

RESULTS_FILE = "results.json"


# ----------------------------------------------------------------------------------------- help
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless the help already says it, or there is none: None, False, SUPPRESS)
    and a checked numeric option's allowed range (clipadapt.argtypes, e.g. '[range: >= 1]'), and keeps the
    epilog's examples as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (_has_default(action.default) and "default" not in text.lower()
                and (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
                and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            text = f"{text} (default: {_show(action.default)})" if text else f"default: {_show(action.default)}"
        allowed = range_text(action.type)
        if allowed is not None and "range:" not in text:
            shown = f"[range: {allowed}]".replace("%", "%%")
            text = f"{text} {shown}" if text else shown
        return text


def show_defaults_without_help(parser: argparse.ArgumentParser) -> None:
    """argparse prints nothing for an option without help text, so give those a help that is just their default
    (nested subcommands included)."""
    for action in (a for p in nested_parsers(parser) for a in p._actions):
        if action.help is None and action.option_strings and _has_default(action.default):
            action.help = f"default: {_show(action.default)}"
        elif action.help is None and action.option_strings and range_text(action.type) is not None:
            action.help = f"[range: {range_text(action.type)}]"


def _has_default(value: Any) -> bool:
    """A default worth printing: not None ('unset'), not a flag's False, not an empty list, not SUPPRESS."""
    return not (value is None or value is False or value is argparse.SUPPRESS
                or (isinstance(value, list) and not value))


def _show(value: Any) -> str:
    """A default as the user would type it, '%'-escaped for argparse's formatting."""
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value) if value else "none"
    return str(value).replace("%", "%%")


def epilog(examples: str) -> str:
    """The 'examples:' block printed at the end of a command's --help."""
    lines = textwrap.dedent(examples).strip("\n").splitlines()
    return "examples:\n" + "\n".join(f"  {line.rstrip()}" if line.strip() else "" for line in lines)


def add_parser(sub: Any, name: str, *, help: str, examples: str,
               description: str | None = None) -> argparse.ArgumentParser:
    """A (sub)command parser with the house help format and its examples at the end."""
    return sub.add_parser(name, help=help, description=description or help, epilog=epilog(examples),
                          formatter_class=HelpFormatter)


# ----------------------------------------------------------------------------------------- deprecations
def deprecated(message: str) -> None:
    """One line on stderr: the old spelling still works, this is what to write instead."""
    print(f"clipadapt: deprecated: {message}", file=sys.stderr)


class DeprecatedAlias(argparse.Action):
    """An old option spelling stored into the new option's dest, with a deprecation note naming the new one."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        deprecated(f"{option_string} is now {self.new}; {option_string} will be removed")
        setattr(namespace, self.dest, values)


def add_out_argument(parser: argparse.ArgumentParser, *, writes: str = "", required: bool = False,
                     aliases: Sequence[str] = (), legacy_json: bool = False) -> None:
    """--out DIR (results.json + `writes` inside). Old spellings still work, with a note on stderr: option names in
    `aliases`, and with `legacy_json` the old `--out FILE.json` (that file alone)."""
    group = parser.add_mutually_exclusive_group(required=required) if aliases else parser
    text = f"output directory: {RESULTS_FILE}{', ' + writes if writes else ''}"
    if legacy_json:
        text += " (the old form --out FILE.json still writes that one file)"
    action = group.add_argument("--out", type=Path, required=required and not aliases, metavar="DIR", help=text)
    output_option(action, _dir_or_legacy_json if legacy_json else DIR)
    for alias in aliases:
        group.add_argument(alias, dest="out", type=Path, action=DeprecatedAlias, new="--out", help=argparse.SUPPRESS)


def _dir_or_legacy_json(args: argparse.Namespace, out: Path) -> str:
    return FILE if is_legacy_json(out) else DIR


def results_path(out: Path | None) -> Path | None:
    """Where results.json goes for --out: DIR/results.json; an old-style `--out FILE.json` is still written as
    that file (with a deprecation note). None without --out."""
    if out is None:
        return None
    if is_legacy_json(out):
        deprecated(f"--out {out}: --out now takes a directory (DIR/{RESULTS_FILE} and the tables); "
                   f"writing {out} alone for now")
        return out
    return out / RESULTS_FILE


def is_legacy_json(out: Path | None) -> bool:
    """`--out FILE.json`: the pre-directory form of --out (results JSON only)."""
    return out is not None and out.suffix.lower() == ".json" and not out.is_dir()


def out_dir(out: Path | None) -> Path | None:
    """The directory for the tables/plots beside results.json; None without --out or for an old-style FILE.json."""
    return None if out is None or is_legacy_json(out) else out


# ----------------------------------------------------------------------------------------- results
def run_provenance(args: argparse.Namespace, *, model: Any = None, data: Any = None,
                   fingerprint: Any = None) -> dict[str, Any]:
    """`report.provenance.provenance` for this invocation (the argv that `main` recorded on args)."""
    return provenance(getattr(args, "_argv", None), model=model, data=data, data_fingerprint=fingerprint)


def featureset_inputs(fs: Any) -> tuple[Any, Any, Any]:
    """(model, data, fingerprint) of a FeatureSet: its directory when it was read from one, else the cache
    entries it was assembled from (extracted through the cache for --model/--dataset)."""
    model = fs.meta.get("model")
    if fs.source is not None and Path(fs.source).is_dir():
        return model, str(fs.source), path_fingerprint(fs.source)
    entries = fs.meta.get("cache") or {}
    if entries:
        paths = [entries[k] for k in sorted(entries)] + ([fs.meta["text_cache"]] if fs.meta.get("text_cache") else [])
        data = {"dataset": fs.meta.get("dataset"), "cache_entries": paths}
        return model, data, paths_fingerprint(paths)
    return model, fs.meta.get("dataset") or (str(fs.source) if fs.source else None), None


def featureset_provenance(args: argparse.Namespace, fs: Any) -> dict[str, Any]:
    model, data, fingerprint = featureset_inputs(fs)
    return run_provenance(args, model=model, data=data, fingerprint=fingerprint)


def path_provenance(args: argparse.Namespace, paths: dict[str, Path | None], model: Any = None,
                    unhashed: Sequence[str] = ()) -> dict[str, Any]:
    """Provenance of a run that read the given files/directories (None entries are left out). Keys in `unhashed`
    (image folders: every byte of a dataset) are recorded without a fingerprint."""
    given = {k: p for k, p in paths.items() if p is not None}
    if len(given) == 1 and not unhashed:
        (path,) = given.values()
        return run_provenance(args, model=model, data=str(path), fingerprint=path_fingerprint(path))
    return run_provenance(args, model=model, data={k: str(p) for k, p in given.items()},
                          fingerprint={k: None if k in unhashed else path_fingerprint(p) for k, p in given.items()})


def dataset_provenance(args: argparse.Namespace, *, model: Any, spec: str, splits: Sequence[str]) -> dict[str, Any]:
    """Provenance of a run on a dataset spec encoded through the cache: each split's item-list fingerprint
    (`ImageDataset.fingerprint`: paths, labels, class names), keyed by split."""
    from clipadapt.data import build_dataset

    prints = {}
    for split in splits:
        try:
            prints[split] = f"dataset-sha256:{build_dataset(spec, split).fingerprint()}"
        # provenance never fails a finished run; a split that cannot be built has no print
        except (ClipadaptError, OSError):
            prints[split] = None
    return run_provenance(args, model=model, data=spec, fingerprint=prints)


def write_results(path: Path | None, results: dict[str, Any], provenance: dict[str, Any]) -> Path | None:
    """results.json with its provenance block (numbers rounded by report.tables.write_json); prints the path."""
    if path is None:
        return None
    write_json(path, {**results, "provenance": provenance})
    print(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------------------- console
def vs_baseline(value: float, baseline: float | None, name: str, digits: int = 2) -> str:
    """'57.00 (zero-shot 56.75, +0.25)': a method's figure with the baseline it improves on."""
    if baseline is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({name} {baseline:.{digits}f}, {value - baseline:+.{digits}f})"


def draws_identical(repeats: int, used: Sequence[int], pool: Sequence[int]) -> bool:
    """Several DN draws that all use every pool row (--dn-samples all, or >= the pool size) are the same draw."""
    return repeats > 1 and all(u >= p for u, p in zip(used, pool))


def identical_draws_note(repeats: int) -> str:
    return (f"the {repeats} DN draws are identical: each uses every pool row (--dn-samples all, or at least the "
            f"pool size), so --dn-repeats has nothing to vary")


# ----------------------------------------------------------------------------------------- closed pipes
def exit_on_closed_pipe() -> int:
    """After a BrokenPipeError on stdout (`clipadapt models | head`): point stdout at /dev/null so the interpreter's
    final flush cannot fail again, and return the exit code of a process ended by SIGPIPE (141), quietly."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141
