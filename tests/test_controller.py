"""The Neural Logit Controller (docs/methods.md §6): formula, learning, seeding, and that it never reads test labels."""

import inspect

import numpy as np
import pytest
import torch
from _synergy_data import informative_and_noisy, top1

from clipadapt.errors import ConfigError, NotFittedError
from clipadapt.eval.synergy_combiners import ScoreSet, fit_combiners, predict_combiners
from clipadapt.methods.ensembles import MeanLogits
from clipadapt.methods.logit_controller import NeuralLogitController

FAST = dict(lr=5e-3, batch_size=128, max_epochs=60, patience=10)  # paper lr 2e-4: same optimum, ~20x the steps


def test_combined_logits_are_sum_of_logits_over_per_sample_temperatures():
    logits, emb, y = informative_and_noisy(40, seed=2, num_classes=4)
    nlc = NeuralLogitController(max_epochs=3, seed=0).fit(emb, logits, y)
    tau = nlc.temperatures(emb)
    out = nlc.predict_logits(emb, logits)
    assert tau.shape == (40, 2) and (tau > 0).all()
    for i in range(40):
        for c in range(4):
            expected = sum(logits[b][i, c].item() / tau[i, b].item() for b in range(2))
            assert out[i, c].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_starts_at_the_mean_of_logits_before_training():
    logits, emb, y = informative_and_noisy(20, seed=3)
    nlc = NeuralLogitController(max_epochs=0).fit(emb, logits, y)  # no step taken: the initial controller
    assert torch.allclose(nlc.temperatures(emb), torch.full((20, 2), 2.0), atol=1e-5)
    assert torch.allclose(nlc.predict_logits(emb, logits), MeanLogits().fit(logits).predict_logits(logits), atol=1e-4)


def test_learns_to_trust_the_informative_backbone():
    held_z, held_e, held_y = informative_and_noisy(300, seed=0)
    test_z, test_e, test_y = informative_and_noisy(2000, seed=1)
    informative = top1(test_z[0], test_y)
    average = top1(MeanLogits().fit(held_z).predict_logits(test_z), test_y)
    nlc = NeuralLogitController(seed=0, **FAST).fit(held_e, held_z, held_y)
    acc = top1(nlc.predict_logits(test_e, test_z), test_y)
    assert acc > average + 40
    assert acc > informative - 10
    tau = nlc.temperatures(test_e).mean(0)
    assert tau[1] > 5 * tau[0]  # the noisy backbone gets the higher temperature


def test_same_seed_same_controller_other_seed_differs():
    z, e, y = informative_and_noisy(80, seed=4)
    a = NeuralLogitController(seed=7, max_epochs=5).fit(e, z, y).predict_logits(e, z)
    b = NeuralLogitController(seed=7, max_epochs=5).fit(e, z, y).predict_logits(e, z)
    c = NeuralLogitController(seed=8, max_epochs=5).fit(e, z, y).predict_logits(e, z)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_predict_takes_no_labels():
    params = set(inspect.signature(NeuralLogitController.predict_logits).parameters)
    assert params == {"self", "embeddings", "logits"}


class _PoisonedScoreSet(ScoreSet):
    """A test split whose labels raise when read: any code path that touches them fails the test."""

    @property
    def labels(self):
        raise AssertionError("test labels were read")

    @labels.setter
    def labels(self, value):
        pass


def test_nlc_never_reads_test_labels():
    held_z, held_e, held_y = informative_and_noisy(120, seed=0)
    test_z, test_e, test_y = informative_and_noisy(50, seed=1)
    fitted = fit_combiners(ScoreSet(held_z, held_y, held_e), ["a", "b"], nlc_kwargs=dict(max_epochs=5, seed=0))
    assert "nlc" in fitted.combiners
    poisoned = _PoisonedScoreSet(test_z, test_y, test_e)
    with pytest.raises(AssertionError, match="test labels were read"):
        poisoned.labels  # noqa: B018  the guard works
    out = predict_combiners(fitted, poisoned, chunk_rows=16)  # would raise if any combiner read labels
    shuffled = predict_combiners(fitted, ScoreSet(test_z, test_y[torch.randperm(50)], test_e), chunk_rows=16)
    unlabelled = predict_combiners(fitted, ScoreSet(test_z, None, test_e), chunk_rows=50)
    for key in out:
        assert np.array_equal(out[key], shuffled[key]) and np.allclose(out[key], unlabelled[key], atol=1e-5), key


def test_early_stopping_restores_the_best_validation_epoch():
    z, e, y = informative_and_noisy(60, seed=5)
    nlc = NeuralLogitController(seed=0, lr=1e-2, max_epochs=30, patience=3).fit(e, z, y)
    history = nlc.val_loss_history_
    assert nlc.best_epoch_ == int(np.argmin(history))
    assert len(history) <= 30 and (len(history) == 30 or len(history) - 1 - nlc.best_epoch_ == 3)


def test_clear_errors():
    z, e, y = informative_and_noisy(10, seed=0)
    with pytest.raises(NotFittedError, match="NeuralLogitController is not fitted"):
        NeuralLogitController().predict_logits(e, z)
    with pytest.raises(ConfigError, match=r"embeddings\[1\] has shape \(9, 8\)"):
        NeuralLogitController().fit([e[0], e[1][:9]], z, y)
    nlc = NeuralLogitController(max_epochs=1).fit(e, z, y)
    with pytest.raises(ConfigError, match="concatenated embeddings have 12 dimensions"):
        nlc.predict_logits([e[0], e[1][:, :4]], z)


def test_temperatures_checks_its_embeddings_like_predict_logits():
    z, e, y = informative_and_noisy(10, seed=0)
    nlc = NeuralLogitController(max_epochs=1).fit(e, z, y)
    with pytest.raises(ConfigError, match="concatenated embeddings have 12 dimensions"):
        nlc.temperatures([e[0], e[1][:, :4]])
    with pytest.raises(ConfigError, match="fitted on 2 backbones, got 1"):
        nlc.temperatures([torch.cat(e, dim=1)])
    with pytest.raises(ConfigError, match=r"embeddings\[1\] has shape \(9, 8\)"):
        nlc.temperatures([e[0], e[1][:9]])
