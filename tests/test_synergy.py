"""Backbone synergy analyses: oracle, agreement, complementarity, per-class best, normalisation, cascade, cost."""

import math

import pytest
import torch

from clipadapt.errors import ConfigError, FeatureDirError
from clipadapt.eval.synergy import (
    ScoreSet,
    agreement_matrix,
    cascade,
    complementarity_matrix,
    evaluate_synergy,
    oracle_accuracy,
    per_backbone_accuracy,
    per_class_best,
    subset_mean_probs,
    synergy_summary,
)
from clipadapt.eval.synergy_cost import model_cost
from clipadapt.eval.synergy_inputs import check_aligned_feature_sets
from clipadapt.eval.synergy_norm import fit_linear_probe, normalisation_study, normalise_features
from clipadapt.features import FeatureSet, FeatureSplit

# three backbones, six samples, labels 0,1,2,0,1,2 — written so every answer can be counted by hand
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])
PREDS = torch.tensor([
    [0, 1, 2, 1, 0, 0],  # A: right on 0,1,2      -> 50 %
    [0, 0, 2, 0, 0, 2],  # B: right on 0,2,3,5    -> 66.7 %
    [1, 1, 1, 1, 1, 1],  # C: right on 1,4        -> 33.3 %
])


def test_oracle_and_per_backbone_accuracy_by_hand():
    assert per_backbone_accuracy(PREDS, LABELS).tolist() == pytest.approx([50.0, 200 / 3, 100 / 3])
    # sample 0 A,B; 1 A,C; 2 A,B; 3 B; 4 C; 5 B -> every sample has a right backbone
    assert oracle_accuracy(PREDS, LABELS) == pytest.approx(100.0)
    assert oracle_accuracy(PREDS[[0, 2]], LABELS) == pytest.approx(400 / 6)  # A or C: samples 0,1,2,4
    summary = synergy_summary(PREDS, LABELS, ["A", "B", "C"])
    assert summary["best_single"] == {"backbone": "B", "top1": pytest.approx(200 / 3)}
    assert summary["synergy"] == pytest.approx(100 - 200 / 3)


def test_agreement_matrix_by_hand():
    # A vs B agree on samples 0, 2, 4 -> 50 %; A vs C on 1, 3 -> 33.3 %; B vs C on none -> 0 %
    expected = [[100, 50, 100 / 3], [50, 100, 0], [100 / 3, 0, 100]]
    assert agreement_matrix(PREDS).tolist() == [pytest.approx(r) for r in expected]


def test_complementarity_matrix_by_hand():
    # [a, b] = % of samples a right and b wrong. A right {0,1,2}, B right {0,2,3,5}, C right {1,4}
    expected = [
        [0, 100 / 6, 200 / 6],  # A\B = {1}; A\C = {0,2}
        [300 / 6, 0, 400 / 6],  # B\A = {3,5}... and B\A also excludes 0,2 -> {3,5}: 2/6? see below
        [100 / 6, 200 / 6, 0],  # C\A = {4}; C\B = {1,4}
    ]
    expected[1][0] = 200 / 6  # B\A = {3, 5}
    m = complementarity_matrix(PREDS, LABELS)
    assert m.tolist() == [pytest.approx(r) for r in expected]
    # a brute-force loop agrees on random data
    g = torch.Generator().manual_seed(0)
    p, y = torch.randint(0, 4, (3, 50), generator=g), torch.randint(0, 4, (50,), generator=g)
    brute = [[100 * sum(p[a, i] == y[i] and p[b, i] != y[i] for i in range(50)).item() / 50 for b in range(3)]
             for a in range(3)]
    assert complementarity_matrix(p, y).tolist() == [pytest.approx(r) for r in brute]


def test_per_class_best_by_hand():
    rows = per_class_best(PREDS, LABELS, ["A", "B", "C"], ["cat", "dog", "fox"])
    # class cat (samples 0, 3): A 50, B 100, C 0; dog (1, 4): A 50, B 0, C 100; fox (2, 5): A 50, B 100, C 0
    assert [(r["class"], r["best"], r["A"], r["B"], r["C"]) for r in rows] == [
        ("cat", "B", 50.0, 100.0, 0.0), ("dog", "C", 50.0, 0.0, 100.0), ("fox", "B", 50.0, 100.0, 0.0)]


def test_normalisations_written_out():
    x = torch.tensor([[3.0, 4.0], [1.0, 0.0], [2.0, 5.0]])
    mu, sigma = x.mean(0), x.std(0, unbiased=False)
    assert torch.allclose(normalise_features(x, "raw"), x)
    assert torch.allclose(normalise_features(x, "l2")[0], torch.tensor([0.6, 0.8]))
    centred = x - mu
    assert torch.allclose(normalise_features(x, "centred_l2"), centred / centred.norm(dim=1, keepdim=True))
    assert torch.allclose(normalise_features(x, "standardised"), centred / sigma)
    other = (torch.zeros(2), torch.ones(2) * 2)  # statistics from another set are used when given
    assert torch.allclose(normalise_features(x, "standardised", other), x / 2)
    with pytest.raises(ConfigError, match="unknown normalisation 'whiten'"):
        normalise_features(x, "whiten")


def _feature_set(seed, n=40, c=4, d=12, noise=1.0, with_paths=True, classnames=None):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(c, d, generator=g)
    labels = torch.arange(c).repeat_interleave(n // c)

    def split(s):
        return FeatureSplit(
            5.0 + protos[labels] + noise * torch.randn(labels.numel(), d, generator=torch.Generator().manual_seed(s)),
            labels, [f"img{i}.jpg" for i in range(labels.numel())] if with_paths else None)

    return FeatureSet(classnames or [f"c{i}" for i in range(c)], protos,
                      {"train": split(100 + seed), "test": split(200 + seed)}, {"model": f"m{seed}"})


def test_normalisation_study_zero_shot_l2_equals_raw_and_probe_is_reported():
    fsets = {"m0": _feature_set(0), "m1": _feature_set(1, noise=2.0)}
    rows = normalisation_study(fsets, eval_split="test", train_split="train", probe_max_iter=15)
    assert [(r["backbone"], r["normalisation"]) for r in rows] == [
        (b, k) for b in ("m0", "m1") for k in ("raw", "l2", "centred_l2", "standardised")]
    by = {(r["backbone"], r["normalisation"]): r for r in rows}
    for b in fsets:  # zero-shot argmax is invariant to a per-sample positive scale
        assert by[(b, "raw")]["zeroshot_top1"] == by[(b, "l2")]["zeroshot_top1"]
        assert by[(b, "raw")]["zeroshot_stats"] == "test"
        assert all(0 <= by[(b, k)]["probe_top1"] <= 100 for k in ("raw", "l2"))
    # literal zero-shot accuracy of centred+L2 features, centre = mean of the evaluated images
    fs = fsets["m1"]
    x = fs.split("test").image
    w = fs.text / fs.text.norm(dim=1, keepdim=True)
    xc = x - x.mean(0)
    pred = [max(range(4), key=lambda c: float(xc[i] @ w[c] / xc[i].norm())) for i in range(40)]
    expected = 100 * sum(p == int(t) for p, t in zip(pred, fs.split("test").label)) / 40
    assert by[("m1", "centred_l2")]["zeroshot_top1"] == pytest.approx(expected)


def test_linear_probe_reaches_the_stationary_point_of_its_objective():
    g = torch.Generator().manual_seed(0)
    x, y, wd = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g), 1e-2
    w, b = fit_linear_probe(x, y, 3, weight_decay=wd)
    # gradient of mean CE + wd·‖W‖², written out: Xᵀ(P − Y)/N + 2·wd·W and mean(P − Y)
    p = torch.softmax(x.double() @ w.double().T + b.double(), dim=1)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    grad_w = (p - onehot).T @ x.double() / 60 + 2 * wd * w.double()
    grad_b = (p - onehot).mean(0)
    assert grad_w.abs().max() < 1e-4 and grad_b.abs().max() < 1e-4


def test_aligned_feature_sets_mismatches_name_the_backbone():
    ok = {"a": _feature_set(0), "b": _feature_set(1)}
    check_aligned_feature_sets(ok, "test")
    fewer = _feature_set(1)
    fewer.splits["test"] = fewer.splits["test"].subset(list(range(30)))
    with pytest.raises(FeatureDirError, match=r"b: split 'test' has N=30 samples but a has N=40"):
        check_aligned_feature_sets({"a": _feature_set(0), "b": fewer}, "test")
    shuffled = _feature_set(1)
    shuffled.splits["test"] = shuffled.splits["test"].subset(list(range(39, -1, -1)))
    with pytest.raises(FeatureDirError, match=r"b: test.paths.json differs from a at row 0 .*same order"):
        check_aligned_feature_sets({"a": _feature_set(0), "b": shuffled}, "test")
    no_paths = {"a": _feature_set(0, with_paths=False), "b": _feature_set(1, with_paths=False)}
    no_paths["b"].splits["test"] = no_paths["b"].splits["test"].subset(list(range(39, -1, -1)))
    with pytest.raises(FeatureDirError, match=r"b: labels of split 'test' differ from a"):
        check_aligned_feature_sets(no_paths, "test")
    renamed = _feature_set(1, classnames=["c0", "c1", "dog", "c3"])
    with pytest.raises(FeatureDirError, match=r"b: class names differ from a .*class 2: 'c2' vs 'dog'"):
        check_aligned_feature_sets({"a": _feature_set(0), "b": renamed}, "test")


def test_cascade_by_hand():
    # backbone "cheap" (cost 1) and "dear" (cost 10); labels 0, 1
    cheap = torch.tensor([[math.log(9.0), 0.0], [0.0, 0.0]])  # p = (0.9, 0.1) right; (0.5, 0.5) -> class 0, wrong
    dear = torch.tensor([[0.0, 0.0], [0.0, math.log(9.0)]])  # (0.5, 0.5); (0.1, 0.9) right
    labels = torch.tensor([0, 1])
    rows = cascade([dear, cheap], labels, costs=[10.0, 1.0], thresholds=[0.85, 0.95])
    # t = 0.85: sample 0 stops after cheap (0.9 >= .85) right; sample 1 runs both: mean p = (0.3, 0.7) -> 1 right
    assert rows[0]["top1"] == pytest.approx(100.0) and rows[0]["mean_cost"] == pytest.approx((1 + 11) / 2)
    # t = 0.95: both run both; sample 0 mean p = (0.7, 0.3) -> right; sample 1 right
    assert rows[1]["top1"] == pytest.approx(100.0) and rows[1]["mean_cost"] == pytest.approx(11.0)
    assert rows[0]["stopped_after"] == {"1": 0.5, "2": 0.5}
    only_cheap = cascade([dear, cheap], labels, costs=[10.0, 1.0], thresholds=[0.0])
    assert only_cheap[0]["top1"] == pytest.approx(50.0) and only_cheap[0]["mean_cost"] == pytest.approx(1.0)


def test_evaluate_synergy_reports_oracle_combiners_and_gain():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (30,), generator=g)
    logits = [torch.nn.functional.one_hot(p, 3).float() * 5 for p in (PREDS.repeat(1, 5))]
    report = evaluate_synergy(["A", "B", "C"], ScoreSet(logits, LABELS.repeat(5)), costs={"A": 1, "B": 2, "C": 3})
    r = report.results
    assert r["oracle_top1"] == pytest.approx(100.0) and r["best_single"]["backbone"] == "B"
    assert set(r["combinations"]) == {"mean_logits", "mean_probs", "majority_vote", "max_confidence", "min_entropy"}
    assert r["cascade_order"] == ["A", "B", "C"] and report.tables["subsets"][-1]["cost"] == 6.0
    with pytest.raises(ConfigError, match="labels"):
        evaluate_synergy(["A", "B"], ScoreSet(logits[:2], y[:7]))
    with pytest.raises(ConfigError, match=r"no cost given for backbone\(s\) \['C'\]"):
        evaluate_synergy(["A", "B", "C"], ScoreSet(logits, LABELS.repeat(5)), costs={"A": 1, "B": 2})


def test_model_cost_of_tiny_models_counts_parameters_and_flops():
    from conftest import tiny

    cost = model_cost("clipadapt-test-tiny-vit@none", batch=2, repeats=1)
    model = tiny()
    assert cost["params_image_M"] == pytest.approx(sum(p.numel() for p in model.visual.parameters()) / 1e6)
    # the patch embedding alone is a (width × 3·p²) matrix applied to every patch: a lower bound on the FLOPs
    conv = model.visual.conv1
    patches = (32 // conv.kernel_size[0]) ** 2
    assert cost["gflops_per_image"] * 1e9 >= 2 * patches * conv.weight.numel()
    assert cost["ms_per_image"] > 0 and cost["image_size"] == [32, 32]
    flops_only = model_cost("clipadapt-test-tiny-rn@none", measure_time=False)
    assert "ms_per_image" not in flops_only and flops_only["gflops_per_image"] > 0
    with pytest.raises(ConfigError, match="no-such-arch@openai: unknown open_clip architecture"):
        model_cost("no-such-arch@openai")


def test_subset_mean_probs_matches_a_literal_average_per_subset():
    g = torch.Generator().manual_seed(1)
    logits = [2 * torch.randn(37, 4, generator=g) for _ in range(3)]
    y = torch.randint(0, 4, (37,), generator=g)
    rows = subset_mean_probs(logits, y, [1.0, 2.0, 5.0], ["a", "b", "c"], chunk_rows=10)
    assert [r["combination"] for r in rows] == ["a+b", "a+c", "b+c", "a+b+c"]
    for r, subset in zip(rows, ([0, 1], [0, 2], [1, 2], [0, 1, 2])):
        right = 0
        for i in range(37):
            p = [sum(torch.softmax(logits[b][i], 0)[c].item() for b in subset) for c in range(4)]
            right += int(max(range(4), key=lambda c: p[c]) == y[i])
        assert r["top1"] == pytest.approx(100 * right / 37) and r["cost"] == sum([1.0, 2.0, 5.0][b] for b in subset)


@pytest.mark.parametrize("model, params_m, gflops", [("RN50@openai", 38.32, 12.22), ("ViT-B-32@openai", 87.85, 8.82)])
def test_model_cost_matches_open_clip_published_profile(model, params_m, gflops):
    # image_mparams / image_gflops of open_clip's docs/model_profile.csv; counted without any weights (offline)
    cost = model_cost(model, measure_time=False)
    assert cost["params_image_M"] == pytest.approx(params_m, abs=0.01)
    assert cost["gflops_per_image"] == pytest.approx(gflops, abs=0.01)


def test_real_clip_backbone_recovered_over_its_random_init_control(coco500, coco500_random_init):
    """Real CLIP ViT-B/16 (caption retrieval as 500-way classification) + the random-init control as a second
    backbone: averaging logits is hurt by the noise; the fitted combiners weight the real backbone back up.
    Combiner parameters are class-agnostic, so fitting on 250 captions and testing on the other 250 is valid."""
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    pairs = [coco500, coco500_random_init]
    logits = [ZeroShotClassifier().fit(text).predict_logits(image) for image, text in pairs]
    images = [image for image, _ in pairs]
    labels = torch.arange(500)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(0))
    held, test = perm[:250], perm[250:]
    report = evaluate_synergy(
        ["real", "random_init"],
        ScoreSet([z[test] for z in logits], labels[test], [e[test] for e in images]),
        heldout=ScoreSet([z[held] for z in logits], labels[held], [e[held] for e in images]),
        nlc_kwargs=dict(seed=0, lr=5e-3, batch_size=128, max_epochs=25, patience=5),
    )
    r = report.results
    real = r["accuracy"]["real"]
    assert real > 50 and r["accuracy"]["random_init"] < 2  # the data README: R@1 ~ 55 % vs chance
    combos = {k: v["top1"] for k, v in r["combinations"].items()}
    assert combos["mean_logits"] < real - 10
    for name in ("temperature_mean", "stacking"):
        assert combos[name] >= real - 1, name
    assert combos["nlc"] >= real - 5
    assert r["combinations"]["stacking"]["weights"]["real"] > 0.99


def test_linear_probe_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=g), torch.randint(0, 3, (20,), generator=g)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit_linear_probe(x, y, 3)
    assert torch.equal(torch.rand(3), expected)
