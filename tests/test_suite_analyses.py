"""The analyses the papers report beyond single tables: IMO overlap-vs-gain correlation, feature variance, DN TTA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats

from clipadapt.adapters.variance import feature_variance
from clipadapt.cli import main
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.report.imo_analysis import correlation, overlap_gain_rows

C, D = 4, 12


def test_feature_variance_is_the_per_dimension_sample_variance_of_normalised_features():
    x = torch.randn(30, D) * torch.linspace(0.5, 3, D)
    out = feature_variance(x)
    xs = x.double().numpy()
    normed = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    literal = [sum((normed[i, d] - normed[:, d].mean()) ** 2 for i in range(30)) / 29 for d in range(D)]
    assert out["normalised"]["per_dim"] == pytest.approx(literal)
    assert out["normalised"]["mean"] == pytest.approx(sum(literal) / D)
    assert out["raw"]["total"] == pytest.approx(float(np.var(xs, axis=0, ddof=1).sum()))


def test_correlation_matches_the_literal_formulas():
    x, y = [0.1, 0.3, 0.2, 0.5, 0.4], [1.0, 2.5, 2.0, 3.0, 4.5]
    out = correlation(x, y)
    mx, my = sum(x) / 5, sum(y) / 5
    r = sum((a - mx) * (b - my) for a, b in zip(x, y)) / (
        sum((a - mx) ** 2 for a in x) ** 0.5 * sum((b - my) ** 2 for b in y) ** 0.5)
    t = r * ((5 - 2) / (1 - r * r)) ** 0.5
    assert out["pearson_r"] == pytest.approx(r)
    assert out["pearson_p"] == pytest.approx(2 * stats.t.sf(abs(t), 3))
    rank = lambda v: [sorted(v).index(a) + 1 for a in v]  # noqa: E731 (no ties here)
    rx, ry = rank(x), rank(y)
    rho = 1 - 6 * sum((a - b) ** 2 for a, b in zip(rx, ry)) / (5 * (25 - 1))
    assert out["spearman_rho"] == pytest.approx(rho)
    assert correlation([1.0, 2.0], [3.0, 4.0])["pearson_r"] is None  # two datasets: no correlation reported


def test_overlap_gain_rows_pairs_overlaps_with_tip_plus_plus_gains():
    rows = []
    for d, (orig, adap, tip, tpp) in {"a": (0.5, 0.3, 60.0, 65.0), "b": (0.4, 0.35, 50.0, 51.0)}.items():
        rows += [{"backbone": "m", "dataset": d, "method": "original", "metric": "overlap", "shots": None, "mean": orig},
                 {"backbone": "m", "dataset": d, "method": "adapted", "metric": "overlap", "shots": None, "mean": adap}]
        for k, bonus in ((1, 0.0), (2, 2.0)):
            rows += [{"backbone": "m", "dataset": d, "method": "tip", "metric": "top1", "shots": k, "mean": tip + bonus},
                     {"backbone": "m", "dataset": d, "method": "tip++", "metric": "top1", "shots": k, "mean": tpp + 2 * bonus}]
    out = {r["dataset"]: r for r in overlap_gain_rows(rows)}
    assert out["a"]["overlap_reduction"] == pytest.approx(0.2)
    assert (out["a"]["gain_1shot"], out["a"]["gain_2shot"], out["a"]["gain_mean"]) == pytest.approx((5.0, 7.0, 6.0))


def _featureset(seed: int, views: int | None = None, shift: float = 0.0) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=g)

    def split(n, v=None):
        y = torch.arange(C).repeat_interleave(n)
        shape = (y.numel(), v, D) if v else (y.numel(), D)
        base = protos[y].unsqueeze(1) if v else protos[y]
        return FeatureSplit(base * (1 + shift) + 1.3 * torch.randn(*shape, generator=g), y)

    return FeatureSet([f"c{i}" for i in range(C)], protos,
                      {"train": split(5, 2), "val": split(4), "test": split(6, views), "unlabeled": split(5, views)},
                      {"model": "synthetic", "dataset": f"d{seed}"})


def test_suite_writes_the_imo_correlation_from_imo_and_fewshot_cells(tmp_path):
    datasets = []
    for i in range(3):
        save_feature_dir(_featureset(i), tmp_path / f"d{i}")
        save_feature_dir(_featureset(10 + i, shift=0.5 * i), tmp_path / f"d{i}-adapted")
        datasets.append(f'{{ name = "d{i}", features = "{tmp_path / f"d{i}"}", adapted_features = "{tmp_path / f"d{i}-adapted"}" }}')
    grid = '["tip.alpha=50,100", "tip.beta=1,5"]'  # the cache dominates: adapted keys change accuracy
    (tmp_path / "s.toml").write_text(f"""
[[task]]
task = "fewshot"
datasets = [{", ".join(datasets)}]
methods = ["tip", "tip++"]
shots = [1, 2]
seeds = [1]
options = {{ grid = {grid} }}
[[task]]
task = "imo"
datasets = [{", ".join(datasets)}]
""")
    out = tmp_path / "run"
    assert main(["suite", "run", str(tmp_path / "s.toml"), "--out", str(out)]) == 0
    report = json.loads((out / "imo_correlation.json").read_text())["tip->tip++"]
    summary = json.loads((out / "summary.json").read_text())["rows"]
    for row in report["per_dataset"]:
        by = {(r["method"], r["metric"], r["shots"]): r["mean"] for r in summary if r["dataset"] == row["dataset"]}
        # both files are rounded by write_json (4 decimals / 5 significant digits)
        assert row["overlap_reduction"] == pytest.approx(by[("original", "overlap", None)] - by[("adapted", "overlap", None)], abs=1e-4)
        assert row["gain_1shot"] == pytest.approx(by[("tip++", "top1", 1)] - by[("tip", "top1", 1)], abs=1e-3)
        assert ("adapted", "variance", None) in by
    x = [r["overlap_reduction"] for r in report["per_dataset"]]
    y = [r["gain_mean"] for r in report["per_dataset"]]
    assert report["correlation"]["gain_mean"]["spearman_rho"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-4)
    assert (out / "imo_correlation_tip.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "plots" / "fewshot_mean.png").read_bytes()[:4] == b"\x89PNG"  # accuracy vs shots, mean over datasets


def test_dn_with_views_reports_tta_and_the_first_view_from_one_run(tmp_path):
    fs = _featureset(0, views=3)
    save_feature_dir(fs, tmp_path / "tta")
    first = FeatureSet(fs.classnames, fs.text, {name: FeatureSplit(s.image[:, 0] if s.image.ndim == 3 else s.image, s.label)
                                                 for name, s in fs.splits.items()}, fs.meta)
    save_feature_dir(first, tmp_path / "one")
    common = ["--method", "dn", "--dn-samples", "8", "--dn-seed", "3"]
    assert main(["eval", "--features", str(tmp_path / "tta"), *common, "--out", str(tmp_path / "tta-run")]) == 0
    assert main(["eval", "--features", str(tmp_path / "one"), *common, "--out", str(tmp_path / "one-run")]) == 0
    tta, one = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("tta-run", "one-run"))
    assert tta["dn"]["views"] == 3
    assert tta["tta"]["first view"]["top1"] == one["top1"]
    assert tta["tta"]["first view"]["without_dn"] == one["without_dn"]


def test_report_reads_retrieval_captions_and_backbones_cells_and_draws_oracle_bars(tmp_path):
    """Cell files shaped like those commands' results.json: the summary copies their numbers, nothing else."""
    from clipadapt.report.suite_report import write_suite_report

    outputs = {
        ("retrieval", "coco"): {"plain": {"i2t": {"R@1": 50.0}, "t2i": {"R@1": 30.0}},
                                "dn": {"mean": {"i2t": {"R@1": 52.0}, "t2i": {"R@1": 33.0}}}},
        ("captions", "f8k"): {"correlations": {"CLIP-S": {"tau_b": 0.4, "tau_c": 0.5}, "DN-CLIP-S": {"tau_b": 0.45, "tau_c": 0.55}}},
        ("backbones", "pets"): {"accuracy": {"RN50": 80.0, "ViT-B-32": 85.0}, "best_single": {"backbone": "ViT-B-32", "top1": 85.0},
                                "oracle_top1": 93.0, "synergy": 8.0, "combinations": {"nlc": {"top1": 88.0}}},
        ("backbones", "dtd"): {"accuracy": {"RN50": 40.0, "ViT-B-32": 45.0}, "best_single": {"backbone": "ViT-B-32", "top1": 45.0},
                               "oracle_top1": 60.0, "synergy": 15.0, "combinations": {"nlc": {"top1": 50.0}}},
    }
    cells = []
    for i, ((task, dataset), output) in enumerate(outputs.items()):
        cell = {"task": task, "label": task, "dataset": dataset, "backbone": "RN50,ViT-B-32" if task == "backbones" else "m",
                "method": "dn" if task == "retrieval" else None, "seed": None, "shots": None, "source": {}, "options": {}}
        cells.append({"key": f"k{i}", **cell})
        (tmp_path / "cells").mkdir(exist_ok=True)
        (tmp_path / "cells" / f"k{i}.json").write_text(json.dumps({"status": "done", "cell": cell, "result": {"output": output}}))
    expected = [{"task": "backbones", "dataset": "mean", "method": "oracle", "metric": "synergy", "value": 20.0}]
    (tmp_path / "suite.json").write_text(json.dumps({"config": {"name": "t", "expected": expected}, "cells": cells}))
    write_suite_report(tmp_path)
    rows = {(r["task"], r["dataset"], r["method"], r["metric"]): r["mean"] for r in json.loads((tmp_path / "summary.json").read_text())["rows"]}
    assert rows[("retrieval", "coco", "clip", "t2i R@1")] == 30.0 and rows[("retrieval", "coco", "dn", "i2t R@1")] == 52.0
    assert rows[("captions", "f8k", "DN-CLIP-S", "tau_c")] == 0.55
    assert rows[("backbones", "mean", "oracle", "synergy")] == pytest.approx(11.5, abs=1e-3)
    assert rows[("backbones", "pets", "nlc", "top1")] == 88.0 and rows[("backbones", "dtd", "best single", "top1")] == 45.0
    (exp,) = json.loads((tmp_path / "summary.json").read_text())["expected"]
    assert exp["delta"] == pytest.approx(11.5 - 20.0)
    assert (tmp_path / "plots" / "backbones_oracle_nlc.png").read_bytes()[:4] == b"\x89PNG"
