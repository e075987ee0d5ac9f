"""`clipadapt eval --method dn` and `clipadapt dn-sweep` end to end on small feature directories."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_clustered_features

from clipadapt.cli import main
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir

JSON_ABS = 1e-4  # results.json writes percentages with 4 decimals


def _literal_top1(pool, text, test, labels, lam, text_mean="prompts"):
    """DN top-1 written out (docs/methods.md §2, classification: subtract λμ from raw embeddings, then normalise)."""
    mu_img = pool.mean(0)
    prompts = text if text.ndim == 3 else text.unsqueeze(1)  # (C, T, D) raw prompt embeddings
    C, T = prompts.shape[0], prompts.shape[1]
    if text_mean == "prompts":  # μ_txt: every raw prompt; ensemble (normalise, average, re-normalise) after subtracting
        mu_txt = sum(prompts[k, t] for k in range(C) for t in range(T)) / (C * T)
        rows = []
        for k in range(C):
            avg = sum((prompts[k, t] - lam * mu_txt) / (prompts[k, t] - lam * mu_txt).norm() for t in range(T)) / T
            rows.append(avg / avg.norm())
    else:  # "classes": μ_txt over the prompt-ensembled class rows W_k
        classes = []
        for k in range(C):
            avg = sum(prompts[k, t] / prompts[k, t].norm() for t in range(T)) / T
            classes.append(avg / avg.norm())
        mu_txt = sum(classes) / C
        rows = [(w - lam * mu_txt) / (w - lam * mu_txt).norm() for w in classes]
    correct = 0
    for i in range(test.shape[0]):
        f = test[i] - lam * mu_img
        f = f / f.norm()
        scores = [float(f @ rows[k]) for k in range(C)]
        correct += int(np.argmax(scores) == int(labels[i]))
    return 100.0 * correct / test.shape[0]


@pytest.fixture
def dn_featdir(tmp_path):
    protos, test, labels = make_clustered_features(seed=0)
    _, unl, _ = make_clustered_features(seed=3, per_class=30)
    offset = 2.0 * torch.randn(protos.shape[1], generator=torch.Generator().manual_seed(9))
    fs = FeatureSet(classnames=[f"c{i}" for i in range(5)], text=protos,
                    splits={"test": FeatureSplit(test + offset, labels), "unlabeled": FeatureSplit(unl + offset)},
                    meta={"model": "synthetic"})
    return save_feature_dir(fs, tmp_path / "fd"), fs


def test_eval_dn_all_samples_matches_literal_top1(tmp_path, dn_featdir):
    fd, fs = dn_featdir
    out = tmp_path / "r.json"
    assert main(["eval", "--features", str(fd), "--method", "dn", "--dn-samples", "all", "--dn-lambda", "0.5", "--out",
                 str(out)]) == 0
    res = json.loads(out.read_text())
    expected = _literal_top1(fs.split("unlabeled").image, fs.text, fs.split("test").image, fs.split("test").label, 0.5)
    assert res["top1"] == pytest.approx(expected)
    assert res["dn"]["source"] == "unlabeled" and res["dn"]["transductive"] is False
    assert res["dn"]["n_image_samples_used"] == 150 and res["hyperparameters"]["lambda"] == 0.5
    assert res["hyperparameters"]["text_mean"] == "prompts"


def test_eval_dn_text_mean_flag_selects_the_classes_reading(tmp_path):
    """--dn-text-mean classes vs the default prompts, on raw (C, T, D) text where the two readings differ."""
    g = torch.Generator().manual_seed(5)
    protos, test, labels = make_clustered_features(seed=7, noise=1.2)
    _, unl, _ = make_clustered_features(seed=8, per_class=10)
    text = (protos.unsqueeze(1) * (1 + 4 * torch.rand(5, 3, 1, generator=g))
            + 0.8 * torch.randn(5, 3, 16, generator=g) + 1.5)
    fs = FeatureSet(classnames=[f"c{i}" for i in range(5)], text=text,
                    splits={"test": FeatureSplit(test + 1.0, labels), "unlabeled": FeatureSplit(unl + 1.0)})
    fd = save_feature_dir(fs, tmp_path / "fd")
    got = {}
    for mean in ("prompts", "classes"):
        out = tmp_path / f"{mean}.json"
        args = ["eval", "--features", str(fd), "--method", "dn", "--dn-samples", "all", "--dn-lambda", "1.0",
                "--out", str(out)]
        assert main(args + (["--dn-text-mean", mean] if mean == "classes" else [])) == 0
        res = json.loads(out.read_text())
        assert (res["hyperparameters"]["text_mean"] == mean
                and res["dn"]["n_text_samples_used"] == (15 if mean == "prompts" else 5))
        got[mean] = res["top1"]
        assert res["top1"] == pytest.approx(_literal_top1(unl + 1.0, text, test + 1.0, labels, 1.0, mean))
    assert got["prompts"] != got["classes"]  # the data separates the two readings (46 vs 43 when written)


def test_eval_dn_repeats_report_mean_std_and_each_draw(tmp_path, dn_featdir):
    fd, fs = dn_featdir
    out = tmp_path / "r.json"
    assert main(["eval", "--features", str(fd), "--method", "dn", "--dn-samples", "5", "--dn-repeats", "4", "--out",
                 str(out)]) == 0
    rep = json.loads(out.read_text())["dn_repeats"]
    top1 = [d["top1"] for d in rep["draws"]]
    assert [d["seed"] for d in rep["draws"]] == [0, 1, 2, 3]
    mean = sum(top1) / 4
    std = math.sqrt(sum((t - mean) ** 2 for t in top1) / 3)
    assert rep["top1_mean"] == pytest.approx(mean, abs=JSON_ABS) and rep["top1_std"] == pytest.approx(std, abs=JSON_ABS)
    # each draw's value is what a single run with that seed gives
    single = tmp_path / "s.json"
    assert main(["eval", "--features", str(fd), "--method", "dn", "--dn-samples", "5", "--dn-seed", "2", "--out",
                 str(single)]) == 0
    assert json.loads(single.read_text())["top1"] == pytest.approx(top1[2])


def test_dn_runner_takes_typed_options_and_prints_nothing(capsys, dn_featdir):
    from clipadapt.cli import build_parser
    from clipadapt.cli.eval import method_options
    from clipadapt.eval.registry import get_eval_method
    from clipadapt.eval.runners.dn import DNOptions

    fd, fs = dn_featdir
    args = build_parser().parse_args(["eval", "--features", str(fd), "--method", "dn", "--dn-lambda", "0.5",
                                      "--dn-samples", "all", "--dn-repeats", "2", "--dn-text-mean", "classes"])
    method = get_eval_method("dn")
    options = method_options(method, args)
    assert options == DNOptions(split="test", dn_lambda=0.5, dn_samples=None, dn_source="unlabeled", dn_repeats=2,
                                dn_seed=0, dn_text_mean="classes", fetch=None)  # --features: nothing to encode
    result = method.run(fs, options)
    assert capsys.readouterr().out == ""
    expected = _literal_top1(fs.split("unlabeled").image, fs.text, fs.split("test").image, fs.split("test").label,
                             0.5, "classes")
    assert result.extra["dn_repeats"]["top1_mean"] == pytest.approx(expected)
    assert result.notes == ["dn: the 2 draws are identical: each uses every one of the 150 --dn-source images "
                            "(--dn-samples all), so --dn-repeats has nothing to vary"]


def test_eval_dn_transductive_source_is_labelled(tmp_path, dn_featdir):
    fd, _ = dn_featdir
    out = tmp_path / "r.json"
    assert main(["eval", "--features", str(fd), "--method", "dn", "--dn-source", "test", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["dn"]["transductive"] is True


def test_eval_dn_fewer_samples_records_number_used(tmp_path, dn_featdir):
    fd, _ = dn_featdir
    out = tmp_path / "r.json"
    with pytest.warns(UserWarning, match="only 150 are available"):
        assert main(["eval", "--features", str(fd), "--method", "dn", "--dn-samples", "1000", "--out", str(out)]) == 0
    dn = json.loads(out.read_text())["dn"]
    assert dn["n_samples_requested"] == 1000 and dn["n_image_samples_used"] == 150


def test_eval_dn_without_unlabeled_split_says_what_to_do(tmp_path, synthetic_featureset, capsys):
    fd = save_feature_dir(synthetic_featureset, tmp_path / "fd")
    assert main(["eval", "--features", str(fd), "--method", "dn"]) == 2
    err = capsys.readouterr().err
    assert "split 'unlabeled' not found" in err and "--dn-source" in err


def test_dn_sweep_writes_table_and_plot(tmp_path, dn_featdir):
    fd, fs = dn_featdir
    out = tmp_path / "sweep"
    assert main(["dn-sweep", "--features", str(fd), "--lambdas", "0,0.5", "--samples", "1,10,1000", "--seeds", "3",
                 "--out", str(out)]) == 0
    for name in ("sweep.csv", "sweep.md", "results.json", "sweep.png"):
        assert (out / name).stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    assert [(r["sweep"], r["lambda"]) for r in rows if r["sweep"] == "lambda"] == [("lambda", 0.0), ("lambda", 0.5)]
    # 1000 > the 150-row pool: replaced by one row using all 150 (evaluated once, deterministic)
    assert [(r["n_used"], r["draws"]) for r in rows if r["sweep"] == "samples"] == [(1, 3), (10, 3), (150, 1)]
    lam0 = next(r for r in rows if r["sweep"] == "lambda" and r["lambda"] == 0.0)
    assert lam0["top1"] == pytest.approx(res["plain"]["top1"]) and lam0["top1 std"] == 0.0
    whole = next(r for r in rows if r["n_used"] == 150)
    expected = _literal_top1(fs.split("unlabeled").image, fs.text, fs.split("test").image, fs.split("test").label, 0.25)
    assert whole["top1"] == pytest.approx(expected) and res["text_mean"] == "prompts"


def test_dn_sweep_text_mean_flag_reaches_the_evaluator(tmp_path, dn_featdir):
    fd, fs = dn_featdir
    out = tmp_path / "sweep"
    assert main(["dn-sweep", "--features", str(fd), "--lambdas", "0.5", "--samples", "1000", "--seeds", "1",
                 "--dn-text-mean", "classes", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    whole = next(r for r in res["rows"] if r["sweep"] == "samples")
    expected = _literal_top1(fs.split("unlabeled").image, fs.text, fs.split("test").image, fs.split("test").label, 0.25,
                             "classes")
    assert res["text_mean"] == "classes" and whole["top1"] == pytest.approx(expected)


def test_eval_dn_with_tta_views_averages_raw_views_and_reports_both(tmp_path):
    protos, test, labels = make_clustered_features(seed=0, views=4)
    _, unl, _ = make_clustered_features(seed=3, views=4, per_class=10)
    fs = FeatureSet(classnames=[f"c{i}" for i in range(5)], text=protos,
                    splits={"test": FeatureSplit(test, labels), "unlabeled": FeatureSplit(unl)})
    fd = save_feature_dir(fs, tmp_path / "fd")
    out = tmp_path / "r.json"
    assert main(["eval", "--features", str(fd), "--method", "dn", "--dn-samples", "all", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    pooled_test = torch.stack([sum(test[i, v] for v in range(4)) / 4 for i in range(test.shape[0])])
    pooled_pool = torch.stack([sum(unl[i, v] for v in range(4)) / 4 for i in range(unl.shape[0])])
    assert res["top1"] == pytest.approx(_literal_top1(pooled_pool, protos, pooled_test, labels, 0.25))
    assert res["without_dn"]["top1"] == pytest.approx(_literal_top1(pooled_pool, protos, pooled_test, labels, 0.0))
    assert res["dn"]["views"] == 4


def test_eval_dn_through_model_and_dataset_fetches_the_source_split(tmp_path):
    """--model/--dataset: the --dn-source split is extracted through the cache like the evaluated one."""
    from _imagedata import make_imagefolder

    from clipadapt.features.pipeline import clear_encoder_memo, get_feature_set

    spec = f"imagefolder:{make_imagefolder(tmp_path / 'folder')}"
    model, out = "clipadapt-test-tiny-vit", tmp_path / "r.json"
    assert main(["eval", "--model", model, "--dataset", spec, "--method", "dn", "--dn-source", "train",
                 "--dn-samples", "all",
                 "--dn-lambda", "0.5", "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    fs = get_feature_set(model, spec, ["train", "test"], cache_dir=tmp_path / "c", progress=False)
    clear_encoder_memo()
    test = fs.split("test")
    assert res["top1"] == pytest.approx(_literal_top1(fs.split("train").image, fs.text, test.image, test.label, 0.5),
                                        abs=JSON_ABS)
    assert res["dn"]["n_image_samples_used"] == 6 and res["dn"]["transductive"] is False


def test_eval_dn_on_a_folder_without_split_subfolders_is_transductive(tmp_path):
    """imagefolder:ROOT without train/val/test folders serves the same images as 'unlabeled' and 'test': DN's
    means then come from the evaluated images, and results.json must say so."""
    from _imagedata import make_imagefolder

    from clipadapt.features.pipeline import clear_encoder_memo

    root = make_imagefolder(tmp_path / "flat", splits=("",))
    assert not (root / "test").exists() and (root / "red").is_dir()
    out = tmp_path / "r" / "results.json"
    assert main(["eval", "--model", "clipadapt-test-tiny-vit", "--dataset", f"imagefolder:{root}", "--method", "dn",
                 "--dn-samples", "all", "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--out",
                 str(out.parent)]) == 0
    clear_encoder_memo()
    dn = json.loads(out.read_text())["dn"]
    assert dn["source"] == "unlabeled" and dn["shared_with_evaluated"] == 6 and dn["transductive"] is True


def test_eval_dn_pool_with_the_test_rows_under_another_name_is_transductive(tmp_path, dn_featdir):
    """A feature directory whose 'unlabeled' split repeats test rows (no paths recorded): found by the rows."""
    _, fs = dn_featdir
    test = fs.split("test")
    copy = FeatureSet(classnames=fs.classnames, text=fs.text,
                      splits={"test": test, "unlabeled": FeatureSplit(
                          torch.cat([test.image[:3], fs.split("unlabeled").image]))})
    fd, out = save_feature_dir(copy, tmp_path / "dup"), tmp_path / "r" / "results.json"
    assert main(["eval", "--features", str(fd), "--method", "dn", "--out", str(out.parent)]) == 0
    dn = json.loads(out.read_text())["dn"]
    assert dn["shared_with_evaluated"] == 3 and dn["transductive"] is True
