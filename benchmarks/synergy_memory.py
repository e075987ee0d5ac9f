"""Peak memory of combining B backbones' logits (N × C each): streaming by row chunks vs stacking in memory.

Writes B random (N, C) float32 logits files, then, each in a fresh subprocess, runs one way of combining them
(mean of probabilities, `clipadapt.methods.ensembles.MeanProbs`) and records the peak *anonymous* resident
memory above the process's baseline (Linux `RssAnon`, sampled every 2 ms by a thread). Memory-mapped file
pages are page cache, not counted: they can be dropped at any time.

    python benchmarks/synergy_memory.py                     # B=4, N=20000, C=1000
    python benchmarks/synergy_memory.py --backbones 8 --n 50000

Modes: `stack` loads every file and stacks B×N×C (what not to do); `stream` = `predict_streaming` into an
(N, C) in-memory output; `stream_preds` = `predictions_streaming` (the B×N argmax table the oracle/agreement
analyses need). Results: benchmarks/results/synergy_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "synergy_memory.json"


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("RssAnon not available (Linux only)")


def child(mode: str, files: list[str], chunk_rows: int) -> dict:
    """Run one mode and return its peak anonymous memory above the baseline."""
    import torch

    from clipadapt.methods.ensembles import MeanProbs, predict_streaming, predictions_streaming

    torch.set_num_threads(1)
    arrays = [np.load(f, mmap_mode="r") for f in files]
    n, c = arrays[0].shape
    combiner = MeanProbs().fit([torch.zeros(1, c)] * len(arrays))
    base, peak, done = rss_anon_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    if mode == "stack":
        out = combiner.predict_logits([torch.from_numpy(np.array(a)) for a in arrays]).numpy()
    elif mode == "stream":
        out = predict_streaming(combiner, arrays, chunk_rows=chunk_rows)
    else:
        out = predictions_streaming(arrays, chunk_rows=chunk_rows).numpy()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_anon_mb())
    return {"mode": mode, "peak_extra_mb": peak[0] - base, "seconds": seconds, "output_mb": out.nbytes / 2**20,
            "chunk_rows": chunk_rows if mode != "stack" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", type=int, default=4)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, chunk, *files = args.child
        print(json.dumps(child(mode, files, int(chunk))))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        files = []
        for b in range(args.backbones):
            path = Path(tmp) / f"b{b}.npy"
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.n, args.classes))
            for start in range(0, args.n, 4096):  # write without holding the array in memory
                out[start:start + 4096] = rng.standard_normal((min(4096, args.n - start), args.classes), dtype=np.float32)
            out.flush()
            del out
            files.append(str(path))
        runs = [("stack", args.chunk_rows[0])] + [(m, k) for m in ("stream", "stream_preds") for k in args.chunk_rows]
        for mode, chunk in runs:
            cmd = [sys.executable, __file__, "--child", mode, str(chunk), *files]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            rows.append(res)
            print(f"{mode:>13} chunk={str(res['chunk_rows']):>5}: peak +{res['peak_extra_mb']:8.1f} MB  "
                  f"({res['seconds']:.2f} s, output {res['output_mb']:.1f} MB)")
    bxnxc_mb = args.backbones * args.n * args.classes * 4 / 2**20
    result = {"backbones": args.backbones, "n": args.n, "classes": args.classes, "stacked_logits_mb": bxnxc_mb,
              "measure": "peak RssAnon above baseline, sampled every 2 ms, fresh process per mode", "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"B×N×C float32 = {bxnxc_mb:.0f} MB; wrote {RESULTS}")


if __name__ == "__main__":
    main()
