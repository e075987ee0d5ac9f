"""Every exported estimator follows the contract (STYLE.md): keyword-only hyper-parameters stored by __init__,
fit(...) returns self and sets attributes ending in '_', predict_logits before fit raises NotFittedError."""

import inspect

import pytest
import torch

import clipadapt.methods as methods
from clipadapt import NotFittedError

ESTIMATORS = [getattr(methods, name) for name in methods.__all__]


def _fit_args(cls):
    """Small valid inputs for each estimator family's fit and predict_logits."""
    g = torch.Generator().manual_seed(0)
    feats, text, labels = torch.randn(12, 8, generator=g), torch.randn(3, 8, generator=g), torch.arange(3).repeat(4)
    logits = [torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g)]
    if cls is methods.ZeroShotClassifier:
        return (text,), {}, (feats,)
    if cls is methods.DistributionNormalizer:
        return (feats, text), {}, (feats,)
    if issubclass(cls, methods.TipAdapter):
        return (feats, labels, text), {}, (feats,)
    if cls is methods.NeuralLogitController:
        embeds = [feats, feats.flip(1)]
        return (embeds, logits, labels), {}, (embeds, logits)
    return (logits, labels), {}, (logits,)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_init_takes_keyword_only_hyperparameters(cls):
    params = [p for p in inspect.signature(cls).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert all(p.kind is p.KEYWORD_ONLY for p in params), cls.__name__
    estimator = cls()
    for p in params:  # __init__ only stores them
        assert getattr(estimator, p.name) == p.default


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_predict_before_fit_raises_not_fitted(cls):
    _, _, predict_args = _fit_args(cls)
    with pytest.raises(NotFittedError, match=cls.__name__):
        cls().predict_logits(*predict_args)


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_fit_returns_self_and_sets_learned_attributes(cls):
    fit_args, fit_kwargs, predict_args = _fit_args(cls)
    kwargs = {"max_epochs": 2} if cls is methods.NeuralLogitController else {}
    kwargs.update({"epochs": 1} if cls is methods.TipAdapterF else {})
    kwargs.update({"n_samples": None} if cls is methods.DistributionNormalizer else {})
    estimator = cls(**kwargs)
    before = set(vars(estimator))
    assert estimator.fit(*fit_args, **fit_kwargs) is estimator
    learned = set(vars(estimator)) - before
    assert learned and all(name.endswith("_") for name in learned), sorted(learned)
    out = estimator.predict_logits(*predict_args)
    assert out.shape == (12, 3) and torch.isfinite(out).all()
