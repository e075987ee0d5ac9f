"""Tip-Adapter, Tip-Adapter-F, Tip-X and their ++ variants against literal computations of docs/methods.md §3-§5."""

from __future__ import annotations

import math

import pytest
import torch

from clipadapt.errors import ConfigError, NotFittedError
from clipadapt.methods.tip_adapter import TipAdapter, TipAdapterF
from clipadapt.methods.tip_x import TipX
from clipadapt.methods.zeroshot import ZeroShotClassifier

C, D, K, V, T = 4, 8, 3, 2, 3


def _data(seed: int = 0, n_test: int = 6):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(C, T, D, generator=g, dtype=torch.float64)
    keys = torch.randn(C * K, V, D, generator=g, dtype=torch.float64)
    key_labels = torch.arange(C).repeat_interleave(K)
    test = torch.randn(n_test, D, generator=g, dtype=torch.float64)
    return text, keys, key_labels, test


def _norm(v):
    norm = math.sqrt(sum(y * y for y in v))
    return [x / norm for x in v]


def _literal_classifier(text):
    rows = []
    for c in range(text.shape[0]):
        temps = [_norm(text[c, t].tolist()) for t in range(text.shape[1])]
        mean = [sum(tt[d] for tt in temps) / len(temps) for d in range(text.shape[2])]
        rows.append(_norm(mean))
    return rows


def _literal_keys(keys):
    return [_norm([sum(keys[j, v, d].item() for v in range(keys.shape[1])) / keys.shape[1]
                   for d in range(keys.shape[2])])
            for j in range(keys.shape[0])]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _literal_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _softmax(z):
    m = max(z)
    e = [math.exp(x - m) for x in z]
    return [x / sum(e) for x in e]


def _literal_tip(text, keys, labels, test, alpha, beta, adapted_keys=None, adapted_test=None):
    W, F = _literal_classifier(text), _literal_keys(keys)
    Fa = _literal_keys(adapted_keys) if adapted_keys is not None else F
    out = []
    for i in range(test.shape[0]):
        f = _norm(test[i].tolist())
        fa = _norm(adapted_test[i].tolist()) if adapted_test is not None else f
        row = []
        for c in range(len(W)):
            cache = sum(math.exp(-beta * (1 - _dot(fa, Fa[j]))) for j in range(len(F)) if labels[j] == c)
            row.append(100 * _dot(f, W[c]) + alpha * cache)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def _literal_tipx(text, keys, labels, test, alpha, beta, gamma, tau=0.5, adapted_keys=None, adapted_test=None):
    W, F = _literal_classifier(text), _literal_keys(keys)
    Fa = _literal_keys(adapted_keys) if adapted_keys is not None else F
    fs = [_norm(test[i].tolist()) for i in range(test.shape[0])]
    fas = [_norm(adapted_test[i].tolist()) for i in range(test.shape[0])] if adapted_test is not None else fs
    sig = lambda v: _softmax([_dot(v, w) / tau for w in W])  # noqa: E731
    M = [[_literal_kl(sig(f), sig(k)) for k in F] for f in fs]
    Tm = [[_dot(f, k) for k in Fa] for f in fas]
    m_lo, m_hi = min(map(min, M)), max(map(max, M))
    t_lo, t_hi = min(map(min, Tm)), max(map(max, Tm))
    psi = lambda m: t_lo + (m - m_lo) * (t_hi - t_lo) / (m_hi - m_lo)  # noqa: E731
    out = []
    for i, f in enumerate(fs):
        row = []
        for c in range(len(W)):
            idx = [j for j in range(len(F)) if labels[j] == c]
            cache = sum(math.exp(-beta * (1 - Tm[i][j])) for j in idx)
            kl = sum(psi(M[i][j]) for j in idx)
            row.append(100 * _dot(f, W[c]) + alpha * cache - gamma * kl)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def test_tip_adapter_logits_equal_literal_formula():
    text, keys, labels, test = _data()
    got = TipAdapter(alpha=1.7, beta=2.5).fit(keys, labels, text).predict_logits(test)
    torch.testing.assert_close(got, _literal_tip(text, keys, labels.tolist(), test, 1.7, 2.5), rtol=1e-10, atol=1e-10)


def test_tip_adapter_averages_test_views_before_normalising():
    text, keys, labels, _ = _data()
    test_views = torch.randn(5, 3, D, dtype=torch.float64)
    model = TipAdapter(alpha=1.0, beta=1.0).fit(keys, labels, text)
    expected = _literal_tip(text, keys, labels.tolist(), test_views.mean(1), 1.0, 1.0)
    torch.testing.assert_close(model.predict_logits(test_views), expected, rtol=1e-10, atol=1e-10)


def test_ta_plus_plus_uses_adapted_features_only_in_the_affinity():
    text, keys, labels, test = _data()
    adapted_keys, adapted_test = keys + 0.5 * torch.randn_like(keys), test + 0.5 * torch.randn_like(test)
    model = TipAdapter(alpha=2.0, beta=3.0).fit(keys, labels, text, adapted_keys=adapted_keys)
    expected = _literal_tip(text, keys, labels.tolist(), test, 2.0, 3.0, adapted_keys, adapted_test)
    torch.testing.assert_close(model.predict_logits(test, adapted_test), expected, rtol=1e-10, atol=1e-10)


def test_tip_x_logits_equal_literal_loop():
    text, keys, labels, test = _data(1)
    got = TipX(alpha=1.3, beta=4.0, gamma=0.7).fit(keys, labels, text).predict_logits(test)
    expected = _literal_tipx(text, keys, labels.tolist(), test, 1.3, 4.0, 0.7)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_tx_plus_plus_takes_psi_range_from_adapted_affinities_and_kl_from_original():
    text, keys, labels, test = _data(2)
    adapted_keys, adapted_test = 2 * keys + torch.randn_like(keys), 2 * test + torch.randn_like(test)
    model = TipX(alpha=0.9, beta=2.0, gamma=1.5, tau=0.7).fit(keys, labels, text, adapted_keys=adapted_keys)
    expected = _literal_tipx(text, keys, labels.tolist(), test, 0.9, 2.0, 1.5, 0.7, adapted_keys, adapted_test)
    torch.testing.assert_close(model.predict_logits(test, adapted_test), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make", [lambda: TipAdapter(alpha=0.0, beta=3.0),
                                  lambda: TipX(alpha=0.0, beta=3.0, gamma=0.0)])
def test_alpha_zero_is_zero_shot_exactly(make):
    text, keys, labels, test = _data(3)
    text, keys, test = text.float(), keys.float(), test.float()
    zero_shot = ZeroShotClassifier().fit(text).predict_logits(test)
    assert torch.equal(make().fit(keys, labels, text).predict_logits(test), zero_shot)


def test_predict_before_fit_is_a_clear_error():
    with pytest.raises(NotFittedError, match="TipX is not fitted"):
        TipX().predict_logits(torch.randn(2, D))


def test_cache_and_test_from_different_models_is_a_clear_error():
    text, keys, labels, _ = _data()
    model = TipAdapter().fit(keys, labels, text)
    with pytest.raises(ConfigError, match="D=16 .* D=8"):
        model.predict_logits(torch.randn(2, 16, dtype=torch.float64))
    with pytest.raises(ConfigError, match="cache keys has D=5"):
        TipAdapter().fit(torch.randn(12, 5), labels, text)


def test_plus_plus_cache_needs_adapted_test_features():
    text, keys, labels, test = _data()
    model = TipAdapter().fit(keys, labels, text, adapted_keys=keys.clone())
    with pytest.raises(ConfigError, match="needs adapted_features"):
        model.predict_logits(test)
    with pytest.raises(ConfigError, match="rows"):
        model.predict_logits(test, test[:2])


def _separable(seed, n_per_class, views=None, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=g)
    y = torch.arange(C).repeat_interleave(n_per_class)
    shape = (y.numel(), views, D) if views else (y.numel(), D)
    x = (protos[y].unsqueeze(1) if views else protos[y]) + noise * torch.randn(*shape, generator=g)
    return protos, x, y


def test_tip_adapter_f_with_zero_lr_keeps_the_training_free_cache():
    text, keys, labels, test = (t.float() if t.is_floating_point() else t for t in _data())
    tuned = TipAdapterF(epochs=2, lr=0.0, weight_decay=0.0).fit(keys, labels, text)
    plain = TipAdapter().fit(keys, labels, text)
    torch.testing.assert_close(tuned.predict_logits(test), plain.predict_logits(test))


def test_tip_adapter_f_keeps_the_epoch_with_best_validation_accuracy():
    protos, train, y = _separable(0, 8, views=3)
    _, val, yv = _separable(1, 10)
    model = TipAdapterF(epochs=6, lr=0.05, batch_size=8, seed=1).fit(train, y, protos, val_features=val, val_labels=yv)
    history = model.val_history_
    assert len(history) == 6
    first_best = next(i for i, a in enumerate(history) if a == max(history)) + 1
    assert model.best_epoch_ == first_best
    acc = 100.0 * (model.predict_logits(val).argmax(1) == yv).float().mean().item()
    assert acc == pytest.approx(max(history))


def test_tip_adapter_f_training_moves_keys_and_lowers_training_loss():
    protos, train, y = _separable(2, 8, noise=2.0)
    base = TipAdapter().fit(train, y, protos)
    tuned = TipAdapterF(epochs=20, lr=0.01, batch_size=16).fit(train, y, protos)
    loss = lambda m: torch.nn.functional.cross_entropy(m.predict_logits(train), y).item()  # noqa: E731
    assert not torch.equal(tuned.keys_, base.keys_)
    assert loss(tuned) < loss(base)
