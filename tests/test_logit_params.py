"""Each model's own logit scale and bias (issue 16 item 3): stored in meta.json, used by zero-shot, Tip/Tip-X's
zero-shot term and DN; a feature directory without them keeps CLIP's 100 and no bias, and results say which."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _imagedata import make_images
from conftest import make_clustered_features, tiny

from clipadapt.cli import main
from clipadapt.encoders.encoder import model_logit_params
from clipadapt.errors import FeatureDirError
from clipadapt.eval.fewshot import FewShotConfig, fit_and_predict
from clipadapt.features import FeatureSet, FeatureSplit, LogitParams, logit_params, save_feature_dir
from clipadapt.features.pipeline import clear_encoder_memo, get_feature_set
from clipadapt.methods.dn import DistributionNormalizer
from clipadapt.methods.tip_adapter import TipAdapter
from clipadapt.methods.tip_x import TipX
from clipadapt.methods.zeroshot import ZeroShotClassifier

MODEL = "clipadapt-test-tiny-vit"


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _literal_zero_shot(image, text, scale, bias):
    """s · cos(f, w_c) + b, one (row, class) at a time."""
    w = _unit(text)
    out = torch.empty(image.shape[0], text.shape[0])
    for i in range(image.shape[0]):
        f = _unit(image[i])
        for c in range(text.shape[0]):
            out[i, c] = scale * float((f * w[c]).sum()) + bias
    return out


def test_zero_shot_uses_scale_and_bias():
    text, image, _ = make_clustered_features(num_classes=4, per_class=3, dim=8)
    logits = ZeroShotClassifier(logit_scale=117.3, logit_bias=-12.5).fit(text).predict_logits(image)
    torch.testing.assert_close(logits, _literal_zero_shot(image, text, 117.3, -12.5), rtol=1e-5, atol=1e-4)


def test_zero_bias_is_bitwise_the_unbiased_formula():
    text, image, _ = make_clustered_features(num_classes=4, per_class=3, dim=8)
    plain = 100.0 * _unit(image) @ ZeroShotClassifier().fit(text).classifier_.T
    assert torch.equal(ZeroShotClassifier().fit(text).predict_logits(image), plain)
    assert torch.equal(ZeroShotClassifier(logit_bias=0.0).fit(text).predict_logits(image), plain)


def test_tip_and_tipx_zero_shot_term_carries_scale_and_bias():
    text, keys, key_labels = make_clustered_features(num_classes=3, per_class=2, dim=8, seed=3)
    _, test, _ = make_clustered_features(num_classes=3, per_class=4, dim=8, seed=4)
    tip = TipAdapter(alpha=2.0, beta=3.0, logit_scale=10.0, logit_bias=-4.0).fit(keys, key_labels, text)
    f, k = _unit(test), _unit(keys)
    values = torch.nn.functional.one_hot(key_labels, 3).float()
    cache = torch.exp(-3.0 * (1 - f @ k.T)) @ values
    expected = _literal_zero_shot(test, text, 10.0, -4.0) + 2.0 * cache
    torch.testing.assert_close(tip.predict_logits(test), expected, rtol=1e-5, atol=1e-4)
    # Tip-X: the bias shifts every class of every row by the same b (only the zero-shot term has it)
    tx_b = TipX(alpha=2.0, beta=3.0, gamma=0.5, logit_scale=10.0, logit_bias=-4.0).fit(keys, key_labels, text)
    tx_0 = TipX(alpha=2.0, beta=3.0, gamma=0.5, logit_scale=10.0).fit(keys, key_labels, text)
    torch.testing.assert_close(tx_b.predict_logits(test), tx_0.predict_logits(test) - 4.0, rtol=0, atol=1e-5)


def test_dn_classification_logits_carry_scale_and_bias():
    text, image, _ = make_clustered_features(num_classes=3, per_class=4, dim=8)
    dn = DistributionNormalizer(lam=0.5, n_samples=None, logit_scale=50.0, logit_bias=3.0).fit(image, text)
    mu = image.mean(0)
    w = _unit(text - 0.5 * text.mean(0))  # (C, D) raw text: c_k = norm(t_k − λμ_txt), μ_txt the mean of raw t_k
    expected = torch.stack([torch.stack([50.0 * (_unit(x - 0.5 * mu) * w[c]).sum() + 3.0 for c in range(3)])
                            for x in image])
    torch.testing.assert_close(dn.predict_logits(image), expected, rtol=1e-5, atol=1e-4)


def test_logit_params_from_meta_and_default():
    default = logit_params({"classnames": ["a"]})
    assert (default.scale, default.bias) == (100.0, 0.0) and "default" in default.source
    learned = logit_params({"logit_scale": 117.33, "logit_bias": -12.9, "model": "m"})
    assert (learned.scale, learned.bias) == (117.33, -12.9) and "learned" in learned.source
    assert logit_params({"logit_scale": 50, "logit_bias": None}).bias == 0.0
    for bad in ({"logit_scale": -1}, {"logit_scale": "100"}, {"logit_scale": float("nan")},
                {"logit_scale": 10, "logit_bias": "x"}, {"logit_bias": 2.0}):
        with pytest.raises(FeatureDirError, match="logit_"):
            logit_params(bad)


def _feature_dir(tmp_path, meta):
    text, image, labels = make_clustered_features(num_classes=3, per_class=4, dim=8)
    fs = FeatureSet(classnames=["a", "b", "c"], text=text, splits={"test": FeatureSplit(image, labels)},
                    meta={"model": "synthetic", **meta})
    return save_feature_dir(fs, tmp_path / "feats"), image, text


def test_eval_zeroshot_uses_and_reports_the_recorded_values(tmp_path):
    directory, image, text = _feature_dir(tmp_path, {"logit_scale": 20.0, "logit_bias": -7.0})
    logits_file = tmp_path / "logits.npy"
    assert main(["eval", "--features", str(directory), "--method", "zeroshot", "--out", str(tmp_path / "out"),
                 "--save-logits", str(logits_file)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["hyperparameters"]["logit_scale"] == 20.0 and results["hyperparameters"]["logit_bias"] == -7.0
    assert "learned" in results["hyperparameters"]["logit_source"]
    import numpy as np

    torch.testing.assert_close(torch.from_numpy(np.load(logits_file)), _literal_zero_shot(image, text, 20.0, -7.0),
                               rtol=1e-5, atol=1e-4)


def test_eval_without_recorded_values_says_default_100(tmp_path):
    directory, _, _ = _feature_dir(tmp_path, {})
    assert main(["eval", "--features", str(directory), "--method", "dn", "--dn-source", "test", "--dn-samples", "all",
                 "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    hyper = results["hyperparameters"]
    assert (hyper["logit_scale"], hyper["logit_bias"]) == (100.0, 0.0) and "default" in hyper["logit_source"]
    assert results["features"]["logit_source"] == hyper["logit_source"]


def test_fewshot_zero_shot_and_tip_get_the_feature_sets_values():
    text, keys, key_labels = make_clustered_features(num_classes=3, per_class=2, dim=8, seed=3)
    _, val, val_labels = make_clustered_features(num_classes=3, per_class=3, dim=8, seed=5)
    _, test, _ = make_clustered_features(num_classes=3, per_class=3, dim=8, seed=6)
    config = FewShotConfig(shots=[2], seeds=[1], methods=["zeroshot", "tip"],
                           grids={"tip": {"alpha": [1.0], "beta": [1.0]}})
    logit = LogitParams(30.0, 5.0, "test")
    zs = fit_and_predict("zeroshot", config, text, None, FeatureSplit(val, val_labels), test, seed=1, logit=logit)
    torch.testing.assert_close(zs.test_logits, _literal_zero_shot(test, text, 30.0, 5.0), rtol=1e-5, atol=1e-4)
    tip = fit_and_predict("tip", config, text, FeatureSplit(keys, key_labels), FeatureSplit(val, val_labels), test,
                          seed=1, logit=logit)
    assert tip.hyperparameters["logit_scale"] == 30.0 and tip.hyperparameters["logit_bias"] == 5.0
    cache = torch.exp(-(1 - _unit(test) @ _unit(keys).T)) @ torch.nn.functional.one_hot(key_labels, 3).float()
    torch.testing.assert_close(tip.test_logits, _literal_zero_shot(test, text, 30.0, 5.0) + cache, rtol=1e-5, atol=1e-4)


def test_model_logit_params_read_the_learned_values():
    model = tiny()
    assert model_logit_params(model) == {"logit_scale": 100.0, "logit_bias": None}  # test configs: init ln 100
    with torch.no_grad():
        model.logit_scale.fill_(math.log(50.0))
        model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
    assert model_logit_params(model) == {"logit_scale": 50.0, "logit_bias": -10.0}


def test_extraction_records_the_models_values_and_old_text_entries_are_refreshed(tmp_path):
    clear_encoder_memo()
    data = {"test": make_images(tmp_path, 3, split="test")}
    fs = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert (fs.meta["logit_scale"], fs.meta["logit_bias"]) == (100.0, None)
    entry_meta = json.loads((tmp_path / "c" / "images").glob("*/meta.json").__next__().read_text())
    assert entry_meta["logit_scale"] == 100.0 and "logit_bias" in entry_meta
    # a text entry written before logit scales were recorded: its manifest has no 'logit' -> re-encoded once
    manifest_file = next((tmp_path / "c" / "text").glob("*/manifest.json"))
    manifest = json.loads(manifest_file.read_text())
    del manifest["logit"]
    manifest_file.write_text(json.dumps(manifest))
    clear_encoder_memo()
    again = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert again.meta["logit_scale"] == 100.0 and again.meta["encoder_loaded"]
    assert json.loads(manifest_file.read_text())["logit"] == {"logit_scale": 100.0, "logit_bias": None}
    clear_encoder_memo()
