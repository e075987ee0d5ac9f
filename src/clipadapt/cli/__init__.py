"""`clipadapt` command line: parses, calls the library, prints.

Each module under `clipadapt/cli/` (not starting with `_`) is one subcommand and defines
`COMMAND` (its name), `HELP`, `configure(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

from clipadapt.errors import ClipadaptError


def _command_modules() -> list[ModuleType]:
    package = importlib.import_module(__name__)
    modules = [
        importlib.import_module(f"{__name__}.{m.name}")
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: m.COMMAND)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipadapt", description="Test-time improvements for CLIP-style vision-language models."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        cmd = sub.add_parser(module.COMMAND, help=module.HELP, description=module.HELP)
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for user errors, printed without a traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args._run(args) or 0)
    except ClipadaptError as e:
        print(f"clipadapt {args.command}: error: {e}", file=sys.stderr)
        return 2
