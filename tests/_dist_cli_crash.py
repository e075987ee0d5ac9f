"""`clipadapt` CLI entry for the crash test: argv[1] is a JSON {"die_rank": R, "die_at_shard": K}; the rest is the
clipadapt command line. Rank R exits abruptly while writing its K-th shard (temp file written, not yet renamed)."""

from __future__ import annotations

import json
import os
import sys


def install_crash(die_rank: int, die_at_shard: int) -> None:
    if int(os.environ.get("RANK", 0)) != die_rank:
        return
    count = {"n": 0}
    real_replace = os.replace

    def dying_replace(src, dst):
        if "rows-" in os.path.basename(str(dst)):
            count["n"] += 1
            if count["n"] == die_at_shard:
                os._exit(17)
        return real_replace(src, dst)

    os.replace = dying_replace  # the process dies anyway; only shard renames are affected


if __name__ == "__main__":
    install_crash(**json.loads(sys.argv[1]))
    from clipadapt.cli import main

    sys.exit(main(sys.argv[2:]))
