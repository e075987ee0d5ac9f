"""`clipadapt` CLI entry for the sharded torchrun test: any assembly of a whole split (`ShardedSplit.load`, the
one assembler) or in-memory load of a split kills the process, on every rank; the rest of argv is the clipadapt
command line."""

from __future__ import annotations

import sys


def forbid_assembly() -> None:
    import clipadapt.features.cache as cache
    from clipadapt.features.shards import ShardedSplit

    def refuse(*args, **kwargs):
        raise SystemExit("a whole split was assembled or loaded in memory")

    cache.load_split = refuse
    ShardedSplit.load = refuse


if __name__ == "__main__":
    forbid_assembly()
    from clipadapt.cli import main

    sys.exit(main(sys.argv[1:]))
