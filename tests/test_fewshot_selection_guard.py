"""Hyper-parameters are never searched on test images: val == test is an error naming the fix, and
`--val-from-train N` draws a seeded validation split from train, disjoint from every shot list of its seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt.cli import main
from clipadapt.data.catalog import imagenet_meta
from clipadapt.errors import DatasetError, ProtocolError
from clipadapt.eval.fewshot import DirectorySource, FewShotConfig, run_fewshot
from clipadapt.eval.protocol import check_disjoint, split_overlap
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir

C, D = 3, 8
GRID = ["--grid", "tip.alpha=0.5,2", "--grid", "tip.beta=1,5"]


def _split(g, protos, per_class, views=None, prefix=None):
    y = torch.arange(C).repeat_interleave(per_class)
    shape = (y.numel(), views, D) if views else (y.numel(), D)
    base = protos[y].unsqueeze(1) if views else protos[y]
    paths = [f"{prefix}/{i}.png" for i in range(y.numel())] if prefix else None
    return FeatureSplit(base + 0.8 * torch.randn(*shape, generator=g), y, paths)


def _featureset(val_is_test=False, with_val=True, train_per_class=8, views=2):
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(C, D, generator=g)
    splits = {"train": _split(g, protos, train_per_class, views), "test": _split(g, protos, 5)}
    if with_val:
        splits["val"] = splits["test"] if val_is_test else _split(g, protos, 4)
    return FeatureSet([f"class{i}" for i in range(C)], protos, splits, {"model": "synthetic", "dataset": "clusters"})


def _fewshot(feats, out, *extra):
    return main(["fewshot", "--features", str(feats), "--shots", "1,2", "--seeds", "1,2", "--methods", "zeroshot,tip",
                 *GRID, "--out", str(out), *extra])


# ------------------------------------------------------------------------------------------------ the guard
def test_val_rows_identical_to_test_rows_stop_the_cli_and_name_the_fix(tmp_path, capsys):
    feats = save_feature_dir(_featureset(val_is_test=True), tmp_path / "feats")
    assert _fewshot(feats, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "'val' split" in err and "'test' split" in err and "clusters" in err and "--val-from-train N" in err
    assert not (tmp_path / "out" / "results.json").exists()
    with pytest.raises(ProtocolError, match="IS the 'test' split"):
        run_fewshot(DirectorySource(_featureset(val_is_test=True)),
                    FewShotConfig(shots=[1], seeds=[1], methods=["tip"]),
                    progress=False)


def test_partial_path_overlap_is_counted_row_by_row():
    val_paths = [f"img/{i}.png" for i in range(10)]
    test_paths = [f"img/{i}.png" for i in range(7, 20)] + ["img/./3.png"]  # 3 spelled differently: same file
    shared = sum(1 for p in val_paths if p in {"img/3.png", *test_paths})  # literal count: 7, 8, 9 and 3
    val = FeatureSplit(torch.zeros(10, D), torch.zeros(10, dtype=torch.long), val_paths)
    test = FeatureSplit(torch.ones(14, D), torch.zeros(14, dtype=torch.long), test_paths)
    assert split_overlap(val, test).shared == shared == 4
    with pytest.raises(ProtocolError, match=r"'val' split .* 4 of its 10 images are also in the 'test' split "
                                            r"\(14 images"):
        check_disjoint(val, test, selection_name="val", dataset="mine", fix="do X")
    # paths decide when both sides have them: identical embeddings of distinct files are no overlap
    assert split_overlap(FeatureSplit(test.image, test.label, [f"v{i}" for i in range(14)]), test) is None


# ------------------------------------------------------------------------------------------------ --val-from-train
def _read(path):
    return json.loads(path.read_text())


def test_val_from_train_is_disjoint_from_every_shot_list_of_its_seed_and_balanced(tmp_path):
    fs = _featureset(val_is_test=True)  # the guard would stop a run on 'val'; --val-from-train never reads it
    feats = save_feature_dir(fs, tmp_path / "feats")
    assert _fewshot(feats, tmp_path / "out", "--val-from-train", "3") == 0
    idx_dir, labels = tmp_path / "out" / "indices", fs.splits["train"].label.tolist()
    for seed in (1, 2):
        val = _read(idx_dir / f"val_seed{seed}.json")
        assert (val["role"], val["val_per_class"], val["seed"], val["split"]) == ("val", 3, seed, "train")
        for k in (1, 2):
            shots = _read(idx_dir / f"shots{k}_seed{seed}.json")["indices"]
            assert not set(shots) & set(val["indices"])
        per_class = [sum(1 for i in val["indices"] if labels[i] == c) for c in range(C)]
        assert per_class == [3] * C
    results = _read(tmp_path / "out" / "results.json")
    assert results["validation"]["source"] == "train" and results["config"]["val_from_train"] == 3
    assert results["indices"]["val_seed1"] == _read(idx_dir / "val_seed1.json")["indices"]
    assert {r["val_size"] for r in results["runs"]} == {3 * C}


def test_val_from_train_draw_is_the_documented_seeded_sampler_and_reproducible(tmp_path):
    fs = _featureset()
    config = FewShotConfig(shots=[1, 4], seeds=[5], methods=["zeroshot"], val_from_train=2)
    out = run_fewshot(DirectorySource(fs), config, progress=False)
    again = run_fewshot(DirectorySource(fs), config, progress=False)
    assert out["indices"] == again["indices"]
    labels = fs.splits["train"].label.numpy()
    excluded = set(out["indices"]["shots4_seed5"])  # nested: contains the 1-shot rows
    assert set(out["indices"]["shots1_seed5"]) <= excluded
    expected = []
    for c in range(C):  # literal: the class's rows not in the shots, permuted by default_rng([seed, class, 1])
        items = np.array([i for i in range(len(labels)) if labels[i] == c and i not in excluded])
        expected += items[np.random.default_rng([5, c, 1]).permutation(len(items))[:2]].tolist()
    assert out["indices"]["val_seed5"] == sorted(expected)
    # the search really validated on those rows: zero-shot val top-1 computed by hand on their pooled views
    rows = fs.splits["train"].image[sorted(expected)].mean(1)
    w = fs.text / fs.text.norm(dim=1, keepdim=True)
    pred = [int(torch.argmax(w @ (r / r.norm()))) for r in rows]
    literal = 100 * sum(p == labels[i] for p, i in zip(pred, sorted(expected))) / len(pred)
    assert out["runs"][0]["val_top1"] == pytest.approx(literal)


def test_val_from_train_works_without_a_val_split_and_too_few_images_name_the_class(tmp_path):
    fs = _featureset(with_val=False, train_per_class=5)
    out = run_fewshot(DirectorySource(fs), FewShotConfig(shots=[2], seeds=[1], methods=["tip"], val_from_train=3),
                      progress=False)
    assert out["runs"][0]["val_size"] == 3 * C
    with pytest.raises(DatasetError, match="'class0' has 1 left of 5"):
        run_fewshot(DirectorySource(fs), FewShotConfig(shots=[4], seeds=[1], methods=["tip"], val_from_train=3),
                    progress=False)


# ------------------------------------------------------------------------------------------------ pipeline, ImageNet
def _tiny_imagenet(root, per_class=3):
    """CoOp's ImageNet layout: images/{train,val}/<wnid>/*.png, two classes; 'val' is also 'test'."""
    wnids = imagenet_meta()["wnids"][:2]
    for split in ("train", "val"):
        for c, wnid in enumerate(wnids):
            (root / "images" / split / wnid).mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split == "val" else per_class + 2):
                Image.new("RGB", (24, 24), (40 * i, 200 * c, 90)).save(root / "images" / split / wnid / f"{i}.png")
    return f"coop:imagenet:{root}?templates=default"


def test_pipeline_coop_imagenet_stops_before_encoding_and_runs_with_val_from_train(tmp_path, capsys):
    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    spec, cache = _tiny_imagenet(tmp_path / "imagenet"), tmp_path / "cache"
    base = ["fewshot", "--model", "clipadapt-test-tiny-vit", "--dataset", spec, "--cache-dir", str(cache),
            "--device", "cpu", "--batch-size", "8", "--shots", "1,2", "--seeds", "1", "--methods", "zeroshot,tip",
            "--views", "1", "--allow-fewer", *GRID]
    assert main(base + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "'val' split" in err and "6 of its 6 images" in err and "--val-from-train" in err and "coop:imagenet" in err
    assert not cache.exists()  # nothing was encoded
    assert main(base + ["--val-from-train", "2", "--out", str(tmp_path / "b")]) == 0
    idx = tmp_path / "b" / "indices"
    val = _read(idx / "val_seed1.json")["indices"]
    assert len(val) == 4 and not set(val) & set(_read(idx / "shots2_seed1.json")["indices"])
    results = _read(tmp_path / "b" / "results.json")
    assert "val" not in results["features"]["splits"] and {r["val_size"] for r in results["runs"]} == {4}


# ------------------------------------------------------------------------------------------------ backbones
def test_backbones_held_out_split_equal_to_test_is_an_error_and_val_from_train_fits_on_train(tmp_path, capsys):
    dirs = []
    for s in (0, 1):
        fs = _featureset(val_is_test=True, views=None)
        fs.meta["model"] = f"net{s}"
        dirs.append(str(save_feature_dir(fs, tmp_path / f"d{s}")))
    args = ["backbones", "--features", *dirs, "--cost", "none", "--nlc-max-epochs", "2", "--probe-max-iter", "3",
            "--no-normalisation-study"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "'val' split used for fitting the combiners" in err and "--val-from-train K" in err
    assert main(args + ["--val-from-train", "2", "--out", str(tmp_path / "b")]) == 0
    r = _read(tmp_path / "b" / "results.json")
    assert r["heldout"].startswith("2 shots per class from 'train'") and r["heldout_n"] == 2 * C


def test_backbones_held_out_logits_identical_to_evaluated_logits_is_an_error(tmp_path, capsys):
    logits = np.random.default_rng(0).normal(size=(12, C)).astype(np.float32)
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", logits)
    np.save(tmp_path / "y.npy", np.arange(12) % C)
    paths = f"{tmp_path / 'a.npy'},{tmp_path / 'b.npy'}"
    assert main(["backbones", "--logits", paths, "--labels", str(tmp_path / "y.npy"), "--heldout-logits", paths,
                 "--heldout-labels", str(tmp_path / "y.npy"), "--cost", "none", "--out", str(tmp_path / "o")]) == 2
    assert "identical to the 'evaluated' split" in capsys.readouterr().err


def test_pipeline_fewshot_honours_on_error_for_unreadable_images(tmp_path, capsys):
    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    spec, cache = _tiny_imagenet(tmp_path / "imagenet"), tmp_path / "cache"
    broken = next((tmp_path / "imagenet" / "images" / "val").rglob("0.png"))
    broken.write_bytes(b"not an image")  # a test image (CoOp ImageNet tests on val/)
    base = ["fewshot", "--model", "clipadapt-test-tiny-vit", "--dataset", spec, "--cache-dir", str(cache),
            "--device", "cpu", "--batch-size", "8", "--shots", "1", "--seeds", "1", "--methods", "zeroshot",
            "--views", "1", "--allow-fewer", "--val-from-train", "2"]
    assert main(base + ["--out", str(tmp_path / "fail")]) != 0
    assert broken.name in capsys.readouterr().err
    assert main(base + ["--on-error", "skip", "--out", str(tmp_path / "skip")]) == 0
    assert _read(tmp_path / "skip" / "results.json")["features"]["splits"]["test"]["n"] == 6 - 1
