"""Finite embeddings of any magnitude normalise without overflow (issue 12, item 6): × 1e38 used to turn every
logit into 0 (norm = inf) and top-1 into chance, silently."""

from __future__ import annotations

import math

import pytest
import torch

from clipadapt.errors import ConfigError
from clipadapt.methods.dn import DistributionNormalizer
from clipadapt.methods.zeroshot import ZeroShotClassifier
from clipadapt.ops import l2_normalize, pool_views, safe_mean


def _unit_by_loop(row):
    peak = max(abs(float(v)) for v in row)
    scaled = [float(v) / peak for v in row]
    n = math.sqrt(sum(v * v for v in scaled))
    return [v / n for v in scaled]


@pytest.mark.parametrize("scale", [1e38, 1e30, 1e-30, 1e-40])
def test_l2_normalize_survives_extreme_magnitudes(scale):
    torch.manual_seed(0)
    x = torch.rand(4, 16) * 2 - 1  # |x| <= 1, so x * 1e38 is finite in float32
    big = (x * scale).float()
    assert torch.isfinite(big).all()
    got = l2_normalize(big)
    for i in range(4):
        assert got[i].tolist() == pytest.approx(_unit_by_loop(big[i].double()), abs=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_zero_rows_stay_zero_and_inf_is_refused():
    x = torch.zeros(2, 3)
    x[1] = torch.tensor([1e38, 2e38, 0.0])
    out = l2_normalize(x)
    assert out[0].tolist() == [0.0, 0.0, 0.0]
    assert out[1].tolist() == pytest.approx([1 / math.sqrt(5), 2 / math.sqrt(5), 0.0], abs=1e-6)
    with pytest.raises(ConfigError, match="inf or nan"):
        l2_normalize(torch.tensor([[float("inf"), 1.0]]))


def test_safe_mean_and_view_pooling_do_not_overflow():
    x = torch.full((1000, 3), 3e38)
    assert torch.isinf(x.mean(0)).all()  # the plain float32 mean overflows
    assert safe_mean(x, 0).tolist() == pytest.approx([3e38] * 3, rel=1e-5)
    views = torch.full((2, 10, 3), 3e38)
    assert pool_views(views).flatten().tolist() == pytest.approx([3e38] * 6, rel=1e-5)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(0)
    text = torch.randn(5, 32, generator=g)
    labels = torch.arange(5).repeat(20)
    image = text[labels] + 0.3 * torch.randn(100, 32, generator=g)
    pool = text[torch.arange(5).repeat(10)] + 0.3 * torch.randn(50, 32, generator=g)
    peak = max(float(t.abs().max()) for t in (text, image, pool))  # |values| <= 1: finite after × 1e38
    return text / peak, image / peak, labels, pool / peak


def test_zero_shot_and_dn_top1_unchanged_by_a_1e38_scale(problem):
    text, image, labels, pool = problem
    for scale in (1.0, 1e38):
        zs = ZeroShotClassifier().fit(text * scale).predict_logits(image * scale)
        dn = DistributionNormalizer(lam=0.25, n_samples=None).fit(pool * scale, text * scale)
        dn_logits = dn.predict_logits(image * scale)
        assert torch.isfinite(zs).all() and torch.isfinite(dn_logits).all()
        if scale == 1.0:
            ref_zs, ref_dn = zs, dn_logits
    assert torch.allclose(zs, ref_zs, atol=1e-3)
    assert torch.allclose(dn_logits, ref_dn, atol=1e-3)
    assert (ref_zs.argmax(1) == labels).float().mean() > 0.9


def test_dn_refuses_a_non_finite_lambda(problem):
    text, image, labels, pool = problem
    for lam in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="lam must be a finite number"):
            DistributionNormalizer(lam=lam).fit(pool, text)
