"""`clipadapt` command line: parses, calls the library, prints.

Each module under `clipadapt/cli/` (not starting with `_`) is one subcommand and defines
`COMMAND` (its name), `HELP`, `EXAMPLES` (shown at the end of its --help), `configure(parser)` and `run(args) -> int`.
The shared conventions (help format, --out DIR, provenance, closed pipes) are in `cli/_conventions.py`; the
output paths (checked before computing, directories written whole) in `cli/_outputs.py`.

Errors (`main`): a ClipadaptError (a user error clipadapt detected) and an OSError (a read-only file system, a full
disk, no permission, a directory where a file was expected, ...) are one line on stderr naming the path, exit 2.
Any other exception is a bug: one line with its type, message and the clipadapt line it came from, and "rerun with
-v", exit 1; with -v the full traceback. Ctrl-C: one line, exit 130. A closed stdout: quiet, exit 141.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import pkgutil
import sys
import traceback
from pathlib import Path
from types import ModuleType

from clipadapt.cli._conventions import (
    HelpFormatter,
    add_parser,
    epilog,
    exit_on_closed_pipe,
    show_defaults_without_help,
)
from clipadapt.cli._outputs import add_overwrite_options, prepare_outputs
from clipadapt.constants import __version__
from clipadapt.errors import ClipadaptError

EXAMPLES = """
clipadapt models ViT-B            # model ids usable as --model ARCH@TAG
clipadapt eval --features feats/ --method dn --out runs/dn
"""


def _command_modules() -> list[ModuleType]:
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
               if not m.name.startswith("_")]
    return sorted(modules, key=lambda m: m.COMMAND)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipadapt", description="Test-time improvements for CLIP-style vision-language models.",
        epilog=epilog(EXAMPLES + "clipadapt COMMAND --help    # each command's options, defaults and examples\n"),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clipadapt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages, and the INFO messages of open_clip and other libraries")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        cmd = add_parser(sub, module.COMMAND, help=module.HELP, examples=module.EXAMPLES)
        module.configure(cmd)
        add_overwrite_options(cmd)
        show_defaults_without_help(cmd)
        cmd.set_defaults(_run=_checking_hashes(module.run), _parser=cmd)
    return parser


def _checking_hashes(run):
    """`run`, inside `features.checksums.verifying()` when the command was given --verify (every directory read
    is then hash-checked against its checksums.json); imported only then, so the parser stays torch-free."""
    def wrapped(args: argparse.Namespace) -> int:
        if not getattr(args, "verify", False):
            return run(args)
        from clipadapt.features.checksums import verifying

        with verifying():
            return run(args)

    wrapped.__wrapped__ = run
    return wrapped


def _configure_logging(verbose: bool) -> None:
    """clipadapt's own INFO messages always; other libraries' (open_clip's "Loaded ... model config") only with -v."""
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    logging.getLogger().setLevel(level)  # also when handlers were installed before (basicConfig then does nothing)
    logging.getLogger("clipadapt").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code: 0; 2 for user errors and file-system errors (one line naming the
    path, no traceback); 1 for a bug (one line, the traceback with -v); 130 on Ctrl-C; 141 when stdout was closed
    early (`clipadapt models | head`). Bare `clipadapt` prints the help, exit 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:  # bare `clipadapt` (or only -v)
            parser.print_help()
            sys.stdout.flush()
            return 0
        args._argv = argv  # the command line, for the provenance of results files
        _configure_logging(args.verbose)
        code = _run_command(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        return exit_on_closed_pipe()


def _run_command(args: argparse.Namespace) -> int:
    """The command, its outputs checked before it computes (cli/_outputs.py), and the one place where every
    exception becomes an exit code and a message (module docstring)."""
    shown = str
    name = f"clipadapt {args.command}"
    try:
        outputs = prepare_outputs(args)
        shown = outputs.shown
        with outputs:
            code = int(args._run(args) or 0)
            outputs.keep = code == 0
        return code
    except BrokenPipeError:
        raise
    except ClipadaptError as e:
        print(f"{name}: error: {shown(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.verbose:
            traceback.print_exc()
        print(f"{name}: error: {shown(os_error_message(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: the traceback is for -v
        if args.verbose:
            traceback.print_exc()
            return 1
        print(f"{name}: internal error: {type(e).__name__}: {shown(e)}{_where(e)} — a bug in clipadapt; rerun with "
              "-v for the traceback and report it", file=sys.stderr)
        return 1


OS_ERROR_REASONS = {
    errno.ENOSPC: "no space left on device (free some space, or write the outputs elsewhere)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory (a file was expected)",
    errno.ENOTDIR: "not a directory (a part of the path is a file)",
    errno.ENOENT: "no such file or directory",
    errno.EEXIST: "already exists",
    errno.ENOTEMPTY: "directory not empty",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (a failing disk or network file system)",
}


def os_error_message(e: OSError) -> str:
    """'PATH: no space left on device (...) [ENOSPC]': the path(s), a plain reason and the errno name."""
    reason = OS_ERROR_REASONS.get(e.errno, e.strerror or str(e))
    code = errno.errorcode.get(e.errno) if e.errno is not None else None
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    text = f"{paths}: {reason}" if paths else reason
    return f"{text} [{code}]" if code else text


def _where(e: BaseException) -> str:
    """' (at clipadapt/eval/x.py:12 in f)': the innermost clipadapt line of the traceback, or ''."""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        parts = Path(frame.filename).parts
        if "clipadapt" in parts:
            inner = parts[len(parts) - 1 - parts[::-1].index("clipadapt"):]
            return f" (at {'/'.join(inner)}:{frame.lineno} in {frame.name})"
    return ""
