"""The IMO metric against a brute-force double loop, its limits, sampling, and the `clipadapt imo` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from clipadapt.adapters import imo_overlap
from clipadapt.errors import ConfigError


def brute_force_overlap(x: torch.Tensor, y: torch.Tensor, bins: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Literal docs/methods.md §5: every pair i<j, cosine similarity, numpy histograms as densities, sum min * width."""
    x = x.double().numpy()
    same, diff = [], []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            s = float(np.dot(x[i], x[j]) / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
            (same if y[i] == y[j] else diff).append(s)
    edges = np.linspace(-1, 1, bins + 1)
    p, _ = np.histogram(same, bins=edges, density=True)
    u, _ = np.histogram(diff, bins=edges, density=True)
    return float(np.sum(np.minimum(p, u) * np.diff(edges))), p, u


def test_overlap_matches_brute_force_double_loop():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(60, 8, generator=g, dtype=torch.float64)
         + torch.randn(3, 8, generator=g, dtype=torch.float64).repeat(20, 1))
    y = torch.arange(3).repeat(20)
    expected, p, u = brute_force_overlap(x, y, bins=40)
    r = imo_overlap(x, y, bins=40, chunk_size=7)  # chunks that do not divide N
    assert r.overlap == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(r.same_hist.numpy(), p, atol=1e-12)
    np.testing.assert_allclose(r.diff_hist.numpy(), u, atol=1e-12)
    assert (r.n_same, r.n_diff) == (3 * 20 * 19 // 2, 60 * 59 // 2 - 3 * 20 * 19 // 2)
    assert not r.sampled and r.total_pairs == 60 * 59 // 2


def test_same_and_diff_means_are_mean_similarities():
    x = torch.randn(20, 5, dtype=torch.float64)
    y = torch.tensor([0, 1] * 10)
    xn = x / x.norm(dim=1, keepdim=True)
    same = [float(xn[i] @ xn[j]) for i in range(20) for j in range(i + 1, 20) if y[i] == y[j]]
    diff = [float(xn[i] @ xn[j]) for i in range(20) for j in range(i + 1, 20) if y[i] != y[j]]
    r = imo_overlap(x, y)
    assert r.same_mean == pytest.approx(sum(same) / len(same), abs=1e-12)
    assert r.diff_mean == pytest.approx(sum(diff) / len(diff), abs=1e-12)


def test_identical_distributions_overlap_one():
    # classes {0,1} alternate over identical vectors pairs: every similarity is 1 for every pair -> one bin
    x = torch.ones(10, 4)
    y = torch.tensor([0, 1] * 5)
    assert imo_overlap(x, y).overlap == pytest.approx(1.0)


def test_disjoint_distributions_overlap_zero():
    # same class: identical vectors (sim 1); different classes: orthogonal (sim 0)
    x = torch.eye(3).repeat_interleave(4, dim=0)
    y = torch.arange(3).repeat_interleave(4)
    r = imo_overlap(x, y, bins=10)
    assert r.overlap == 0.0
    assert r.same_mean == pytest.approx(1.0) and r.diff_mean == pytest.approx(0.0)


def test_densities_integrate_to_one():
    r = imo_overlap(torch.randn(50, 6), torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(1)))
    width = r.bin_edges[1:] - r.bin_edges[:-1]
    assert float((r.same_hist * width).sum()) == pytest.approx(1.0)
    assert float((r.diff_hist * width).sum()) == pytest.approx(1.0)
    assert r.bin_edges[0] == -1.0 and r.bin_edges[-1] == 1.0


def test_views_are_pooled_before_measuring():
    x = torch.randn(30, 3, 8)
    y = torch.arange(3).repeat(10)
    assert imo_overlap(x, y).overlap == imo_overlap(x.mean(dim=1), y).overlap


@pytest.mark.parametrize("sample", ["items", "pairs"])
def test_sampling_is_seeded_flagged_and_close_to_exact(sample):
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 16, generator=g)
    y = torch.arange(4).repeat(100)
    x = protos[y] + 0.8 * torch.randn(400, 16, generator=g)
    exact = imo_overlap(x, y, bins=20)
    a = imo_overlap(x, y, bins=20, max_pairs=40_000, seed=3, sample=sample)
    b = imo_overlap(x, y, bins=20, max_pairs=40_000, seed=3, sample=sample)
    c = imo_overlap(x, y, bins=20, max_pairs=40_000, seed=4, sample=sample)
    # items: all pairs among K items, K the largest with K(K-1)/2 <= 40,000 (K = 283: 39,903 pairs)
    assert a.n_same + a.n_diff == (40_000 if sample == "pairs" else 283 * 282 // 2)
    assert a.sampled and a.seed == 3 and a.sample == sample
    assert a.overlap == b.overlap and torch.equal(a.same_hist, b.same_hist)
    assert a.overlap != c.overlap
    assert abs(a.overlap - exact.overlap) < 0.03
    assert not imo_overlap(x, y, max_pairs=exact.total_pairs, sample=sample).sampled  # enough budget: exact


def test_item_sampling_is_the_exact_metric_of_the_drawn_subset():
    x = torch.randn(50, 6, dtype=torch.float64)
    y = torch.arange(5).repeat(10)
    r = imo_overlap(x, y, bins=15, max_pairs=300, seed=7)  # K = 25 (300 pairs)
    keep = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:25]
    expected, _, _ = brute_force_overlap(x[keep], y[keep], bins=15)
    assert r.overlap == pytest.approx(expected, abs=1e-12) and r.n_same + r.n_diff == 300


def test_single_class_is_a_clear_error():
    with pytest.raises(ConfigError, match="different-class"):
        imo_overlap(torch.randn(5, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ConfigError, match="same-class"):
        imo_overlap(torch.randn(3, 3), torch.arange(3))
    with pytest.raises(ConfigError, match="labels"):
        imo_overlap(torch.randn(5, 3), torch.zeros(4, dtype=torch.long))


def test_cli_imo_on_feature_dirs(tmp_path):
    from clipadapt.cli import main
    from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir

    g = torch.Generator().manual_seed(0)
    protos = torch.randn(3, 8, generator=g)
    y = torch.arange(3).repeat(10)
    noisy = protos[y] + 2.0 * torch.randn(30, 8, generator=g)
    tight = protos[y] + 0.1 * torch.randn(30, 8, generator=g)
    for name, image in (("orig", noisy), ("adapted", tight)):
        save_feature_dir(FeatureSet(classnames=["a", "b", "c"], text=protos,
                                    splits={"test": FeatureSplit(image, y)}, meta={"model": "synthetic"}),
                         tmp_path / name)
    out = tmp_path / "imo"
    rc = main(["imo", "--features", str(tmp_path / "orig"), "--adapted-features", str(tmp_path / "adapted"),
               "--out", str(out), "--bins", "20"])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    # results.json rounds floats below 1 to 5 significant digits
    assert report["results"]["original"]["overlap"] == pytest.approx(imo_overlap(noisy, y, bins=20).overlap, abs=1e-5)
    assert report["results"]["adapted"]["overlap"] == pytest.approx(imo_overlap(tight, y, bins=20).overlap, abs=1e-5)
    assert report["overlap_change"] < 0
    assert (out / "imo_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "overlap" in (out / "imo.md").read_text()


def test_cli_imo_reports_sampling(tmp_path, capsys):
    from clipadapt.cli import main
    from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir

    y = torch.arange(2).repeat(20)
    save_feature_dir(FeatureSet(classnames=["a", "b"], text=torch.randn(2, 4),
                                splits={"test": FeatureSplit(torch.randn(40, 4), y)}), tmp_path / "f")
    assert main(["imo", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "o"), "--max-pairs", "100"]) == 0
    assert "91 of 780 pairs sampled (among a random subset of items, seed 0)" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "results.json").read_text())["results"]["original"]["sampled"] is True
    assert math.isfinite(json.loads((tmp_path / "o" / "results.json").read_text())["results"]["original"]["overlap"])


def test_cli_imo_max_pairs_zero_is_always_exact(tmp_path):
    """--max-pairs 0 means what its help says: every pair, never sampled (the option used to refuse 0)."""
    from clipadapt.cli import main
    from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir

    x, y = torch.randn(40, 4), torch.arange(2).repeat(20)
    save_feature_dir(FeatureSet(classnames=["a", "b"], text=torch.randn(2, 4), splits={"test": FeatureSplit(x, y)}),
                     tmp_path / "f")
    assert main(["imo", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "o"), "--max-pairs", "0"]) == 0
    report = json.loads((tmp_path / "o" / "results.json").read_text())
    assert report["results"]["original"]["sampled"] is False
    assert report["results"]["original"]["overlap"] == pytest.approx(imo_overlap(x, y, bins=100).overlap, abs=1e-5)


def test_accumulator_fed_in_any_chunks_gives_imo_overlap_histograms():
    from clipadapt.adapters import PairHistogramAccumulator, imo_bin_edges, overlap_from_counts

    x = torch.randn(40, 6, dtype=torch.float64)
    y = torch.arange(4).repeat(10)
    xn = x / x.norm(dim=1, keepdim=True)
    i, j = torch.triu_indices(40, 40, offset=1)
    sims, same = (xn[i] * xn[j]).sum(dim=1), y[i] == y[j]
    acc = PairHistogramAccumulator(imo_bin_edges(25))
    for part in torch.tensor_split(torch.randperm(len(sims), generator=torch.Generator().manual_seed(0)), 3):
        acc.add(sims[part], same[part])
    same_counts, diff_counts, _, _ = acc.result()
    r = imo_overlap(x, y, bins=25)
    width = 2 / 25
    torch.testing.assert_close(same_counts.double() / (r.n_same * width), r.same_hist, rtol=0, atol=1e-12)
    torch.testing.assert_close(diff_counts.double() / (r.n_diff * width), r.diff_hist, rtol=0, atol=1e-12)
    assert overlap_from_counts(same_counts, diff_counts) == pytest.approx(r.overlap, abs=1e-12)
