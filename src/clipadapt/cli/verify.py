"""`clipadapt verify DIR...`: check feature and retrieval directories against their checksums.json (size and
sha256 of every file, written by clipadapt when it made the directory; docs/feature-format.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.errors import FeatureDirError

COMMAND = "verify"
HELP = "check feature/retrieval directories against their checksums.json (sizes and sha256 of every file)"
EXAMPLES = """
clipadapt verify feats/                       # every file's size and sha256; exit 2 naming each mismatch
clipadapt verify runs/pool-sharded/ feats/    # several directories (a sharded --out shares its shards with the cache)
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directories", nargs="+", type=Path, metavar="DIR",
                        help="directories written by clipadapt (import-features, extract --out, "
                             "retrieval --save-embeddings)")


def run(args: argparse.Namespace) -> int:
    from clipadapt.features.checksums import CHECKSUMS_FILE, check_checksums, unlisted_files

    failed = []
    for directory in args.directories:
        if not directory.is_dir():
            raise FeatureDirError(f"{directory}: not a directory")
        try:
            checked = check_checksums(directory, hashes=True)
        except FeatureDirError as e:
            print(f"{directory}: FAILED: {e}")
            failed.append(directory)
            continue
        if checked is None:
            print(f"{directory}: FAILED: no {CHECKSUMS_FILE} (not written by this clipadapt, or written by hand): "
                  "nothing to verify against")
            failed.append(directory)
            continue
        extra = unlisted_files(directory)
        note = f"; {len(extra)} files not listed (added later): {', '.join(extra[:5])}" if extra else ""
        print(f"{directory}: OK: {checked} files match their size and sha256{note}")
    if failed:
        raise FeatureDirError(f"{len(failed)} of {len(args.directories)} directories failed verification: "
                              f"{', '.join(map(str, failed))}")
    return 0
