"""Peak memory of assembling a split from its shards: `ShardedSplit.load`, the one assembler (copies each shard's
rows into one preallocated tensor; what `get_feature_set` does with a cache entry), vs concatenating the loaded
shards (what extraction did before), each in a fresh process, on the same shard files.

    PYTHONPATH=src python benchmarks/assemble_memory.py [--rows 200000] [--dim 512] [--shard 8192]

Peak RSS comes from /proc/self/status (VmHWM) after resetting it through /proc/self/clear_refs, so each figure
is the assembly's own peak above the process's resting size. Writes benchmarks/results/assemble_memory.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "assemble_memory.json"

CHILD = r"""
import sys, json, torch
from pathlib import Path
from clipadapt.features.shards import ShardedSplit, plan_shards, read_shard, shard_path

def vm(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0

mode, directory, rows, shard = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
shards = plan_shards(rows, shard)
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
base = vm("VmRSS")
if mode == "preallocated":
    image = ShardedSplit([shard_path(directory, a, b) for a, b in shards]).load().image
else:  # the earlier code: every shard loaded, then concatenated
    image = torch.cat([read_shard(shard_path(directory, a, b))[0]["image"] for a, b in shards]).float()
print(json.dumps({"peak_extra_mb": (vm("VmHWM") - base) / 2**20, "checksum": float(image.double().sum())}))
"""


def run_child(mode: str, directory: Path, rows: int, shard: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(directory), str(rows), str(shard)],
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(ROOT / "src")})
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    from clipadapt.features.shards import plan_shards, write_shard
    from clipadapt.report import markdown_table, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    split_mb = args.rows * args.dim * 4 / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        g = torch.Generator().manual_seed(0)
        for start, stop in plan_shards(args.rows, args.shard):
            write_shard(directory, start, torch.randn(stop - start, args.dim, generator=g),
                        torch.zeros(stop - start, dtype=torch.long))
        runs = {mode: run_child(mode, directory, args.rows, args.shard) for mode in ("concatenated", "preallocated")}
    assert abs(runs["concatenated"]["checksum"] - runs["preallocated"]["checksum"]) < 1e-3, runs
    rows = [{"assembly": mode, "peak extra MB": r["peak_extra_mb"], "× split size": r["peak_extra_mb"] / split_mb}
            for mode, r in runs.items()]
    print(f"{args.rows} rows × {args.dim} float32 = {split_mb:.0f} MB in shards of {args.shard} rows")
    print(markdown_table(rows, digits=2))
    write_json(args.out, {"benchmark": "assemble_memory", "rows": args.rows, "dim": args.dim, "shard_rows": args.shard,
                          "split_mb": split_mb, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
