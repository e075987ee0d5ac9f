"""Zero-row splits where rows are needed are named errors (issue 12, item 5): an empty val split 'tuned' on 0 rows
and reported the first grid point as chosen; an empty test split exited 0 with `top1 null`."""

from __future__ import annotations

import json

import pytest
import torch
from tests.conftest import make_clustered_features

from clipadapt.cli import main
from clipadapt.errors import ClipadaptError
from clipadapt.features import FeatureSet, FeatureSplit
from clipadapt.features.io import save_feature_dir


def _featdir(tmp_path, empty: str):
    protos, image, labels = make_clustered_features(num_classes=3, per_class=6, dim=8)
    splits = {}
    for i, name in enumerate(("train", "val", "test", "unlabeled")):
        _, img, lab = make_clustered_features(num_classes=3, per_class=6, dim=8, seed=i + 1)
        splits[name] = FeatureSplit(img[:0], lab[:0]) if name == empty else FeatureSplit(img, lab)
    fs = FeatureSet(classnames=["a", "b", "c"], text=protos, splits=splits, meta={"model": "synthetic"})
    out = tmp_path / f"feats-empty-{empty}"
    save_feature_dir(fs, out)
    return out


def _run(capsys, argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize("method", ["zeroshot", "dn"])
def test_eval_on_an_empty_test_split_is_a_named_error(tmp_path, capsys, method):
    fd = _featdir(tmp_path, "test")
    code, out = _run(capsys, ["eval", "--features", fd, "--method", method, "--out", tmp_path / "r"])
    assert code == 2 and "split 'test' has 0 rows" in out.err and "eval --method" in out.err
    assert not (tmp_path / "r" / "results.json").exists()


def test_fewshot_on_an_empty_val_split_is_a_named_error(tmp_path, capsys):
    fd = _featdir(tmp_path, "val")
    code, out = _run(capsys, ["fewshot", "--features", fd, "--shots", "1", "--seeds", "1", "--methods", "tip",
                              "--out", tmp_path / "r"])
    assert code == 2 and "split 'val' has 0 rows" in out.err and "--val-from-train" in out.err


def test_fewshot_on_an_empty_test_or_train_split_is_a_named_error(tmp_path, capsys):
    for empty in ("test", "train"):
        fd = _featdir(tmp_path, empty)
        code, out = _run(capsys, ["fewshot", "--features", fd, "--shots", "1", "--seeds", "1", "--methods",
                                  "zeroshot,tip", "--out", tmp_path / f"r-{empty}"])
        assert code == 2 and f"split '{empty}' has 0 rows" in out.err, out.err


def test_dn_sweep_on_an_empty_test_split_is_an_error(tmp_path, capsys):
    fd = _featdir(tmp_path, "test")
    code, out = _run(capsys, ["dn-sweep", "--features", fd, "--lambdas", "0,0.5", "--samples", "4", "--seeds", "1",
                              "--out", tmp_path / "r"])
    assert code == 2 and "0 rows" in out.err and "Traceback" not in out.err


def test_search_refuses_zero_validation_rows():
    from clipadapt.eval.search import search_tip_adapter
    from clipadapt.methods import TipAdapter

    protos, image, labels = make_clustered_features(num_classes=3, per_class=4, dim=8)
    tip = TipAdapter().fit(image, labels, protos)
    with pytest.raises(ClipadaptError, match="0 validation rows"):
        search_tip_adapter(tip, image[:0], labels[:0], alphas=[0.0, 1.0], betas=[1.0])


def test_metrics_refuse_zero_rows():
    from clipadapt.eval.metrics import classification_report
    from clipadapt.eval.retrieval import retrieval_recall

    with pytest.raises(ClipadaptError, match="0 rows"):
        classification_report(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ClipadaptError, match="0 queries"):
        retrieval_recall(torch.zeros(0, 4), torch.ones(2, 4), [[0]] * 0)


def test_non_empty_splits_still_run(tmp_path, capsys):
    fd = _featdir(tmp_path, "none")
    code, out = _run(capsys, ["eval", "--features", fd, "--method", "zeroshot", "--out", tmp_path / "r"])
    assert code == 0, out.err
    assert json.loads((tmp_path / "r" / "results.json").read_text())["n"] == 18
