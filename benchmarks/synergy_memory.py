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

`--suite evaluate` times the whole scoring of `evaluate_synergy` (every combiner, cascade, subsets, per-class;
combiners fitted beforehand on 500 seeded held-out rows, outside the measured region) two ways:
`per_pass` = each analysis and each combiner its own pass over the files with an (N, C) output per combiner
(the path evaluate_synergy took up to commit 10bcc08, top-1 only) and `one_pass` = today's `evaluate_synergy`
(each chunk read once, top-1 and top-5). It checks both give the same top-1 numbers, counts the rows read,
and writes benchmarks/results/synergy_evaluate.json.

    python benchmarks/synergy_memory.py --suite evaluate    # B=4, N=20000, C=1000, chunk 1024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "synergy_memory.json"
RESULTS_EVALUATE = Path(__file__).resolve().parent / "results" / "synergy_evaluate.json"


def rss_anon_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("RssAnon not available (Linux only)")


@contextmanager
def peak_anon_memory() -> Iterator[dict[str, float]]:
    """Samples anonymous RSS every 2 ms on a thread while the block runs; on exit the yielded dict holds
    'extra_mb', the peak above the level at entry."""
    base, peak, done = rss_anon_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mb())
            time.sleep(0.002)

    result: dict[str, float] = {}
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["extra_mb"] = max(peak[0], rss_anon_mb()) - base


class CountingArray:
    """Wraps a memory-mapped array and counts the rows read through it."""

    def __init__(self, array: np.ndarray):
        self.array, self.rows_read = array, 0

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = self.array[rows]
        self.rows_read += block.shape[0]
        return block


def _per_pass(names, test, fitted, chunk_rows):
    """What evaluate_synergy did before the single pass: one pass per analysis and per combiner."""
    import torch

    from clipadapt.eval import synergy as syn
    from clipadapt.eval.synergy_combiners import predict_streaming, predictions_streaming
    from clipadapt.methods.logit_controller import NeuralLogitController

    preds = predictions_streaming(test.logits, chunk_rows=chunk_rows)
    summary = syn.synergy_summary(preds, test.labels, names)
    combined = {}
    for key, est in fitted.combiners.items():
        if isinstance(est, NeuralLogitController):
            out = np.empty((test.n, test.num_classes), dtype=np.float32)
            for start in range(0, test.n, chunk_rows):
                rows = slice(start, start + chunk_rows)
                out[rows] = est.predict_logits([e[rows] for e in test.embeddings],
                                               [torch.from_numpy(np.array(z[rows])) for z in test.logits]).numpy()
            combined[key] = out
        else:
            combined[key] = predict_streaming(est, test.logits, chunk_rows=chunk_rows)
    comb = syn.accuracy_table(combined, test.labels)
    temps = fitted.combiners["temperature_mean"].temperatures_.tolist()
    cost = [1.0] * len(names)
    casc = syn.cascade(test.logits, test.labels, cost, (0.5, 0.7, 0.8, 0.9, 0.95, 0.99), temperatures=temps,
                       chunk_rows=chunk_rows, ks=(1,))
    subsets = syn.subset_mean_probs(test.logits, test.labels, cost, names, chunk_rows=chunk_rows, ks=(1,))
    syn.per_class_best(preds, test.labels, names, [str(c) for c in range(test.num_classes)])
    return {"accuracy": summary["accuracy"], "oracle_top1": summary["oracle_top1"], "combinations": comb,
            "cascade": [r["top1"] for r in casc], "subsets": [r["top1"] for r in subsets]}


def child_evaluate(mode: str, directory: str, chunk_rows: int) -> dict:
    """Score every analysis of evaluate_synergy on memory-mapped logits, `per_pass` or `one_pass`."""
    import torch

    from clipadapt.eval import synergy as syn
    from clipadapt.eval.synergy_combiners import fit_combiners

    torch.set_num_threads(1)
    files = sorted(Path(directory).glob("b*.npy"))
    arrays = [CountingArray(np.load(f, mmap_mode="r")) for f in files]
    labels = torch.from_numpy(np.load(Path(directory) / "labels.npy"))
    n, c = arrays[0].shape
    g = torch.Generator().manual_seed(1)
    embeddings = [torch.randn(n, 32, generator=g) for _ in arrays]
    m = 500  # seeded held-out set: logits with the files' signal model, fitted outside the measured region
    yh = torch.randint(0, c, (m,), generator=g)
    held = [torch.randn(m, c, generator=g) + (b + 1) * torch.nn.functional.one_hot(yh, c) for b in range(len(arrays))]
    names = [f.stem for f in files]
    fitted = fit_combiners(syn.ScoreSet(held, yh, [torch.randn(m, 32, generator=g) for _ in arrays]), names,
                           nlc_kwargs={"max_epochs": 3, "seed": 0})
    test = syn.ScoreSet(arrays, labels, embeddings)
    with peak_anon_memory() as memory:
        t0 = time.perf_counter()
        if mode == "per_pass":
            top1 = _per_pass(names, test, fitted, chunk_rows)
        else:
            r = syn.evaluate_synergy(names, test, fitted=fitted, chunk_rows=chunk_rows)
            top1 = {"accuracy": r.results["accuracy"], "oracle_top1": r.results["oracle_top1"],
                    "combinations": {k: v["top1"] for k, v in r.results["combinations"].items()},
                    "cascade": [x["top1"] for x in r.results["cascade"]],
                    "subsets": [x["top1"] for x in r.tables["subsets"]]}
        seconds = time.perf_counter() - t0
    passes = sum(a.rows_read for a in arrays) / (len(arrays) * n)
    return {"mode": mode, "peak_extra_mb": memory["extra_mb"], "seconds": seconds, "passes_over_logits": passes,
            "chunk_rows": chunk_rows, "top1": top1}


def child(mode: str, files: list[str], chunk_rows: int) -> dict:
    """Run one mode and return its peak anonymous memory above the baseline."""
    import torch

    from clipadapt.eval.synergy_combiners import predict_streaming, predictions_streaming
    from clipadapt.methods.ensembles import MeanProbs

    torch.set_num_threads(1)
    arrays = [np.load(f, mmap_mode="r") for f in files]
    n, c = arrays[0].shape
    combiner = MeanProbs()  # static: nothing to fit
    with peak_anon_memory() as memory:
        t0 = time.perf_counter()
        if mode == "stack":
            out = combiner.predict_logits([torch.from_numpy(np.array(a)) for a in arrays]).numpy()
        elif mode == "stream":
            out = predict_streaming(combiner, arrays, chunk_rows=chunk_rows)
        else:
            out = predictions_streaming(arrays, chunk_rows=chunk_rows).numpy()
        seconds = time.perf_counter() - t0
    return {"mode": mode, "peak_extra_mb": memory["extra_mb"], "seconds": seconds, "output_mb": out.nbytes / 2**20,
            "chunk_rows": chunk_rows if mode != "stack" else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", type=int, default=4)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--chunk-rows", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3, help="evaluate suite: alternating runs of each mode")
    parser.add_argument("--suite", choices=["combine", "evaluate"], default="combine",
                        help="combine: one combiner, stack vs streaming; evaluate: evaluate_synergy per-pass vs "
                             "one pass")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, chunk, *files = args.child
        result = (child_evaluate(mode, files[0], int(chunk)) if mode in ("per_pass", "one_pass")
                  else child(mode, files, int(chunk)))
        print(json.dumps(result))
        return
    if args.suite == "evaluate":
        return evaluate_suite(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_logits(Path(tmp), args.backbones, args.n, args.classes)
        runs = [("stack", args.chunk_rows[0])] + [(m, k) for m in ("stream", "stream_preds") for k in args.chunk_rows]
        for mode, chunk in runs:
            cmd = [sys.executable, __file__, "--child", mode, str(chunk), *files]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout.strip().splitlines()[-1])
            rows.append(res)
            print(f"{mode:>13} chunk={str(res['chunk_rows']):>5}: peak +{res['peak_extra_mb']:8.1f} MB  "
                  f"({res['seconds']:.2f} s, output {res['output_mb']:.1f} MB)")
    bxnxc_mb = args.backbones * args.n * args.classes * 4 / 2**20
    result = {"backbones": args.backbones, "n": args.n, "classes": args.classes, "stacked_logits_mb": bxnxc_mb,
              "measure": "peak RssAnon above baseline, sampled every 2 ms, fresh process per mode", "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"B×N×C float32 = {bxnxc_mb:.0f} MB; wrote {RESULTS}")


def write_logits(directory: Path, backbones: int, n: int, classes: int, labels: np.ndarray | None = None) -> list[str]:
    """B seeded (N, C) float32 .npy files, written in blocks; with `labels`, backbone b adds (b+1)·one-hot(label)."""
    rng = np.random.default_rng(0)
    files = []
    for b in range(backbones):
        path = directory / f"b{b}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, classes))
        for start in range(0, n, 4096):  # write without holding the array in memory
            block = rng.standard_normal((min(4096, n - start), classes), dtype=np.float32)
            if labels is not None:
                block[np.arange(block.shape[0]), labels[start:start + block.shape[0]]] += b + 1
            out[start:start + 4096] = block
        out.flush()
        del out
        files.append(str(path))
    return files


def evaluate_suite(args: argparse.Namespace) -> None:
    """evaluate_synergy's scoring, one pass per analysis (before) vs one pass in all (after), fresh process each."""
    rows = []
    chunk = args.chunk_rows[len(args.chunk_rows) // 2]
    with tempfile.TemporaryDirectory() as tmp:
        labels = np.random.default_rng(1).integers(0, args.classes, args.n)
        np.save(Path(tmp) / "labels.npy", labels)
        write_logits(Path(tmp), args.backbones, args.n, args.classes, labels)
        for mode in ("per_pass", "one_pass") * args.repeats:  # alternating: box noise hits both modes alike
            cmd = [sys.executable, __file__, "--child", mode, str(chunk), tmp]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout.strip().splitlines()[-1])
            rows.append(res)
            print(f"{mode:>9} chunk={chunk}: {res['seconds']:6.1f} s, peak +{res['peak_extra_mb']:7.1f} MB, "
                  f"{res['passes_over_logits']:.0f} passes over the logits")
    same = all(r["top1"] == rows[0]["top1"] for r in rows)
    median = {mode: {key: float(np.median([r[key] for r in rows if r["mode"] == mode]))
                     for key in ("seconds", "peak_extra_mb")}
              for mode in ("per_pass", "one_pass")}
    print(f"identical top-1 numbers: {same}; medians over {args.repeats} runs: {median}")
    result = {"backbones": args.backbones, "n": args.n, "classes": args.classes, "chunk_rows": chunk,
              "heldout_n": 500, "combiners": len(rows[0]["top1"]["combinations"]), "identical_top1": same,
              "repeats": args.repeats, "median": median,
              "measure": "wall time and peak RssAnon above baseline (sampled every 2 ms) of the scoring only "
                         "(combiners fitted before), fresh process per mode, 1 torch thread",
              "runs": rows}
    RESULTS_EVALUATE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_EVALUATE.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS_EVALUATE}")
    if not same:
        raise SystemExit("per-pass and one-pass top-1 numbers differ")


if __name__ == "__main__":
    main()
