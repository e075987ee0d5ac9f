"""Peak memory of publishing a cache entry from its finished shards (`FeatureCache.publish_shards`: index, paths,
manifest — every entry's one storage form since cache version 2) and of reading the entry back: into memory
(`FeatureCache.load_split`, what `get_feature_set` does) vs memory-mapped (`open_split` + one streaming pass over
every row, what `--sharded` does). Each step runs in a fresh process on the same synthetic shards.

    PYTHONPATH=src python benchmarks/sharded_publish_memory.py [--rows 200000] [--dim 512] [--shard 8192]

Peak RSS comes from /proc/self/status (VmHWM) after resetting it through /proc/self/clear_refs, so each figure
is the step's own peak above the process's resting size (the dataset's path list is built before the reset).
Writes benchmarks/results/sharded_publish_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sharded_publish_memory.json"

CHILD = r"""
import sys, json, time
from pathlib import Path
from clipadapt.features.cache import CacheEntry, FeatureCache
from clipadapt.features.shards import plan_shards

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0

step, directory, rows, shard = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cache, entry = FeatureCache(directory.parent), CacheEntry(directory, {"kind": "benchmark", "rows": rows})
shards, paths = plan_shards(rows, shard), [f"/data/images/{i:09d}.jpg" for i in range(rows)]
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
base, t0 = vm("VmRSS"), time.perf_counter()
if step == "publish":
    split = cache.publish_shards(entry, "train", shards, paths, [])
    checksum = float(split.n)
elif step == "read-memory":
    split, _ = cache.load_split(entry, "train", num_classes=10)
    checksum = sum(float(c.double().sum()) for c in split.image.split(shard))  # chunked: no float64 copy
else:  # read-sharded: verify + open memory-mapped, then one streaming pass over every row
    split, _ = cache.open_split(entry, "train")
    checksum = sum(float(image.double().sum()) for image, _ in split.iter_chunks(shard))
seconds = time.perf_counter() - t0
print(json.dumps({"peak_extra_mb": (vm("VmHWM") - base) / 2**20, "seconds": seconds, "checksum": checksum}))
"""


def run_child(step: str, directory: Path, rows: int, shard: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, step, str(directory), str(rows), str(shard)],
                         capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_shards(entry: Path, rows: int, dim: int, shard: int) -> None:
    """The finished shards of a `rows` x `dim` split, as extraction leaves them in ENTRY/shards/."""
    from clipadapt.features.shards import plan_shards, write_shard

    g = torch.Generator().manual_seed(0)
    for start, stop in plan_shards(rows, shard):
        write_shard(entry / "shards", start, torch.randn(stop - start, dim, generator=g),
                    torch.randint(0, 10, (stop - start,), generator=g))


def main() -> int:
    from clipadapt.report import markdown_table, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    split_mb = args.rows * args.dim * 4 / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        entry = Path(tmp) / "entry"
        write_shards(entry, args.rows, args.dim, args.shard)
        steps = ("publish", "read-memory", "read-sharded")
        runs = {step: run_child(step, entry, args.rows, args.shard) for step in steps}
    assert abs(runs["read-memory"]["checksum"] - runs["read-sharded"]["checksum"]) < 1e-2 * split_mb, runs
    rows = [{"step": step, "peak extra MB": r["peak_extra_mb"], "× split size": r["peak_extra_mb"] / split_mb,
             "seconds": r["seconds"]} for step, r in runs.items()]
    print(f"{args.rows} rows × {args.dim} float32 = {split_mb:.0f} MB in shards of {args.shard} rows")
    print(markdown_table(rows, digits=2))
    write_json(args.out, {"benchmark": "sharded_publish_memory", "rows": args.rows, "dim": args.dim,
                          "shard_rows": args.shard, "split_mb": split_mb, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
