"""ImageNet -> variants: the cache and search on ImageNet, -A/-R logits restricted to their 200 classes."""

from __future__ import annotations

import json

import pytest
import torch

from clipadapt.cli import main
from clipadapt.eval.robustness import variant_class_indices
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.methods.tip_adapter import TipAdapter

D = 8


def test_variant_class_maps_name_the_right_imagenet_classes():
    a, r = variant_class_indices("imagenet_a"), variant_class_indices("imagenet_r")
    assert len(a) == len(set(a)) == 200 and len(r) == len(set(r)) == 200
    assert a[:3] == [6, 11, 13]  # stingray, goldfinch, junco
    assert r[:3] == [1, 2, 4]  # goldfish, great white shark, hammerhead shark
    assert variant_class_indices("imagenet_v2") is None and variant_class_indices("imagenet_sketch") is None


def _imagenet_like(tmp_path):
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(1000, D, generator=g)
    y = torch.arange(1000).repeat_interleave(3)
    train = FeatureSplit(protos[y] + 0.8 * torch.randn(y.numel(), D, generator=g), y)
    yt = torch.arange(1000)
    test = FeatureSplit(protos[yt] + 0.8 * torch.randn(1000, D, generator=g), yt)
    names = [f"c{i}" for i in range(1000)]
    save_feature_dir(FeatureSet(names, protos, {"train": train, "test": test}, {"model": "s"}), tmp_path / "in")
    idx = torch.tensor(variant_class_indices("imagenet_a"))
    ya = torch.arange(200).repeat(2)
    var = FeatureSplit(protos[idx[ya]] + 1.2 * torch.randn(400, D, generator=g), ya)
    save_feature_dir(FeatureSet(names[:200], protos[:200], {"test": var}, {"model": "s"}), tmp_path / "a")
    return protos, var, idx


def test_robustness_scores_variant_logits_over_its_200_classes_with_the_imagenet_search(tmp_path):
    protos, var, idx = _imagenet_like(tmp_path)
    grid = ["--grid", "tip.alpha=0.5,4", "--grid", "tip.beta=1,5"]
    assert main(["robustness", "--features", str(tmp_path / "in"), "--variant", f"imagenet_a={tmp_path / 'a'}",
                 "--shots", "1", "--seeds", "1", "--methods", "zeroshot,tip", "--val-from-train", "1", *grid,
                 "--out", str(tmp_path / "out")]) == 0
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    by = {(r["method"], r["dataset"]): r for r in runs}
    # the ImageNet rows equal `fewshot` on the same features (same sampling, validation and search)
    assert main(["fewshot", "--features", str(tmp_path / "in"), "--shots", "1", "--seeds", "1", "--methods",
                 "zeroshot,tip",
                 "--val-from-train", "1", *grid, "--out", str(tmp_path / "fs")]) == 0
    single = {r["method"]: r for r in json.loads((tmp_path / "fs" / "results.json").read_text())["runs"]}
    for m in ("zeroshot", "tip"):
        assert by[(m, "imagenet")]["test_top1"] == single[m]["test_top1"]
        assert by[(m, "imagenet_a")]["hyperparameters"] == single[m]["hyperparameters"]
    # zero-shot on -A: argmax over the 200 mapped columns only
    f, w = torch.nn.functional.normalize(var.image, dim=1), torch.nn.functional.normalize(protos, dim=1)
    literal = 100.0 * ((f @ w.T)[:, idx].argmax(1) == var.label).float().mean().item()
    assert by[("zeroshot", "imagenet_a")]["test_top1"] == pytest.approx(literal)
    # Tip-Adapter on -A with the chosen α, β and the sampled cache rows, restricted the same way
    shots = json.loads((tmp_path / "fs" / "indices" / "shots1_seed1.json").read_text())["indices"]
    from clipadapt.features.io import load_feature_dir

    train = load_feature_dir(tmp_path / "in").split("train").subset(shots)
    hp = by[("tip", "imagenet_a")]["hyperparameters"]
    tip = TipAdapter(alpha=hp["alpha"], beta=hp["beta"]).fit(train.image, train.label, protos)
    literal = 100.0 * (tip.predict_logits(var.image)[:, idx].argmax(1) == var.label).float().mean().item()
    assert by[("tip", "imagenet_a")]["test_top1"] == pytest.approx(literal)
    assert by[("tip", "imagenet_a")]["classes"] == 200
