"""The DN sweep grid: rows, seeds, sample-count capping; the retrieval sweep end to end."""

import json
import statistics

import pytest
import torch

from clipadapt.cli import main
from clipadapt.eval.dn_sweep import retrieval_evaluator, sweep_dn
from clipadapt.eval.retrieval import evaluate_retrieval
from clipadapt.features.retrieval_dir import RetrievalSet, save_retrieval_split
from clipadapt.methods.dn import DistributionNormalizer


def test_sweep_rows_aggregate_seeds_and_cap_sample_counts():
    calls = []

    def evaluate(lam, n, seed):  # a made-up metric whose mean/std over seeds is easy to write out
        calls.append((lam, n, seed))
        return {"m": 10 * lam + seed + (0 if n is None else n)}, {"n_used": 7 if n is None else min(n, 7)}

    rows = sweep_dn(evaluate, pool_size=7, lambdas=[0.0, 0.5], samples=[1, 3, 7, 50], seeds=[0, 1, 2],
                    fixed_lambda=0.25, fixed_samples=3)
    assert [(r["sweep"], r["lambda"], r["n_samples"]) for r in rows] == [
        ("lambda", 0.0, 3), ("lambda", 0.5, 3), ("samples", 0.25, 1), ("samples", 0.25, 3), ("samples", 0.25, "all")]
    assert rows[1]["m"] == pytest.approx(statistics.mean([5 + s + 3 for s in range(3)]))
    assert rows[1]["m std"] == pytest.approx(statistics.stdev([5 + s + 3 for s in range(3)]))
    # 7 and 50 both mean "the whole pool of 7": one row, asked for all (None), one draw
    assert rows[-1]["draws"] == 1 and rows[-1]["n_used"] == 7
    assert [c for c in calls if c[0] == 0.25 and c[1] in (7, 50, None)] == [(0.25, None, 0)]


def _literal_dn_r1(image, text, t2i, mu_img, mu_txt, lam):
    """i2t / t2i R@1 (percent) of S = (norm(f) − λμ_img)·(norm(t) − λμ_txt), by loops over queries."""
    f = [x / x.norm() - lam * mu_img for x in image]
    t = [y / y.norm() - lam * mu_txt for y in text]
    i2t = sum(int(t2i[max(range(len(t)), key=lambda j: float(f[i] @ t[j]))] == i) for i in range(len(f)))
    t2i_hits = sum(int(max(range(len(f)), key=lambda i: float(f[i] @ t[j])) == t2i[j]) for j in range(len(t)))
    return 100.0 * i2t / len(f), 100.0 * t2i_hits / len(t)


def test_whole_pool_row_uses_every_caption_when_captions_outnumber_images():
    """A pool of 6 images with 3 captions each: the "all" row's means are over all 6 images and all 18 captions,
    the same for every seed, and its std 0 is true (was: 6 of the 18 captions drawn at random, reported std 0)."""
    g = torch.Generator().manual_seed(3)
    image = torch.randn(14, 8, generator=g) + 0.7
    text = image.repeat_interleave(3, 0) + 1.2 * torch.randn(42, 8, generator=g) - 0.4
    t2i = torch.arange(14).repeat_interleave(3)
    test_image, test_text, test_t2i = image[6:], text[18:], t2i[18:] - 6
    pool_image, pool_text = image[:6], text[:18]
    evaluate = retrieval_evaluator(test_image, test_text, test_t2i, pool_image, pool_text)
    rows = sweep_dn(evaluate, pool_size=6, lambdas=[1.0], samples=[2, 6, 40], seeds=[0, 1, 2],
                    fixed_lambda=1.0, fixed_samples=6)
    mu_img = torch.stack([x / x.norm() for x in pool_image]).mean(0)
    mu_txt = torch.stack([y / y.norm() for y in pool_text]).mean(0)
    i2t, t2i_r1 = _literal_dn_r1(test_image, test_text, test_t2i.tolist(), mu_img, mu_txt, 1.0)
    whole = [r for r in rows if r["n_samples"] == "all"]
    assert len(whole) == 2  # the λ row (fixed_samples 6 = pool) and the sample-sweep row (6 and 40)
    for r in whole:
        assert (r["n_used"], r["n_text_used"], r["draws"]) == (6, 18, 1)
        assert r["i2t R@1"] == pytest.approx(i2t) and r["t2i R@1"] == pytest.approx(t2i_r1)
    drawn = next(r for r in rows if r["n_samples"] == 2)
    assert (drawn["n_used"], drawn["n_text_used"], drawn["draws"]) == (2, 2, 3)


def test_retrieval_sweep_cli_against_library(tmp_path):
    g = torch.Generator().manual_seed(0)
    image = torch.randn(30, 8, generator=g) + 1.0
    text = image + 0.9 * torch.randn(30, 8, generator=g) - 0.5
    d = tmp_path / "ret"
    save_retrieval_split(d, "test", RetrievalSet(image[10:], text[10:], torch.arange(20)))
    save_retrieval_split(d, "unlabeled", RetrievalSet(image[:10], text[:10]))
    out = tmp_path / "sweep"
    assert main(["dn-sweep", "--embeddings", str(d), "--lambdas", "0,0.5", "--samples", "2,100", "--seeds", "2",
                 "--dn-samples", "all", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    plain = evaluate_retrieval(image[10:], text[10:], torch.arange(20), ks=(1,))
    # JSON: 4 decimals
    assert res["plain"] == pytest.approx({"i2t R@1": plain["i2t"]["R@1"], "t2i R@1": plain["t2i"]["R@1"]}, abs=1e-4)
    half = next(r for r in res["rows"] if r["sweep"] == "lambda" and r["lambda"] == 0.5)
    dn = DistributionNormalizer(lam=0.5, n_samples=None, task="retrieval").fit(image[:10], text[:10])
    lib = evaluate_retrieval(image[10:], text[10:], torch.arange(20), normalizer=dn, ks=(1,))
    assert half["t2i R@1"] == pytest.approx(lib["t2i"]["R@1"]) and half["i2t R@1"] == pytest.approx(lib["i2t"]["R@1"])
    assert [r["n_used"] for r in res["rows"] if r["sweep"] == "samples"] == [2, 10]
    assert (out / "sweep.png").stat().st_size > 0
