"""The DN sweep grid: rows, seeds, sample-count capping; the retrieval sweep end to end."""

import json
import statistics

import pytest
import torch

from clipadapt.cli import main
from clipadapt.eval.dn_sweep import sweep_dn
from clipadapt.eval.retrieval import evaluate_retrieval
from clipadapt.features.retrieval_dir import RetrievalSet, save_retrieval_split
from clipadapt.methods.dn import DistributionNormalizer


def test_sweep_rows_aggregate_seeds_and_cap_sample_counts():
    calls = []

    def evaluate(lam, n, seed):  # a made-up metric whose mean/std over seeds is easy to write out
        calls.append((lam, n, seed))
        return {"m": 10 * lam + seed + (0 if n is None else n)}, 7 if n is None else min(n, 7)

    rows = sweep_dn(evaluate, pool_size=7, lambdas=[0.0, 0.5], samples=[1, 3, 7, 50], seeds=[0, 1, 2],
                    fixed_lambda=0.25, fixed_samples=3)
    assert [(r["sweep"], r["lambda"], r["n_samples"]) for r in rows] == [
        ("lambda", 0.0, 3), ("lambda", 0.5, 3), ("samples", 0.25, 1), ("samples", 0.25, 3), ("samples", 0.25, 7)]
    assert rows[1]["m"] == pytest.approx(statistics.mean([5 + s + 3 for s in range(3)]))
    assert rows[1]["m std"] == pytest.approx(statistics.stdev([5 + s + 3 for s in range(3)]))
    # 7 and 50 both mean "the whole pool of 7": one row, one draw (a whole-pool mean does not depend on the seed)
    assert rows[-1]["draws"] == 1 and rows[-1]["n_used"] == 7
    assert sum(1 for c in calls if c[0] == 0.25 and c[1] == 7) == 1


def test_retrieval_sweep_cli_against_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(30, 8, generator=g) + 1.0
    text = image + 0.9 * torch.randn(30, 8, generator=g) - 0.5
    d = tmp_path / "ret"
    save_retrieval_split(d, "test", RetrievalSet(image[10:], text[10:], torch.arange(20)))
    save_retrieval_split(d, "unlabeled", RetrievalSet(image[:10], text[:10]))
    out = tmp_path / "sweep"
    assert main(["dn-sweep", "--embeddings", str(d), "--lambdas", "0,0.5", "--samples", "2,100", "--seeds", "2",
                 "--dn-samples", "all", "--out-dir", str(out)]) == 0
    res = json.loads((out / "sweep.json").read_text())
    plain = evaluate_retrieval(image[10:], text[10:], torch.arange(20), ks=(1,))
    assert res["plain"] == {"i2t R@1": plain["i2t"]["R@1"], "t2i R@1": plain["t2i"]["R@1"]}
    half = next(r for r in res["rows"] if r["sweep"] == "lambda" and r["lambda"] == 0.5)
    dn = DistributionNormalizer(lam=0.5, n_samples=None, task="retrieval").fit(image[:10], text[:10])
    lib = evaluate_retrieval(image[10:], text[10:], torch.arange(20), normalizer=dn, ks=(1,))
    assert half["t2i R@1"] == pytest.approx(lib["t2i"]["R@1"]) and half["i2t R@1"] == pytest.approx(lib["i2t"]["R@1"])
    assert [r["n_used"] for r in res["rows"] if r["sweep"] == "samples"] == [2, 10]
    assert (out / "sweep.png").stat().st_size > 0
