"""Cost of the feature-directory integrity manifest (checksums.json, issue 12 item 9) on the read and write paths.

    PYTHONPATH=src python benchmarks/checksums.py [--rows 50000] [--dim 512] [--repeats 5]

  size_check    check_checksums(DIR) alone: what the default read adds (one stat per file)
  load          load_feature_dir on a directory with checksums.json (the default read)
  load_plain    the same directory without checksums.json (the read before the manifest existed)
  load_verify   load_feature_dir inside verifying() (--verify: every file hashed, then read)
  write         save_feature_dir (checksums.json included: every file hashed once after writing)
  write_plain   save_feature_dir(checksums=False)
Median wall seconds of --repeats runs, interleaved; files are in the page cache (a cold disk reads slower, which
only the verify and write rows pay). Writes benchmarks/results/checksums.json.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from clipadapt.features import FeatureSet, FeatureSplit, load_feature_dir, save_feature_dir
from clipadapt.features.checksums import CHECKSUMS_FILE, check_checksums, verifying
from clipadapt.report import markdown_table, write_json


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "checksums.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(args.rows, args.dim, generator=g)
    labels = torch.randint(0, 100, (args.rows,), generator=g)
    fs = FeatureSet(classnames=[f"c{i}" for i in range(100)], text=torch.randn(100, args.dim, generator=g),
                    splits={"test": FeatureSplit(image, labels)},
                    meta={"model": "synthetic"})
    cases = ("size_check", "load", "load_plain", "load_verify", "write", "write_plain")
    times: dict[str, list[float]] = {k: [] for k in cases}
    with tempfile.TemporaryDirectory() as tmp:
        checked, plain = Path(tmp) / "checked", Path(tmp) / "plain"
        save_feature_dir(fs, checked)
        save_feature_dir(fs, plain, checksums=False)
        size = sum(p.stat().st_size for p in checked.iterdir())
        for _ in range(args.repeats):
            times["size_check"].append(_timed(lambda: check_checksums(checked, hashes=False)))
            times["load"].append(_timed(lambda: load_feature_dir(checked)))
            times["load_plain"].append(_timed(lambda: load_feature_dir(plain)))
            with verifying():
                times["load_verify"].append(_timed(lambda: load_feature_dir(checked)))
            for name, kwargs in (("write", {}), ("write_plain", {"checksums": False})):
                target = Path(tmp) / f"w-{name}"
                shutil.rmtree(target, ignore_errors=True)
                times[name].append(_timed(lambda t=target, kw=kwargs: save_feature_dir(fs, t, **kw)))
        assert (checked / CHECKSUMS_FILE).is_file() and not (plain / CHECKSUMS_FILE).exists()
    rows = [{"case": k, "median_s": round(statistics.median(v), 6), "runs": [round(x, 6) for x in v]}
            for k, v in times.items()]
    print(f"feature directory: {args.rows} x {args.dim} float32 + labels, {size / 2**20:.1f} MiB")
    print(markdown_table(rows, ["case", "median_s"]), end="")
    med = {r["case"]: r["median_s"] for r in rows}
    summary = {"size_check_s": med["size_check"], "load_overhead_s": round(med["load"] - med["load_plain"], 4),
               "verify_overhead_s": round(med["load_verify"] - med["load"], 4),
               "write_overhead_s": round(med["write"] - med["write_plain"], 4)}
    print(summary)
    write_json(args.out, {"rows": args.rows, "dim": args.dim, "bytes": size, "repeats": args.repeats, "cases": rows,
                          **summary, "machine": platform.platform(), "torch_threads": 1})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
