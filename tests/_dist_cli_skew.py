"""`clipadapt` CLI entry for the file-state skew test: argv[1] is the rank whose files look different (as on a node
with its own copy of the dataset: same bytes, other mtimes); the rest is the clipadapt command line."""

from __future__ import annotations

import os
import sys


def install_skew(rank: int) -> None:
    if int(os.environ.get("RANK", 0)) != rank:
        return
    import clipadapt.features.cache as cache

    real = cache._file_record
    cache._file_record = lambda path, check: real(path, check) + "+other-node"


if __name__ == "__main__":
    install_skew(int(sys.argv[1]))
    from clipadapt.cli import main

    sys.exit(main(sys.argv[2:]))
