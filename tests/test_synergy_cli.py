"""`clipadapt backbones`: feature directories, saved logits, models with unavailable weights; files and errors."""

import json

import numpy as np
import pytest
import torch

from clipadapt.cli import main
from clipadapt.errors import WeightsUnavailableError
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir

FAST = ["--cost", "none", "--nlc-max-epochs", "3", "--probe-max-iter", "5"]


def _fs(seed, c=4, per_class=6, d=10, noise=1.5, classnames=None, model=None):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(c, d, generator=g)
    labels = torch.arange(c).repeat_interleave(per_class)
    splits = {}
    for k, name in enumerate(("train", "val", "test")):
        gs = torch.Generator().manual_seed(1000 * seed + k)
        image = protos[labels] + noise * torch.randn(labels.numel(), d, generator=gs)
        splits[name] = FeatureSplit(image, labels.clone(), [f"{name}/{i}.png" for i in range(labels.numel())])
    return FeatureSet(classnames or [f"class{i}" for i in range(c)], protos, splits, {"model": model or f"net{seed}"})


def _literal_zero_shot_top1(fs):
    w = fs.text / fs.text.norm(dim=1, keepdim=True)
    x, y = fs.split("test").image, fs.split("test").label
    right = [int(max(range(w.shape[0]), key=lambda c: float(x[i] @ w[c] / x[i].norm())) == y[i]) for i in range(len(y))]
    return 100 * sum(right) / len(right), right


def test_feature_directories_end_to_end(tmp_path, capsys):
    sets = [_fs(0), _fs(1, noise=3.0)]
    dirs = [save_feature_dir(fs, tmp_path / f"d{i}") for i, fs in enumerate(sets)]
    out = tmp_path / "out"
    assert main(["backbones", "--features", *map(str, dirs), "--out", str(out), *FAST]) == 0
    for name in ("results.json", "per_backbone.csv", "per_backbone.md", "combinations.csv", "agreement.csv",
                 "complementarity.md", "per_class_best.csv", "normalisation.csv", "cascade.csv", "summary.md",
                 "agreement.png", "complementarity.png", "accuracy_vs_cost.png"):
        assert (out / name).is_file(), name
    r = json.loads((out / "results.json").read_text())
    literal = [_literal_zero_shot_top1(fs) for fs in sets]
    assert r["accuracy"]["net0"] == pytest.approx(literal[0][0]) and r["accuracy"]["net1"] == pytest.approx(literal[1][0])
    oracle = 100 * sum(a or b for a, b in zip(literal[0][1], literal[1][1])) / len(literal[0][1])
    assert r["oracle_top1"] == pytest.approx(oracle)
    assert {"stacking", "temperature_mean", "nlc", "mean_logits"} <= set(r["combinations"])
    assert r["heldout"] == "split 'val'" and r["heldout_n"] == 24
    assert len(r["normalisation_study"]) == 8 and "oracle" in capsys.readouterr().out


def test_few_shot_mode_fits_on_k_shots_per_class(tmp_path):
    dirs = [save_feature_dir(_fs(s), tmp_path / f"d{s}") for s in (0, 1)]
    out = tmp_path / "out"
    args = ["backbones", "--features", *map(str, dirs), "--out", str(out), "--shots", "2", "--no-normalisation-study"]
    assert main(args + FAST) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["heldout_n"] == 8 and r["heldout"].startswith("2 shots per class from 'train'")
    from clipadapt.data.fewshot import sample_few_shot

    assert r["heldout_indices"] == sample_few_shot(torch.arange(4).repeat_interleave(6), 2, 1)


def test_mismatched_feature_directories_are_named(tmp_path, capsys):
    a = save_feature_dir(_fs(0), tmp_path / "a")
    b = save_feature_dir(_fs(1, classnames=["class0", "class1", "class2", "zebra"]), tmp_path / "b")
    assert main(["backbones", "--features", str(a), str(b), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "net1: class names differ from net0" in capsys.readouterr().err
    c = _fs(2)
    c.splits["test"] = c.splits["test"].subset(list(range(20)))
    c_dir = save_feature_dir(c, tmp_path / "c")
    assert main(["backbones", "--features", str(a), str(c_dir), "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "net2: split 'test' has N=20 samples but net0 has N=24" in capsys.readouterr().err


def _save_logits(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, np.asarray(array, dtype=np.float32))
    return str(path)


def test_saved_logits_with_held_out(tmp_path):
    g = torch.Generator().manual_seed(0)
    y, yh = torch.randint(0, 5, (50,), generator=g), torch.randint(0, 5, (30,), generator=g)

    def make(labels, scale):
        return 3 * torch.nn.functional.one_hot(labels, 5) + scale * torch.randn(len(labels), 5, generator=g)

    test = [_save_logits(tmp_path, f"t{b}.npy", make(y, s)) for b, s in enumerate((1.0, 2.0, 3.0))]
    held = [_save_logits(tmp_path, f"h{b}.npy", make(yh, s)) for b, s in enumerate((1.0, 2.0, 3.0))]
    np.save(tmp_path / "y.npy", y.numpy())
    np.save(tmp_path / "yh.npy", yh.numpy())
    out = tmp_path / "out"
    assert main(["backbones", "--logits", ",".join(test), "--labels", str(tmp_path / "y.npy"),
                 "--heldout-logits", ",".join(held), "--heldout-labels", str(tmp_path / "yh.npy"),
                 "--names", "A,B,C", "--costs", "1,2,4", "--out", str(out)]) == 0
    r = json.loads((out / "results.json").read_text())
    literal = {n: 100 * float((np.load(p).argmax(1) == y.numpy()).mean()) for n, p in zip("ABC", test)}
    assert r["accuracy"] == pytest.approx(literal)
    assert "stacking" in r["combinations"] and "nlc" not in r["combinations"]  # no embeddings, no controller
    assert r["cascade_order"] == ["A", "B", "C"] and r["costs"] == {"A": 1.0, "B": 2.0, "C": 4.0}
    emb = [_save_logits(tmp_path, f"e{b}.npy", torch.randn(50, 6, generator=g)) for b in range(3)]
    hemb = [_save_logits(tmp_path, f"he{b}.npy", torch.randn(30, 6, generator=g)) for b in range(3)]
    assert main(["backbones", "--logits", ",".join(test), "--labels", str(tmp_path / "y.npy"),
                 "--heldout-logits", ",".join(held), "--heldout-labels", str(tmp_path / "yh.npy"),
                 "--embeddings", ",".join(emb), "--heldout-embeddings", ",".join(hemb), "--nlc-max-epochs", "2",
                 "--out", str(out), "--overwrite"]) == 0
    assert "nlc" in json.loads((out / "results.json").read_text())["combinations"]


def test_mismatched_logits_and_labels_are_named(tmp_path, capsys):
    a = _save_logits(tmp_path, "a.npy", np.zeros((10, 3)))
    b = _save_logits(tmp_path, "b.npy", np.zeros((9, 3)))
    np.save(tmp_path / "y.npy", np.zeros(10, dtype=np.int64))
    np.save(tmp_path / "y9.npy", np.zeros(9, dtype=np.int64))
    base = ["backbones", "--out", str(tmp_path / "o"), "--cost", "none"]
    assert main(base + ["--logits", f"{a},{b}", "--labels", str(tmp_path / "y.npy")]) == 2
    assert (f"{b} has shape (9, 3) but {a} has (10, 3): every backbone must score the same samples in the same "
            "order over the same classes (same sample count N)") in capsys.readouterr().err
    assert main(base + ["--logits", f"{a},{a}", "--labels", str(tmp_path / "y9.npy")]) == 2
    assert "y9.npy: 9 labels but the evaluated logits have N=10 rows" in capsys.readouterr().err
    c = _save_logits(tmp_path, "c.npy", np.zeros((10, 4)))
    assert main(base + ["--logits", f"{a},{c}", "--labels", str(tmp_path / "y.npy")]) == 2
    assert f"{c} has shape (10, 4) but {a} has (10, 3)" in capsys.readouterr().err


def _imagefolder(root, splits=("train", "val", "test"), per_class=2, classes=("red", "green", "blue")):
    """ROOT/<split>/<class>/*.png of generated solid-colour images (an `imagefolder:ROOT` dataset spec)."""
    from PIL import Image

    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shade = tuple(max(0, v - 30 * i) for v in colours[c])
                Image.new("RGB", (32, 32), shade).save(root / split / c / f"{i}.png")
    return f"imagefolder:{root}"


def _fake_loader(calls):
    """Stands in for features.pipeline.get_feature_set: RN50@openai has no weights offline."""

    def loader(model, dataset, splits, **kwargs):
        calls.append((model, dataset, tuple(splits), kwargs.get("indices")))
        if model == "RN50@openai":
            raise WeightsUnavailableError(f"{model}: pretrained weights not found in the local cache (offline)")
        return _fs(len(calls), model=model)

    return loader


def test_unavailable_backbone_is_named_and_the_run_continues(tmp_path, monkeypatch, capsys):
    from clipadapt.eval import synergy_inputs

    calls = []
    monkeypatch.setattr(synergy_inputs, "_default_loader", lambda: _fake_loader(calls))
    out = tmp_path / "out"
    spec = _imagefolder(tmp_path / "images")
    models = "RN50@openai,clipadapt-test-tiny-vit,clipadapt-test-tiny-rn"
    assert main(["backbones", "--models", models, "--dataset", spec, "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "unusable backbones: RN50@openai; continuing with: clipadapt-test-tiny-vit, clipadapt-test-tiny-rn" in printed
    r = json.loads((out / "results.json").read_text())
    assert list(r["unavailable_backbones"]) == ["RN50@openai"]
    assert r["usable_backbones"] == ["clipadapt-test-tiny-vit", "clipadapt-test-tiny-rn"]
    assert calls[0] == ("RN50@openai", spec, ("test", "val"), None)  # the dataset has a val split: held-out
    calls.clear()
    assert main(["backbones", "--models", models, "--dataset", spec, "--shots", "1", "--out", str(out), "--overwrite",
                 *FAST]) == 0
    from clipadapt.data import build_dataset, sample_few_shot

    expected = sample_few_shot(build_dataset(spec, "train").labels, 1, 1)
    assert calls[0] == ("RN50@openai", spec, ("test", "train"), {"train": expected})  # only the K shots are encoded
    assert json.loads((out / "results.json").read_text())["heldout_indices"] == expected
    assert main(["backbones", "--models", "RN50@openai,clipadapt-test-tiny-vit", "--dataset", spec,
                 "--out", str(out), "--overwrite", *FAST]) == 2
    err = capsys.readouterr().err
    assert "only 1 of 2 backbones are usable (clipadapt-test-tiny-vit)" in err and "RN50@openai: pretrained" in err


def test_real_pipeline_names_missing_weights_and_continues_with_tiny_models(tmp_path, capsys):
    """Through clipadapt.features.pipeline: RN50@openai has no weights offline; the tiny random models do run."""
    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    spec = _imagefolder(tmp_path / "images")
    out = tmp_path / "out"
    models = "RN50@openai,clipadapt-test-tiny-vit,clipadapt-test-tiny-rn"
    assert main(["backbones", "--models", models, "--dataset", spec, "--cache-dir", str(tmp_path / "cache"),
                 "--device", "cpu", "--batch-size", "4", "--out", str(out), "--nlc-max-epochs", "2",
                 "--probe-max-iter", "5"]) == 0
    assert "unusable backbones: RN50@openai; continuing with: clipadapt-test-tiny-vit, clipadapt-test-tiny-rn" in (
        capsys.readouterr().out)
    r = json.loads((out / "results.json").read_text())
    assert list(r["unavailable_backbones"]) == ["RN50@openai"] and "RN50" in r["unavailable_backbones"]["RN50@openai"]
    assert r["usable_backbones"] == ["clipadapt-test-tiny-vit", "clipadapt-test-tiny-rn"] and r["n"] == 6
    assert r["heldout"] == "split 'val'" and r["cost_unit"] == "GFLOPs per image"
    assert all(v > 0 for v in r["costs"].values())


def test_probe_never_trains_on_the_evaluated_split(tmp_path, capsys):
    """--train-split equal to --split would fit the normalisation study's linear probe on test labels."""
    dirs = [save_feature_dir(fs, tmp_path / f"d{i}") for i, fs in enumerate([_fs(0), _fs(1)])]
    code = main(["backbones", "--features", *map(str, dirs), "--train-split", "test", "--split", "test",
                 "--out", str(tmp_path / "o"), *FAST])
    assert code == 2
    err = capsys.readouterr().err
    assert "'test' split" in err and "normalisation study" in err
    assert not (tmp_path / "o" / "results.json").exists()
