"""Every exported estimator follows the contract (STYLE.md): keyword-only hyper-parameters stored by __init__
(validated by fit), get_params() round-trips, fit(...) returns self and sets attributes ending in '_',
predict_logits before fit raises NotFittedError (static combiners have nothing to fit: they predict unfitted)."""

import inspect

import pytest
import torch

import clipadapt.methods as methods
from clipadapt import ConfigError, NotFittedError

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
def test_init_takes_keyword_only_hyperparameters_and_get_params_round_trips(cls):
    params = [p for p in inspect.signature(cls).parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert all(p.kind is p.KEYWORD_ONLY for p in params), cls.__name__
    estimator = cls()
    for p in params:  # __init__ only stores them
        assert getattr(estimator, p.name) == p.default
    given = {p.name: f"value-of-{p.name}" for p in params}  # any value: validating is fit's job
    assert cls(**given).get_params() == given and type(estimator)(**cls(**given).get_params()).get_params() == given
    assert list(estimator.get_params()) == [p.name for p in params]


@pytest.mark.parametrize("cls", ESTIMATORS, ids=lambda c: c.__name__)
def test_predict_before_fit_raises_not_fitted(cls):
    fit_args, _, predict_args = _fit_args(cls)
    if not getattr(cls, "requires_fit", True):  # a static combiner: an unfitted one predicts what a fitted one does
        assert torch.equal(cls().predict_logits(*predict_args), cls().fit(*fit_args).predict_logits(*predict_args))
        return
    with pytest.raises(NotFittedError, match=cls.__name__):
        cls().predict_logits(*predict_args)


INVALID = {  # one invalid hyper-parameter per estimator that validates one, and the error fit raises
    "DistributionNormalizer": ({"task": "ranking"}, "task must be one of"),
    "TemperatureScaledMean": ({"average": "median"}, "average must be 'logits' or 'probs'"),
    "NeuralLogitController": ({"val_fraction": 1.5}, r"val_fraction must be in \(0, 1\)"),
    "TipAdapterF": ({"epochs": 0}, "epochs >= 1"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_hyperparameters_raise_at_fit_not_at_init(name):
    cls = getattr(methods, name)
    params, message = INVALID[name]
    estimator = cls(**params)  # storing is not validating
    fit_args, fit_kwargs, _ = _fit_args(cls)
    with pytest.raises(ConfigError, match=message):
        estimator.fit(*fit_args, **fit_kwargs)
    assert not [k for k in vars(estimator) if k.endswith("_")]  # a refused fit learns nothing


def test_with_params_copies_the_fitted_state_and_refuses_unknown_names():
    fit_args, _, (feats,) = _fit_args(methods.TipAdapter)
    model = methods.TipAdapter(alpha=1.0).fit(*fit_args)
    other = model.with_params(alpha=0.0)  # alpha 0: the cache term vanishes, zero-shot remains
    assert model.alpha == 1.0 and other.keys_ is model.keys_
    assert torch.allclose(other.predict_logits(feats),
                          methods.ZeroShotClassifier().fit(fit_args[2]).predict_logits(feats))
    with pytest.raises(ConfigError, match="TipAdapter has no hyper-parameter 'keys_'"):
        model.with_params(keys_=None)


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
