"""Static combiners, temperature scaling, stacking, and streaming combination (docs/methods.md §6)."""

import math

import numpy as np
import pytest
import torch
from _synergy_data import informative_and_noisy, top1

from clipadapt.errors import ConfigError
from clipadapt.eval.synergy_combiners import predict_streaming, predictions_streaming
from clipadapt.methods.ensembles import (
    COMBINERS,
    MajorityVote,
    MaxConfidence,
    MeanLogits,
    MeanProbs,
    MinEntropy,
    Stacking,
    TemperatureScaledMean,
    check_logits_list,
    fit_temperature,
)


def _random_logits(b=3, n=6, c=4, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(n, c, generator=g) for _ in range(b)], torch.randint(0, c, (n,), generator=g)


def _softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def test_mean_logits_is_literal_average():
    logits, _ = _random_logits()
    out = MeanLogits().fit(logits).predict_logits(logits)
    for i in range(6):
        for c in range(4):
            assert out[i, c].item() == pytest.approx(sum(z[i, c].item() for z in logits) / 3, abs=1e-5)


def test_mean_probs_is_log_of_average_softmax():
    logits, _ = _random_logits()
    out = MeanProbs().fit(logits).predict_logits(logits)
    for i in range(6):
        probs = [_softmax_row(z[i].tolist()) for z in logits]
        for c in range(4):
            assert out[i, c].item() == pytest.approx(math.log(sum(p[c] for p in probs) / 3), abs=1e-5)


def test_majority_vote_counts_votes_and_breaks_ties_by_mean_probability():
    # sample 0: votes 2 for class 1, 1 for class 0 -> class 1 even though backbone 0 is very confident in 0
    # sample 1: one vote each for classes 0 and 2 (B=2 tie) -> class with higher mean probability (2)
    a = torch.tensor([[50.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    c = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # sample 1: a 3-way tie for backbone c -> class 0
    # sample 1 votes: a->0, b->2, c->0 -> class 0 wins 2 votes to 1
    assert MajorityVote().fit([a, b, c]).predict_logits([a, b, c]).argmax(1).tolist() == [1, 0]
    assert MajorityVote().fit([a, b]).predict_logits([a, b]).argmax(1).tolist() == [0, 2]


def test_majority_vote_exact_tie_goes_to_lowest_class():
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])  # one vote each, equal mean probability
    assert MajorityVote().fit([a, b]).predict_logits([a, b]).argmax(1).item() == 0


def test_max_confidence_and_min_entropy_pick_backbone_per_sample():
    logits, _ = _random_logits(b=3, n=8, c=5, seed=3)
    mc = MaxConfidence().fit(logits)
    me = MinEntropy().fit(logits)
    out_mc, out_me = mc.predict_logits(logits), me.predict_logits(logits)
    for i in range(8):
        probs = [_softmax_row(z[i].tolist()) for z in logits]
        best_conf = max(range(3), key=lambda b: max(probs[b]))
        best_ent = min(range(3), key=lambda b: -sum(p * math.log(p) for p in probs[b]))
        assert mc.selected_backbone(logits)[i].item() == best_conf
        assert me.selected_backbone(logits)[i].item() == best_ent
        assert out_mc[i].exp().tolist() == pytest.approx(probs[best_conf], abs=1e-5)
        assert out_me[i].exp().tolist() == pytest.approx(probs[best_ent], abs=1e-5)


def test_fit_temperature_recovers_the_generating_temperature():
    g = torch.Generator().manual_seed(0)
    z = 4.0 * torch.randn(4000, 5, generator=g)
    labels = torch.multinomial((z / 2.5).softmax(-1), 1, generator=g).squeeze(1)  # labels drawn at T = 2.5
    assert fit_temperature(z, labels) == pytest.approx(2.5, rel=0.1)


def test_fitted_combiners_recover_the_informative_backbone():
    held, _, held_y = informative_and_noisy(300, seed=0)
    test, _, test_y = informative_and_noisy(2000, seed=1)
    informative = top1(test[0], test_y)
    average = top1(MeanLogits().fit(held).predict_logits(test), test_y)
    assert informative > 85 and average < 40  # the data are as designed
    for combiner in (TemperatureScaledMean(), TemperatureScaledMean(average="probs"), Stacking()):
        acc = top1(combiner.fit(held, held_y).predict_logits(test), test_y)
        assert acc > average + 40, type(combiner).__name__
        assert acc > informative - 3, type(combiner).__name__
    stack = Stacking().fit(held, held_y)
    assert stack.weights_[0] > 0.95 and stack.weights_.sum().item() == pytest.approx(1.0, abs=1e-5)
    temps = TemperatureScaledMean().fit(held, held_y).temperatures_
    assert temps[1] > 20 * temps[0]  # the noisy backbone is tempered away


@pytest.mark.parametrize("name", sorted(COMBINERS))
def test_every_combiner_streams_from_memmap_identically(name, tmp_path):
    logits, labels = _random_logits(b=3, n=23, c=4, seed=5)
    paths = []
    for b, z in enumerate(logits):
        np.save(tmp_path / f"b{b}.npy", z.numpy())
        paths.append(np.load(tmp_path / f"b{b}.npy", mmap_mode="r"))
    combiner = COMBINERS[name]().fit(logits, labels)
    whole = combiner.predict_logits(logits).numpy()
    streamed = predict_streaming(combiner, paths, chunk_rows=7)
    assert np.allclose(streamed, whole, atol=1e-5)
    preds = predictions_streaming(paths, chunk_rows=5)
    assert preds.tolist() == [z.argmax(1).tolist() for z in logits]


def test_mismatched_backbone_shapes_name_the_backbone():
    with pytest.raises(ConfigError, match=r"logits\[1\] has shape \(5, 3\).*same sample count"):
        MeanLogits().fit([torch.zeros(4, 3), torch.zeros(5, 3)])
    with pytest.raises(ConfigError, match=r"held-out logits\[1\] has shape \(4, 2\).*same class count C"):
        MeanLogits().fit([torch.zeros(4, 3), torch.zeros(4, 2)], torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"fitted on 2 backbones × 3 classes but got 3 backbones"):
        MeanLogits().fit([torch.zeros(4, 3)] * 2).predict_logits([torch.zeros(4, 3)] * 3)


def test_fitted_combiners_need_labels():
    with pytest.raises(ConfigError, match="Stacking.fit needs the held-out labels"):
        Stacking().fit([torch.zeros(4, 3)] * 2)
    with pytest.raises(ConfigError, match="labels must lie in"):
        Stacking().fit([torch.zeros(4, 3)] * 2, torch.tensor([0, 1, 2, 3]))


SAME = "every backbone must score the same samples in the same order over the same classes"


@pytest.mark.parametrize(
    "shapes, differs",
    [([(4, 3), (5, 3)], "same sample count N"), ([(4, 3), (4, 2)], "same class count C"),
     ([(4, 3), (4, 3, 1)], "same shape")],
)
def test_tensor_and_array_logit_lists_share_one_checker_and_one_wording(shapes, differs):
    """check_logits_list checks tensors (in-memory combiners) and arrays (streaming / backbones CLI) alike: the same
    literal message, naming the backbone by index or by the name given."""
    (n0, c0), bad = shapes[0], shapes[1]
    tail = f"has shape {bad} but {{first}} has {(n0, c0)}: {SAME} ({differs})"
    with pytest.raises(ConfigError) as tensors:
        check_logits_list([torch.zeros(*s) for s in shapes])
    assert str(tensors.value) == "logits[1] " + tail.format(first="logits[0]")
    with pytest.raises(ConfigError) as arrays:
        check_logits_list([np.zeros(s, dtype=np.float32) for s in shapes], names=["a.npy", "b.npy"])
    assert str(arrays.value) == "b.npy " + tail.format(first="a.npy")
    with pytest.raises(ConfigError) as streamed:
        predict_streaming(MeanLogits().fit([torch.zeros(n0, c0)] * 2), [np.zeros(s, dtype=np.float32) for s in shapes])
    assert str(streamed.value) == str(tensors.value)


def test_empty_or_non_matrix_logit_lists_have_one_wording():
    with pytest.raises(ConfigError, match=r"^logits: need the logits of at least one backbone, got none$"):
        check_logits_list([])
    with pytest.raises(ConfigError, match=r"^logits\[0\]: expected \(N, C\) logits, got shape \(4,\)$"):
        check_logits_list([np.zeros(4)])
    with pytest.raises(ConfigError, match=r"^a\.npy: expected \(N, C\) logits, got shape \(4,\)$"):
        check_logits_list([torch.zeros(4)], names=["a.npy"])
