"""End-to-end start-up of the built-in quickstart vs importing torch alone (issue 11 target: within 2×).

Runs, interleaved, `python -m clipadapt eval --features builtin:coco500 --method dn` and
`python -c "import torch"` as fresh processes, and reports the median wall time and the median CPU time
(user + sys of the child, the steadier figure on a shared machine) of each, and their ratios. Saves
benchmarks/results/startup.json.

    PYTHONPATH=src python benchmarks/startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "clipadapt eval --features builtin:coco500 --method dn": [sys.executable, "-m", "clipadapt", "eval", "--features",
                                                               "builtin:coco500", "--method", "dn"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def _run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "startup.json")
    args = p.parse_args()
    for cmd in COMMANDS.values():  # warm the page cache once
        _run(cmd)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            samples[name].append(_run(cmd))
    result = {name: {"wall_median_s": statistics.median(w for w, _ in s),
                     "cpu_median_s": statistics.median(c for _, c in s),
                     "wall_s": [w for w, _ in s], "cpu_s": [c for _, c in s]} for name, s in samples.items()}
    cli, torch_only = (result[name] for name in COMMANDS)
    summary = {"wall_ratio": cli["wall_median_s"] / torch_only["wall_median_s"],
               "cpu_ratio": cli["cpu_median_s"] / torch_only["cpu_median_s"], "target": "<= 2x",
               "runs": args.runs, "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
               "python": platform.python_version()}
    for name, r in result.items():
        print(f"{name}: median wall {r['wall_median_s']:.2f} s, CPU {r['cpu_median_s']:.2f} s")
    print(f"ratio: wall {summary['wall_ratio']:.2f}x, CPU {summary['cpu_ratio']:.2f}x (load "
          f"{summary['load_avg_1min']:.1f})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"commands": result, **summary}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
