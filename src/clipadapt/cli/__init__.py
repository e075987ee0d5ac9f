"""`clipadapt` command line: parses, calls the library, prints.

Each module under `clipadapt/cli/` (not starting with `_`) is one subcommand and defines
`COMMAND` (its name), `HELP`, `EXAMPLES` (shown at the end of its --help), `configure(parser)` and `run(args) -> int`.
The shared conventions (help format, --out DIR, provenance, closed pipes) are in `cli/_conventions.py`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

from clipadapt.cli._conventions import (
    HelpFormatter,
    add_parser,
    epilog,
    exit_on_closed_pipe,
    show_defaults_without_help,
)
from clipadapt.errors import ClipadaptError

EXAMPLES = """
clipadapt models ViT-B            # model ids usable as --model ARCH@TAG
clipadapt eval --features feats/ --method dn --out runs/dn
"""


def _command_modules() -> list[ModuleType]:
    package = importlib.import_module(__name__)
    modules = [
        importlib.import_module(f"{__name__}.{m.name}")
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.COMMAND)


def build_parser() -> argparse.ArgumentParser:
    from clipadapt.constants import __version__

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
        show_defaults_without_help(cmd)
        cmd.set_defaults(_run=_checking_hashes(module.run))
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
    """Entry point; returns the process exit code: 0, 2 for user errors (printed without a traceback),
    141 when stdout was closed early (`clipadapt models | head`). Bare `clipadapt` prints the help, exit 0."""
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
        try:
            code = int(args._run(args) or 0)
        except ClipadaptError as e:
            print(f"clipadapt {args.command}: error: {e}", file=sys.stderr)
            code = 2
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        return exit_on_closed_pipe()
