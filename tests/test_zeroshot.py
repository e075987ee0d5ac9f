import numpy as np
import pytest
import torch

from clipadapt import NotFittedError, ZeroShotClassifier
from clipadapt.errors import ConfigError
from clipadapt.eval.metrics import topk_accuracy


def test_logits_equal_literal_formula():
    f, t = torch.randn(10, 8), torch.randn(4, 8)
    logits = ZeroShotClassifier().fit(t).predict_logits(f)
    expected = torch.empty(10, 4)
    for i in range(10):
        for c in range(4):
            expected[i, c] = 100 * torch.dot(f[i] / f[i].norm(), t[c] / t[c].norm())
    assert torch.allclose(logits, expected, atol=1e-4)


def test_views_averaged_before_normalisation():
    f, t = torch.randn(5, 3, 8), torch.randn(4, 8)
    clf = ZeroShotClassifier().fit(t)
    assert torch.allclose(clf.predict_logits(f), clf.predict_logits(f.mean(1)))


def test_predict_before_fit_is_clear_error():
    with pytest.raises(NotFittedError, match="ZeroShotClassifier is not fitted"):
        ZeroShotClassifier().predict_logits(torch.randn(2, 4))


def test_dimension_mismatch_is_clear_error():
    clf = ZeroShotClassifier().fit(torch.randn(3, 8))
    with pytest.raises(ConfigError, match="D=6 but class text embeddings has D=8"):
        clf.predict_logits(torch.randn(2, 6))


def test_topk_accuracy_against_brute_force():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 7, generator=g), torch.randint(0, 7, (50,), generator=g)
    acc = topk_accuracy(logits, labels, ks=(1, 3))
    order = np.argsort(-logits.numpy(), axis=1)
    top1 = np.mean([order[i, 0] == labels[i].item() for i in range(50)]) * 100
    top3 = np.mean([labels[i].item() in order[i, :3] for i in range(50)]) * 100
    assert acc["top1"] == pytest.approx(top1) and acc["top3"] == pytest.approx(top3)


def test_coco500_caption_classification_well_above_chance(coco500):
    image, caption = coco500
    acc = topk_accuracy(ZeroShotClassifier().fit(caption).predict_logits(image), torch.arange(500))
    # README of the data: image->text R@1 ~ 55 % (500-way); chance is 0.2 %
    assert 50.0 < acc["top1"] < 60.0


def test_coco500_random_init_control_is_at_chance(coco500_random_init):
    image, caption = coco500_random_init
    acc = topk_accuracy(ZeroShotClassifier().fit(caption).predict_logits(image), torch.arange(500))
    assert acc["top1"] < 2.0
