"""Is the pruned search exact on this device? Every grid cell of `search_tip_adapter` / `search_tip_x` against the
full search (tests/_search_reference.py) run on the same device, on the test suite's random small problems and on
CoOp-shaped synthetic data with each paper preset's grid. The CPU suite pins this on CPU; a GPU has its own exp
(CUDA's `expf`, within 2 ulp: the slack assumes it) and its own matrix products (cuBLAS), so a lent GPU should run
this before its figures are trusted.

    python benchmarks/search_device_check.py --device cuda [--problems 60]

Prints one line per check and writes benchmarks/results/search_device_check.json (under the device type); exits 1
when a grid differs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from _search_problems import both_searches, random_problem  # noqa: E402
from fewshot_search import synthetic  # noqa: E402

from clipadapt import __version__  # noqa: E402
from clipadapt.argtypes import NON_NEGATIVE_INT  # noqa: E402
from clipadapt.eval import search  # noqa: E402


def same_grid(tip: bool, data, grid: dict, chunk: int | None) -> tuple[bool, int]:
    """(every cell equal, cells differing) of the pruned and the full search on the same inputs."""
    ours, reference = both_searches(tip, data, grid, chunk)
    return bool(torch.equal(ours, reference)), int((ours != reference).sum())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--problems", type=NON_NEGATIVE_INT, default=60,
                        help="random small problems (the test suite's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_device_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    search.PRUNE_MIN_POINTS = 0  # prune even the small planes, as the tests do
    start = time.perf_counter()
    checks = []
    for seed in range(args.problems):
        protos, keys, key_labels, val, val_labels, grid, chunk, tip = random_problem(seed)
        data = tuple(t.to(device) for t in (protos, keys, key_labels, val, val_labels))
        ok, cells = same_grid(tip, data, grid, chunk)
        checks.append({"check": f"random problem {seed}", "method": "tip" if tip else "tipx", "equal": ok,
                       "cells_differing": cells})
    data = tuple(t.to(device) for t in synthetic(37, 736, 1)[:5])  # Pets-shaped, 16 shots
    seen = set()
    for preset in search.PRESET_NAMES:
        for method, space in search.grid_preset(preset).items():
            grid = {f"{name}s": values for name, values in space.grid.items()}
            key = (method, repr(grid))
            if key in seen:  # presets share grids (the loop order only breaks ties: not compared here)
                continue
            seen.add(key)
            ok, cells = same_grid(method == "tip", data, grid, None)
            checks.append({"check": f"pets-shaped, preset {preset}", "method": method, "equal": ok,
                           "cells_differing": cells})
    for c in checks[args.problems:]:
        print(f"{c['check']:32s} {c['method']:5s} {'equal' if c['equal'] else 'DIFFERS'} ({c['cells_differing']})")
    failed = [c for c in checks if not c["equal"]]
    print(f"{len(checks) - len(failed)} of {len(checks)} grids equal on {device}"
          + (f"; differing: {[c['check'] + ' ' + c['method'] for c in failed]}" if failed else ""))
    record = {"schema": "clipadapt.bench.search_device_check/1", "clipadapt": __version__,
              "command": "python benchmarks/search_device_check.py " + " ".join(sys.argv[1:]),
              "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                         else platform.processor() or platform.machine()),
              "torch": torch.__version__, "all_equal": not failed, "checks": checks,
              "wall_seconds": time.perf_counter() - start}
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[device.type] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
