"""Backbone synergy: top-5 next to top-1 everywhere (C >= 5), and one read of the logits per evaluation."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from clipadapt.cli import main
from clipadapt.eval.synergy import ScoreSet, cascade, evaluate_synergy, subset_mean_probs
from clipadapt.eval.synergy_combiners import fit_combiners, predict_streaming
from clipadapt.methods.logit_controller import NeuralLogitController

# two backbones, six classes, labels 0..3; the rank of the label in each row is written next to it
LABELS = torch.tensor([0, 1, 2, 3])
A = torch.tensor([
    [6.0, 5, 4, 3, 2, 1],  # label 0 rank 1
    [6.0, 4, 5, 3, 2, 1],  # label 1 rank 3
    [6.0, 5, 1, 4, 3, 2],  # label 2 rank 6
    [6.0, 5, 4, 2, 3, 1],  # label 3 rank 5
])  # top-1 1/4, top-5 3/4
B = 1.1 * torch.tensor([
    [1.0, 6, 5, 4, 3, 2],  # label 0 rank 6
    [5.0, 6, 4, 3, 2, 1],  # label 1 rank 1
    [6.0, 5, 2, 4, 3, 1],  # label 2 rank 5
    [6.0, 5, 4, 1, 3, 2],  # label 3 rank 6
])  # top-1 1/4, top-5 2/4; oracle top-1: samples 0, 1; oracle top-5: A {0, 1, 3} ∪ B {1, 2} = all


def _rank(row, label):
    """1 + number of classes scored strictly higher than the label (the label's score must not be tied)."""
    assert sum(v == row[label] for v in row) == 1, "tie at the label: top-k would be ambiguous"
    return 1 + sum(v > row[label] for v in row)


def _literal_topk(rows, labels, k):
    return 100 * sum(_rank(list(r), int(y)) <= k for r, y in zip(rows, labels)) / len(labels)


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def test_top5_of_backbones_oracle_and_combiners_by_hand():
    report = evaluate_synergy(["A", "B"], ScoreSet([A, B], LABELS), chunk_rows=3, thresholds=[0.0, 1.01])
    r = report.results
    assert r["topk"] == [1, 5]
    assert r["accuracy"] == {"A": 25.0, "B": 25.0}
    assert r["accuracy_top5"] == {"A": 75.0, "B": 50.0}
    assert r["oracle_top1"] == 50.0 and r["oracle_top5"] == 100.0
    assert r["best_single"] == {"backbone": "A", "top1": 25.0, "top5": 75.0}
    # combiners, written out row by row
    a, b = A.tolist(), B.tolist()
    mean_logits = [[(x + y) / 2 for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
    mean_probs = [[(x + y) / 2 for x, y in zip(_softmax(ra), _softmax(rb))] for ra, rb in zip(a, b)]
    for name, rows in (("mean_logits", mean_logits), ("mean_probs", mean_probs)):
        assert r["combinations"][name]["top1"] == pytest.approx(_literal_topk(rows, LABELS, 1)), name
        assert r["combinations"][name]["top5"] == pytest.approx(_literal_topk(rows, LABELS, 5)), name
    # max confidence: per row the backbone with the higher top probability
    chosen = [ra if max(_softmax(ra)) >= max(_softmax(rb)) else rb for ra, rb in zip(a, b)]
    assert r["combinations"]["max_confidence"]["top5"] == pytest.approx(_literal_topk(chosen, LABELS, 5))
    # tables and the single subset {A, B} (mean of probabilities)
    assert [(x["backbone"], x["top1"], x["top5"]) for x in report.tables["per_backbone"]] == [
        ("A", 25.0, 75.0), ("B", 25.0, 50.0)]
    assert report.tables["subsets"][0]["top5"] == pytest.approx(_literal_topk(mean_probs, LABELS, 5))
    assert all("top5" in row for row in report.tables["combinations"])
    # cascade (A first: equal costs keep the order): threshold 0 stops after A; 1.01 runs both = mean of probs
    stop_first, run_all = r["cascade"]
    assert stop_first["top1"] == 25.0 and stop_first["top5"] == 75.0
    assert run_all["top5"] == pytest.approx(_literal_topk(mean_probs, LABELS, 5))


def test_fewer_than_five_classes_omit_top5_everywhere():
    g = torch.Generator().manual_seed(0)
    logits, y = [torch.randn(20, 4, generator=g) for _ in range(3)], torch.randint(0, 4, (20,), generator=g)
    report = evaluate_synergy(["a", "b", "c"], ScoreSet(logits, y), chunk_rows=7)
    r = report.results
    assert r["topk"] == [1] and "accuracy_top5" not in r and "oracle_top5" not in r
    assert "top5" not in r["best_single"] and all("top5" not in v for v in r["combinations"].values())
    for name in ("per_backbone", "combinations", "subsets", "cascade"):
        assert report.tables[name] and all("top5" not in row for row in report.tables[name]), name
    assert all("top5" not in row for row in cascade(logits, y, [1, 1, 1],
                                                    [0.5]) + subset_mean_probs(logits, y, [1, 1, 1], "abc"))


def _random_problem(seed, n=83, m=60, c=7, d=5, backbones=3):
    g = torch.Generator().manual_seed(seed)
    y, yh = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (m,), generator=g)

    def make(labels, s):
        return s * torch.randn(len(labels), c, generator=g) + 2 * torch.nn.functional.one_hot(labels, c)

    scales = [1.0, 2.0, 4.0][:backbones]
    test = ScoreSet([make(y, s) for s in scales], y, [torch.randn(n, d, generator=g) for _ in scales])
    held = ScoreSet([make(yh, s) for s in scales], yh, [torch.randn(m, d, generator=g) for _ in scales])
    return test, held


NLC = dict(max_epochs=3, seed=0, batch_size=16)


def test_single_pass_equals_one_pass_per_combiner():
    """Each combiner applied on its own (its own pass over the logits, as evaluate_synergy did before), then
    counted by a literal loop, gives exactly the numbers of the single shared pass."""
    test, held = _random_problem(0)
    report = evaluate_synergy(["a", "b", "c"], test, heldout=held, chunk_rows=20, nlc_kwargs=NLC)
    fitted = fit_combiners(held, ["a", "b", "c"], nlc_kwargs=NLC)
    assert set(report.results["combinations"]) == set(fitted.combiners) and "nlc" in fitted.combiners
    n = test.n
    for key, est in fitted.combiners.items():
        if isinstance(est, NeuralLogitController):
            combined = torch.cat([est.predict_logits([e[i:i + 20] for e in test.embeddings],
                                                     [z[i:i + 20] for z in test.logits])
                                  for i in range(0, n, 20)]).tolist()
        else:
            combined = predict_streaming(est, test.logits, chunk_rows=20).tolist()
        got = report.results["combinations"][key]
        for k in (1, 5):
            assert got[f"top{k}"] == _literal_topk(combined, test.labels, k), (key, k)
    prefitted = evaluate_synergy(["a", "b", "c"], test, fitted=fitted, chunk_rows=20)  # fit once, evaluate later

    def scores(r):
        return {k: (v["top1"], v["top5"]) for k, v in r.results["combinations"].items()}

    assert scores(prefitted) == scores(report)
    for b, name in enumerate("abc"):
        z = test.logits[b].tolist()
        assert report.results["accuracy"][name] == _literal_topk(z, test.labels, 1)
        assert report.results["accuracy_top5"][name] == _literal_topk(z, test.labels, 5)


class _CountingArray:
    """A (N, C) array that records every row slice read from it (stands in for a memory-mapped file)."""

    def __init__(self, array):
        self.array, self.reads = array, []

    @property
    def shape(self):
        return self.array.shape

    def __getitem__(self, rows):
        self.reads.append((rows.start, rows.stop))
        return self.array[rows]


def test_evaluation_reads_every_row_of_the_logits_once():
    test, held = _random_problem(1)
    arrays = [_CountingArray(z.numpy()) for z in test.logits]
    report = evaluate_synergy(["a", "b", "c"], ScoreSet(arrays, test.labels, test.embeddings), heldout=held,
                              chunk_rows=25, nlc_kwargs=NLC)
    assert len(report.results["combinations"]) == 8  # 5 static + temperature_mean + stacking + nlc
    for arr in arrays:
        assert arr.reads == [(0, 25), (25, 50), (50, 75), (75, 83)]
    in_memory = evaluate_synergy(["a", "b", "c"], test, heldout=held, chunk_rows=25, nlc_kwargs=NLC)
    assert report.results["combinations"] == in_memory.results["combinations"]
    assert report.results["cascade"] == in_memory.results["cascade"]


def test_cli_reports_top5_in_json_tables_and_printed_table(tmp_path, capsys):
    test, held = _random_problem(2, c=6, backbones=2)
    paths = {}
    for tag, split in (("t", test), ("h", held)):
        paths[tag] = []
        for b, z in enumerate(split.logits):
            np.save(tmp_path / f"{tag}{b}.npy", z.numpy())
            paths[tag].append(str(tmp_path / f"{tag}{b}.npy"))
        np.save(tmp_path / f"{tag}y.npy", split.labels.numpy())
    out = tmp_path / "out"
    assert main(["backbones", "--logits", ",".join(paths["t"]), "--labels", str(tmp_path / "ty.npy"),
                 "--heldout-logits", ",".join(paths["h"]), "--heldout-labels", str(tmp_path / "hy.npy"),
                 "--names", "P,Q", "--cost", "none", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads((out / "results.json").read_text())
    literal = {name: _literal_topk(z.tolist(), test.labels, 5) for name, z in zip("PQ", test.logits)}
    assert r["accuracy_top5"] == pytest.approx(literal, abs=1e-4)  # results.json: 4 decimals
    assert "| backbone / combiner | top1 | top5 |" in printed
    assert f"| P | {r['accuracy']['P']:.2f} | {literal['P']:.2f} |" in printed
    assert (f"| stacking | {r['combinations']['stacking']['top1']:.2f} | "
            f"{r['combinations']['stacking']['top5']:.2f} |" in printed)
    for table in ("per_backbone", "combinations", "subsets", "cascade"):
        with open(out / f"{table}.csv") as f:
            assert "top5" in next(csv.reader(f)), table
    assert "| backbone / combiner | top1 | top5 |" in (out / "summary.md").read_text()
