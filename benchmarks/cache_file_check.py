"""Cost of the feature cache's stale-file check (the files part of an image key) and of its entry lock.

    PYTHONPATH=src python benchmarks/cache_file_check.py [--n-stat 20000] [--n-hash 300] [--file-kb 110]

  stat    files_digest(check='stat') over --n-stat small files: one os.stat per file (the default check)
  sha256  files_digest(check='sha256') over --n-hash files of --file-kb KiB (110 KiB ~ an average ImageNet
          JPEG): reads every byte
  lock    FeatureCache.lock acquire + release of one entry, uncontended
Per-file costs are projected to a 1M-image dataset. Files are freshly written, so they are in the page cache:
cold disks and network file systems are slower (stat especially on NFS). Writes
benchmarks/results/cache_file_check.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from clipadapt.features.cache import FeatureCache, files_digest, image_key
from clipadapt.report import markdown_table, write_json


def _write_files(root: Path, n: int, size: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = root / f"{i:07d}.jpg"
        p.write_bytes(os.urandom(size))
        paths.append(str(p))
    return paths


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stat", type=int, default=20000)
    ap.add_argument("--n-hash", type=int, default=300)
    ap.add_argument("--file-kb", type=int, default=110)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_file_check.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = _write_files(Path(tmp) / "small", args.n_stat, 256)
        big = _write_files(Path(tmp) / "big", args.n_hash, args.file_kb * 1024)
        stat_s = _best(lambda: files_digest(small, "stat"), args.repeats)
        hash_s = _best(lambda: files_digest(big, "sha256"), args.repeats)
        cache = FeatureCache(Path(tmp) / "cache")
        entry = cache.image_entry(image_key({"model_id": "m"}, {"name": "d", "split": "test"}, views=1, seed=0))

        def lock_once():
            with cache.lock(entry):
                pass

        lock_s = _best(lambda: [lock_once() for _ in range(1000)], args.repeats) / 1000
    rows = [
        {"check": "stat (default)", "files": args.n_stat, "seconds": stat_s, "us_per_file": 1e6 * stat_s / args.n_stat,
         "projected_1M_s": 1e6 * stat_s / args.n_stat},
        {"check": f"sha256 ({args.file_kb} KiB files)", "files": args.n_hash, "seconds": hash_s,
         "us_per_file": 1e6 * hash_s / args.n_hash, "projected_1M_s": 1e6 * hash_s / args.n_hash},
        {"check": "entry lock acquire+release", "files": 1, "seconds": lock_s, "us_per_file": 1e6 * lock_s,
         "projected_1M_s": None},
    ]
    print(markdown_table(rows, digits=3), end="")
    mb_s = args.n_hash * args.file_kb / 1024 / hash_s
    print(f"sha256 throughput {mb_s:.0f} MiB/s (page cache)")
    write_json(args.out, {"rows": rows, "sha256_mib_per_s": mb_s, "args": {k: str(v) for k, v in vars(args).items()},
                          "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                          "note": "files freshly written (page cache); cold disks / NFS are slower"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
