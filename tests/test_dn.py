"""DistributionNormalizer against the paper formula written out (docs/methods.md §2)."""

import warnings

import pytest
import torch

from clipadapt import NotFittedError
from clipadapt.errors import ConfigError
from clipadapt.methods.dn import DistributionNormalizer, FewerSamplesWarning
from clipadapt.methods.zeroshot import ZeroShotClassifier


def _unit(v):
    return v / v.norm()


def _data(seed=0, n=30, c=4, d=8, m=12):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) * 3 + 1, torch.randn(c, d, generator=g) + 0.5,
            torch.randn(m, d, generator=g) * 2 - 0.3)


def test_classification_default_text_mean_is_mean_of_raw_prompt_embeddings():
    """docs/methods.md §2: μ_txt = mean of all class-prompt embeddings, subtracted from the RAW text, then
    normalised."""
    pool, text, _ = _data()
    test = torch.randn(7, 8) * 2 + 1
    lam = 0.3
    dn = DistributionNormalizer(lam=lam, n_samples=None).fit(pool, text)
    logits = dn.predict_logits(test)
    mu_img = sum(pool[i] for i in range(pool.shape[0])) / pool.shape[0]  # mean of RAW image embeddings
    mu_txt = sum(text[k] for k in range(4)) / 4  # mean of RAW prompt embeddings (one prompt per class)
    expected = torch.empty(7, 4)
    for i in range(7):
        for k in range(4):
            expected[i, k] = 100 * torch.dot(_unit(test[i] - lam * mu_img), _unit(text[k] - lam * mu_txt))
    assert dn.text_mean == "prompts" and dn.n_text_samples_ == 4
    assert torch.allclose(dn.text_mean_, mu_txt, atol=1e-6)
    assert torch.allclose(logits, expected, atol=1e-4)


def test_classification_prompts_text_mean_with_templates_subtracts_before_ensembling():
    """(C, T, D): μ_txt over every class × template prompt (raw); each prompt minus λμ_txt, normalised, averaged,
    re-normalised (the §1 prompt ensemble of the DN'd prompts)."""
    g = torch.Generator().manual_seed(4)
    text = torch.randn(3, 5, 6, generator=g) * 2 + 0.7  # (C, T, D), raw norms vary
    pool, test, lam = torch.randn(20, 6, generator=g) + 1, torch.randn(4, 6, generator=g), 0.25
    dn = DistributionNormalizer(lam=lam, n_samples=None).fit(pool, text)
    mu_txt = sum(text[k, t] for k in range(3) for t in range(5)) / 15
    mu_img = sum(pool[i] for i in range(20)) / 20
    rows = [_unit(sum(_unit(text[k, t] - lam * mu_txt) for t in range(5)) / 5) for k in range(3)]
    expected = torch.tensor([[100 * float(_unit(test[i] - lam * mu_img) @ rows[k]) for k in range(3)]
                             for i in range(4)])
    assert dn.n_text_samples_ == 15
    assert torch.allclose(dn.text_mean_, mu_txt, atol=1e-5)
    assert torch.allclose(dn.predict_logits(test), expected, atol=1e-4)
    assert torch.allclose(dn.transform_text(text), torch.stack(rows), atol=1e-6)


def test_classification_classes_text_mean_equals_literal_formula():
    """text_mean='classes': μ_txt is the mean of the prompt-ensembled class rows, subtracted from those rows."""
    pool, text, _ = _data()
    test = torch.randn(7, 8) * 2 + 1
    lam = 0.3
    logits = DistributionNormalizer(lam=lam, n_samples=None, text_mean="classes").fit(pool, text).predict_logits(test)
    mu_img = sum(pool[i] for i in range(pool.shape[0])) / pool.shape[0]  # mean of RAW image embeddings
    classes = [_unit(text[k]) for k in range(4)]  # class embeddings (C, D) text: norm(t_k)
    mu_txt = sum(classes) / 4
    expected = torch.empty(7, 4)
    for i in range(7):
        for k in range(4):
            expected[i, k] = 100 * torch.dot(_unit(test[i] - lam * mu_img), _unit(classes[k] - lam * mu_txt))
    assert torch.allclose(logits, expected, atol=1e-4)


def test_classification_classes_text_mean_is_mean_of_prompt_ensembled_classes():
    g = torch.Generator().manual_seed(1)
    text = torch.randn(3, 5, 6, generator=g)  # (C, T, D)
    dn = DistributionNormalizer(n_samples=None, text_mean="classes").fit(torch.randn(10, 6, generator=g), text)
    classes = []
    for k in range(3):
        avg = sum(_unit(text[k, t]) for t in range(5)) / 5
        classes.append(_unit(avg))
    assert torch.allclose(dn.text_mean_, sum(classes) / 3, atol=1e-6)
    assert dn.n_text_samples_ == 3


def test_text_mean_variants_agree_on_unit_single_template_text():
    """With unit-norm text and one template per class (coco500's captions) the two readings coincide."""
    pool, text, _ = _data()
    text = text / text.norm(dim=1, keepdim=True)
    test = torch.randn(5, 8)
    a = DistributionNormalizer(n_samples=None, text_mean="prompts").fit(pool, text).predict_logits(test)
    b = DistributionNormalizer(n_samples=None, text_mean="classes").fit(pool, text).predict_logits(test)
    assert torch.allclose(a, b, atol=1e-5)


def test_unknown_text_mean_is_clear_error():
    pool, text, _ = _data()
    with pytest.raises(ConfigError, match="text_mean must be one of"):
        DistributionNormalizer(text_mean="templates").fit(pool, text)


@pytest.mark.parametrize("task", ["retrieval", "caption"])
def test_retrieval_scores_equal_literal_formula_without_renormalisation(task):
    pool, _, captions = _data(2)
    img, txt = torch.randn(5, 8) + 2, torch.randn(6, 8) - 1
    lam = 0.5
    dn = DistributionNormalizer(lam=lam, n_samples=None, task=task).fit(pool, captions)
    mu_img = sum(_unit(pool[i]) for i in range(pool.shape[0])) / pool.shape[0]  # mean of NORMALISED embeddings
    mu_txt = sum(_unit(captions[j]) for j in range(captions.shape[0])) / captions.shape[0]
    expected = torch.empty(5, 6)
    for i in range(5):
        for j in range(6):
            expected[i, j] = torch.dot(_unit(img[i]) - lam * mu_img, _unit(txt[j]) - lam * mu_txt)
    assert torch.allclose(dn.score(img, txt), expected, atol=1e-5)


def test_lambda_zero_reproduces_plain_clip_exactly():
    pool, text, captions = _data(3)
    test = torch.randn(9, 8)
    plain = ZeroShotClassifier().fit(text).predict_logits(test)
    assert torch.allclose(DistributionNormalizer(lam=0.0, n_samples=None).fit(pool, text).predict_logits(test),
                          plain, atol=1e-5)
    cos = torch.stack([torch.stack([torch.dot(_unit(a), _unit(b)) for b in captions]) for a in test])
    assert torch.allclose(DistributionNormalizer(lam=0.0, task="retrieval",
                                                 n_samples=None).fit(pool, captions).score(test, captions),
                          cos, atol=1e-5)


def test_candidate_mean_does_not_change_ranking():
    g = torch.Generator().manual_seed(4)
    queries, gallery = torch.randn(20, 16, generator=g), torch.randn(50, 16, generator=g)
    pool_q = torch.randn(40, 16, generator=g) + 1.5
    ranks = []
    for shift in (0.0, 3.0, -2.0):  # three very different candidate-side (text) pools, same query (image) pool
        pool_g = torch.randn(40, 16, generator=g) + shift
        dn = DistributionNormalizer(lam=0.5, n_samples=None, task="retrieval").fit(pool_q, pool_g)
        ranks.append(dn.score(queries, gallery).argsort(dim=1))
    assert torch.equal(ranks[0], ranks[1]) and torch.equal(ranks[0], ranks[2])


def test_query_mean_can_change_ranking():
    g = torch.Generator().manual_seed(5)
    queries, gallery = torch.randn(20, 16, generator=g), torch.randn(50, 16, generator=g)
    pool_g = torch.randn(40, 16, generator=g)
    a = DistributionNormalizer(lam=0.5, n_samples=None,
                               task="retrieval").fit(torch.randn(40, 16, generator=g) + 2, pool_g)
    b = DistributionNormalizer(lam=0.5, n_samples=None,
                               task="retrieval").fit(torch.randn(40, 16, generator=g) - 2, pool_g)
    assert not torch.equal(a.score(queries, gallery).argmax(1), b.score(queries, gallery).argmax(1))


def test_seeded_draw_uses_requested_rows_and_is_reproducible():
    pool, text, _ = _data(n=200)
    a = DistributionNormalizer(n_samples=10, seed=7).fit(pool, text)
    b = DistributionNormalizer(n_samples=10, seed=7).fit(pool, text)
    c = DistributionNormalizer(n_samples=10, seed=8).fit(pool, text)
    assert a.n_image_samples_ == 10 and torch.equal(a.image_mean_, b.image_mean_)
    assert not torch.equal(a.image_mean_, c.image_mean_)
    # the mean is that of exactly 10 distinct rows of the pool: find them by brute force
    picked = torch.randperm(200, generator=torch.Generator().manual_seed(7))[:10]
    assert torch.allclose(a.image_mean_, pool[picked].mean(0), atol=1e-6)


def test_fewer_samples_than_asked_warns_and_records_number_used():
    pool, text, _ = _data(n=30)
    with pytest.warns(FewerSamplesWarning, match="asked for 100 unlabeled images but only 30"):
        dn = DistributionNormalizer(n_samples=100).fit(pool, text)
    assert dn.n_image_samples_ == 30
    assert torch.allclose(dn.image_mean_, pool.mean(0), atol=1e-6)


def test_zero_samples_is_clear_error():
    _, text, _ = _data()
    with pytest.raises(ConfigError, match="0 were given"):
        DistributionNormalizer().fit(torch.empty(0, 8), text)
    with pytest.raises(ConfigError, match="n_samples must be >= 1"):
        DistributionNormalizer(n_samples=0).fit(torch.randn(5, 8), text)


def test_tta_views_averaged_raw_before_dn():
    g = torch.Generator().manual_seed(6)
    pool_views, text = torch.randn(20, 4, 8, generator=g), torch.randn(3, 8, generator=g)
    test_views = torch.randn(6, 4, 8, generator=g)
    dn = DistributionNormalizer(n_samples=None).fit(pool_views, text)
    assert torch.allclose(dn.image_mean_, pool_views.reshape(-1, 8).mean(0), atol=1e-6)
    mean_view = torch.stack([sum(test_views[i, v] for v in range(4)) / 4 for i in range(6)])
    assert torch.allclose(dn.predict_logits(test_views), dn.predict_logits(mean_view), atol=1e-5)


def test_use_before_fit_and_wrong_task_are_clear_errors():
    with pytest.raises(NotFittedError, match="DistributionNormalizer is not fitted"):
        DistributionNormalizer().predict_logits(torch.randn(2, 4))
    pool, _, captions = _data()
    dn = DistributionNormalizer(task="retrieval", n_samples=None).fit(pool, captions)
    with pytest.raises(ConfigError, match="predict_logits is for task='classification'"):
        dn.predict_logits(pool)
    with pytest.raises(ConfigError, match="task must be one of"):
        DistributionNormalizer(task="detection", n_samples=None).fit(pool, captions)


def test_dimension_mismatch_is_clear_error():
    pool, text, _ = _data()
    dn = DistributionNormalizer(n_samples=None).fit(pool, text)
    with pytest.raises(ConfigError, match="D=5 but the fitted DN image mean has D=8"):
        dn.predict_logits(torch.randn(2, 5))


def test_no_warning_when_enough_samples():
    pool, text, _ = _data(n=150)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DistributionNormalizer(n_samples=100).fit(pool, text)


def test_coco500_captions_as_classes_dn_effect_reported(coco500, coco500_random_init, capsys):
    """Real CLIP embeddings, 400 captions as 400 classes; μ_img from 100 held-out images (their labels unused)."""
    from clipadapt.eval.metrics import topk_accuracy

    out = {}
    for name, (image, caption) in (("clip", coco500), ("random-init", coco500_random_init)):
        labels = torch.arange(400)
        plain = topk_accuracy(ZeroShotClassifier().fit(caption[100:]).predict_logits(image[100:]), labels)["top1"]
        dn, dn_classes = ({lam: topk_accuracy(DistributionNormalizer(lam=lam, n_samples=None, text_mean=mean)
                                              .fit(image[:100], caption[100:]).predict_logits(image[100:]),
                                              labels)["top1"]
                           for lam in (0.25, 0.5)} for mean in ("prompts", "classes"))
        assert dn == dn_classes  # unit-norm rows, one caption per class: both μ_txt readings give the same figures
        out[name] = (plain, dn)
    with capsys.disabled():
        print(f"\ncoco500 400-way caption classification top-1: {out}")
    plain, dn = out["clip"]
    # plain equals image→text R@1 on the same 400 pairs (one caption each): 56.75; measured DN 57.00 / 58.25
    assert plain == pytest.approx(56.75) and dn[0.25] >= plain and dn[0.5] >= plain
    assert out["random-init"][0] < 1.5 and max(out["random-init"][1].values()) < 1.5  # control at chance (0.25 %)
