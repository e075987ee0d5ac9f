"""Backbone synergy analyses (docs/methods.md §6): oracle, agreement, complementarity, per-class best backbone,
normalisation study (zero-shot and linear probe), combiners, cost and a confidence cascade.

Inputs are per-backbone score sets whose rows are the same samples in the same order (`ScoreSet`); every
function here is pure (tensors / arrays in, numbers and tables out). Logits may be memory-mapped arrays: the
analyses read them `chunk_rows` rows at a time, and `evaluate_synergy` reads each chunk once: every analysis
is a chunk consumer (`update(rows, chunk, labels)`) fed by one loop, `stream_chunks`.

Accuracy is reported at top-1 and, when there are at least 5 classes, top-5 (`topk_levels`); with fewer classes
top-5 would be trivially 100 % and is omitted everywhere (keys, columns, printed table).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipadapt.errors import ConfigError, FeatureDirError
from clipadapt.eval.metrics import topk_correct
from clipadapt.features.featureset import FeatureSet
from clipadapt.methods.ensembles import (
    COMBINERS,
    as_float_tensor,
    check_array_list,
    check_labels,
    iter_row_chunks,
    predictions_streaming,
)
from clipadapt.methods.logit_controller import NeuralLogitController
from clipadapt.methods.zeroshot import ZeroShotClassifier
from clipadapt.ops import l2_normalize

NORMALISATIONS = ("raw", "l2", "centred_l2", "standardised")


@dataclass
class ScoreSet:
    """Per-backbone outputs on one split; row i of every array is the same sample.

    `logits`: B arrays (N, C) (tensors or memory-mapped numpy arrays); `labels` (N,) or None;
    `embeddings`: B tensors (N, D_b) or None (needed by the Neural Logit Controller only).
    """

    logits: list[Any]
    labels: Tensor | None = None
    embeddings: list[Tensor] | None = None

    @property
    def n(self) -> int:
        return int(self.logits[0].shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.logits[0].shape[1])


# ----------------------------------------------------------------------------------------- alignment checks
def check_aligned_feature_sets(feature_sets: dict[str, FeatureSet], split: str) -> None:
    """Same classes, same samples in the same order in every backbone's split; errors name the backbone."""
    items = list(feature_sets.items())
    ref_name, ref = items[0]
    ref_split = ref.split(split)
    for name, fs in items[1:]:
        if fs.classnames != ref.classnames:
            diff = _first_difference(ref.classnames, fs.classnames)
            raise FeatureDirError(
                f"{name}: class names differ from {ref_name} ({len(fs.classnames)} vs {len(ref.classnames)} classes"
                f"{diff}) — combine backbones evaluated on the same dataset"
            )
        s = fs.split(split)
        if s.n != ref_split.n:
            raise FeatureDirError(f"{name}: split '{split}' has N={s.n} samples but {ref_name} has N={ref_split.n}")
        if s.paths is not None and ref_split.paths is not None and s.paths != ref_split.paths:
            i = next(i for i, (a, b) in enumerate(zip(s.paths, ref_split.paths)) if a != b)
            raise FeatureDirError(
                f"{name}: {split}.paths.json differs from {ref_name} at row {i} ({s.paths[i]!r} vs "
                f"{ref_split.paths[i]!r}) — the samples are not in the same order"
            )
        if (s.label is None) != (ref_split.label is None) or (
            s.label is not None and not torch.equal(s.label, ref_split.label)
        ):
            raise FeatureDirError(
                f"{name}: labels of split '{split}' differ from {ref_name} — not the same samples in the same order"
            )


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"; first difference at class {i}: {x!r} vs {y!r}"
    return ""


# ----------------------------------------------------------------------------------------- analyses
def per_backbone_accuracy(preds: Tensor, labels: Tensor) -> Tensor:
    """(B,) top-1 accuracy in percent of each backbone's predictions (B, N)."""
    return 100.0 * (preds == labels.view(1, -1)).sum(1).double() / preds.shape[1]


def oracle_accuracy(preds: Tensor, labels: Tensor) -> float:
    """Percent of samples that at least one backbone classifies correctly."""
    return _percent((preds == labels.view(1, -1)).any(0).sum(), preds.shape[1])


def agreement_matrix(preds: Tensor) -> Tensor:
    """(B, B): percent of samples on which backbones a and b predict the same class."""
    return 100.0 * (preds.unsqueeze(1) == preds.unsqueeze(0)).float().mean(-1)


def complementarity_matrix(preds: Tensor, labels: Tensor) -> Tensor:
    """(B, B): entry [a, b] = percent of samples backbone a gets right and backbone b gets wrong."""
    right = (preds == labels.view(1, -1)).float()
    return 100.0 * (right.unsqueeze(1) * (1 - right).unsqueeze(0)).mean(-1)


def per_class_best(preds: Tensor, labels: Tensor, names: Sequence[str], classnames: Sequence[str]) -> list[dict]:
    """One row per class: each backbone's accuracy on that class and the best one (ties: first listed)."""
    rows = []
    right = preds == labels.view(1, -1)
    for c, cname in enumerate(classnames):
        mask = labels == c
        if not mask.any():
            continue
        acc = 100.0 * right[:, mask].float().mean(1)
        row = {"class": cname, "n": int(mask.sum()), "best": names[int(acc.argmax())]}
        row.update({name: float(a) for name, a in zip(names, acc)})
        rows.append(row)
    return rows


def synergy_summary(preds: Tensor, labels: Tensor, names: Sequence[str]) -> dict[str, Any]:
    """Per-backbone accuracy, oracle, synergy (oracle − best single) and the pairwise matrices."""
    acc = per_backbone_accuracy(preds, labels)
    best = int(acc.argmax())
    oracle = oracle_accuracy(preds, labels)
    return {
        "backbones": list(names),
        "accuracy": {n: float(a) for n, a in zip(names, acc)},
        "best_single": {"backbone": names[best], "top1": float(acc[best])},
        "oracle_top1": oracle,
        "synergy": oracle - float(acc[best]),
        "agreement": agreement_matrix(preds).tolist(),
        "complementarity": complementarity_matrix(preds, labels).tolist(),
    }


# ----------------------------------------------------------------------------------------- normalisation study
def feature_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation (floored at 1e-6) of raw embeddings (N, D)."""
    return x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)


def normalise_features(x: Tensor, kind: str, stats: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Apply one normalisation to raw embeddings (N, D).

    raw: unchanged; l2: x/‖x‖; centred_l2: (x − μ)/‖x − μ‖; standardised: (x − μ)/σ per dimension.
    μ, σ come from `stats` (computed by the caller on the set it chooses; see docs/backbones.md).
    """
    if kind == "raw":
        return x
    if kind == "l2":
        return l2_normalize(x)
    if kind not in NORMALISATIONS:
        raise ConfigError(f"unknown normalisation {kind!r}; choose from {', '.join(NORMALISATIONS)}")
    mu, sigma = stats if stats is not None else feature_statistics(x)
    return l2_normalize(x - mu) if kind == "centred_l2" else (x - mu) / sigma


def fit_linear_probe(x: Tensor, y: Tensor, num_classes: int, *, weight_decay: float = 1e-4, max_iter: int = 100,
                     seed: int = 0) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression (weights W (C, D), bias b) by full-batch L-BFGS on CE + wd·‖W‖².

    The objective is convex and the start is zero, so the fit is deterministic: nothing is drawn at random
    (`seed` is kept for the record) and the caller's global RNG is left alone.
    """
    x, y = x.double(), y.long()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().float(), b.detach().float()


def normalisation_study(
    feature_sets: dict[str, FeatureSet],
    *,
    eval_split: str = "test",
    train_split: str | None = "train",
    stats_split: str | None = None,
    probe_weight_decay: float = 1e-4,
    probe_max_iter: int = 100,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Top-1 of every backbone × normalisation, zero-shot and (when `train_split` is present) linear probe.

    Zero-shot: the transform is applied to the image embeddings only; W stays the prompt-ensembled,
    L2-normalised text classifier. μ/σ come from `stats_split` (default: 'unlabeled' when present, else the
    evaluated split's images — transductive like DN, labels never read). Linear probe: μ/σ from the
    training images, applied to train and evaluated images alike.
    """
    rows = []
    for name, fs in feature_sets.items():
        ev = fs.split(eval_split)
        x_eval, y_eval = ev.pooled(), ev.labels(eval_split)
        zs_source = stats_split or ("unlabeled" if fs.has_split("unlabeled") else eval_split)
        zs_stats = feature_statistics(fs.split(zs_source).pooled())
        w = fs.classifier()
        has_train = train_split is not None and fs.has_split(train_split)
        if has_train:
            tr = fs.split(train_split)
            x_tr, y_tr = tr.pooled(), tr.labels(train_split)
            tr_stats = feature_statistics(x_tr)
        for kind in NORMALISATIONS:
            zs = normalise_features(x_eval, kind, zs_stats) @ w.T
            row = {"backbone": name, "normalisation": kind, "zeroshot_top1": _top1(zs, y_eval),
                   "zeroshot_stats": zs_source}
            if has_train:
                pw, pb = fit_linear_probe(normalise_features(x_tr, kind, tr_stats), y_tr, fs.num_classes,
                                          weight_decay=probe_weight_decay, max_iter=probe_max_iter, seed=seed)
                row["probe_top1"] = _top1(normalise_features(x_eval, kind, tr_stats) @ pw.T + pb, y_eval)
            rows.append(row)
    return rows


def _top1(logits: Tensor, labels: Tensor) -> float:
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()


# ----------------------------------------------------------------------------------------- scores from features
def zero_shot_scores(feature_sets: dict[str, FeatureSet], split: str, *, with_labels: bool = True) -> ScoreSet:
    """Zero-shot logits (and pooled raw embeddings) of every backbone on `split`."""
    logits, embeddings = [], []
    for fs in feature_sets.values():
        s = fs.split(split)
        logits.append(ZeroShotClassifier().fit(fs.text).predict_logits(s.image))
        embeddings.append(s.pooled())
    first = next(iter(feature_sets.values())).split(split)
    labels = first.labels(split) if with_labels else None
    return ScoreSet(logits=logits, labels=labels, embeddings=embeddings)


# ----------------------------------------------------------------------------------------- combiners
@dataclass
class FittedCombiners:
    """Combiners fitted on a labelled held-out ScoreSet (static ones need no labels)."""

    combiners: dict[str, Any] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)


def fit_combiners(heldout: ScoreSet | None, num_backbones: int, num_classes: int, *,
                  nlc_kwargs: dict | None = None, names: Sequence[str] | None = None) -> FittedCombiners:
    """Static combiners always; fitted ones (temperatures, stacking, NLC) when a labelled held-out set is given."""
    fitted = FittedCombiners()
    dummy = [torch.zeros(1, num_classes) for _ in range(num_backbones)]
    names = list(names) if names else [f"b{i}" for i in range(num_backbones)]
    for key, cls in COMBINERS.items():
        if not cls.needs_labels:
            fitted.combiners[key] = cls().fit(dummy)
    if heldout is None or heldout.labels is None:
        return fitted
    logits = [as_float_tensor(z[:]) for z in heldout.logits]
    for key, cls in COMBINERS.items():
        if cls.needs_labels:
            est = cls().fit(logits, heldout.labels)
            fitted.combiners[key] = est
            detail = {}
            if hasattr(est, "temperatures_"):
                detail["temperatures"] = dict(zip(names, est.temperatures_.tolist()))
            if hasattr(est, "weights_"):
                detail["weights"] = dict(zip(names, est.weights_.tolist()))
            fitted.details[key] = detail
    if heldout.embeddings is not None:
        nlc = NeuralLogitController(**(nlc_kwargs or {})).fit(heldout.embeddings, logits, heldout.labels)
        fitted.combiners["nlc"] = nlc
        fitted.details["nlc"] = {"best_epoch": nlc.best_epoch_, "epochs_run": len(nlc.val_loss_history_),
                                 "hyperparameters": {k: getattr(nlc, k) for k in ("hidden", "lr", "weight_decay",
                                                     "max_epochs", "batch_size", "val_fraction", "patience",
                                                     "normalize", "seed")}}
    return fitted


def _combine_chunk(est: Any, chunk: list[Tensor], embeddings: list[Tensor] | None, rows: slice) -> Tensor | None:
    """(n, C) combined scores of one fitted combiner on one chunk (None: the NLC without embeddings).

    Gets logits and embeddings only: no combiner can see labels."""
    if isinstance(est, NeuralLogitController):
        if embeddings is None:
            return None
        return est.predict_logits([e[rows] for e in embeddings], chunk)
    return est.predict_logits(chunk)


def predict_combiners(fitted: FittedCombiners, test: ScoreSet, *, chunk_rows: int = 1024) -> dict[str, np.ndarray]:
    """(N, C) combined logits of every fitted combiner on `test`, streamed by rows. Reads no labels.

    For the combined logits themselves; `evaluate_synergy` only scores them (`CombinerCounts`, no (N, C) output).
    """
    out = {key: np.empty((test.n, test.num_classes), dtype=np.float32) for key, est in fitted.combiners.items()
           if not (isinstance(est, NeuralLogitController) and test.embeddings is None)}
    for rows in iter_row_chunks(test.n, chunk_rows):
        chunk = [as_float_tensor(z[rows]) for z in test.logits]
        for key in out:
            out[key][rows] = _combine_chunk(fitted.combiners[key], chunk, test.embeddings, rows).numpy()
    return out


# ----------------------------------------------------------------------------------------- one pass over the logits
def topk_levels(num_classes: int) -> tuple[int, ...]:
    """The k of the reported top-k accuracies: (1, 5) with at least 5 classes, else (1,) (top-5 would be 100 %)."""
    return (1, 5) if num_classes >= 5 else (1,)


def _percent(count: int | Tensor, n: int) -> float:
    return 100.0 * int(count) / n


def _hits(scores: Tensor, y: Tensor, k: int) -> Tensor:
    """(n,) bool: label is the argmax (k = 1, first maximum as everywhere else) or among the k highest scores."""
    return scores.argmax(1) == y if k == 1 else topk_correct(scores, y, k)


def stream_chunks(logits: Sequence[Any], labels: Tensor, consumers: Sequence[Any], *, chunk_rows: int = 1024) -> None:
    """Read `chunk_rows` rows of every backbone's logits once and hand them to every consumer.

    A consumer has `update(rows: slice, chunk: list[(n, C) float tensors], labels: (n,))`; it accumulates what
    it reports. This is the only loop over the (possibly memory-mapped) logits in `evaluate_synergy`.
    """
    n, _ = check_array_list(logits)
    for rows in iter_row_chunks(n, chunk_rows):
        chunk = [as_float_tensor(z[rows]) for z in logits]
        y = labels[rows]
        for consumer in consumers:
            consumer.update(rows, chunk, y)


class BackboneHits:
    """Per backbone and sample: the argmax class (B, N) and whether the label is in the top k, for each k."""

    def __init__(self, num_backbones: int, n: int, ks: Sequence[int]):
        self.preds = torch.empty(num_backbones, n, dtype=torch.long)
        self.hits = {k: torch.zeros(num_backbones, n, dtype=torch.bool) for k in ks}

    def update(self, rows: slice, chunk: list[Tensor], y: Tensor) -> None:
        for b, z in enumerate(chunk):
            self.preds[b, rows] = z.argmax(1)
            for k, hit in self.hits.items():
                hit[b, rows] = _hits(z, y, k)

    def accuracy(self, k: int) -> Tensor:
        """(B,) top-k accuracy in percent."""
        return 100.0 * self.hits[k].sum(1).double() / self.hits[k].shape[1]

    def oracle(self, k: int) -> float:
        """Percent of samples with the label in the top k of at least one backbone."""
        return _percent(self.hits[k].any(0).sum(), self.hits[k].shape[1])


class CombinerCounts:
    """Top-k correct counts of every fitted combiner, scored chunk by chunk (no (N, C) output is kept)."""

    def __init__(self, fitted: FittedCombiners, embeddings: list[Tensor] | None, ks: Sequence[int]):
        self.fitted, self.embeddings, self.ks = fitted, embeddings, tuple(ks)
        self.counts = {key: dict.fromkeys(self.ks, 0) for key, est in fitted.combiners.items()
                       if not (isinstance(est, NeuralLogitController) and embeddings is None)}

    def update(self, rows: slice, chunk: list[Tensor], y: Tensor) -> None:
        for key, counts in self.counts.items():
            scores = _combine_chunk(self.fitted.combiners[key], chunk, self.embeddings, rows)
            for k in self.ks:
                counts[k] += int(_hits(scores, y, k).sum())

    def accuracy(self, n: int) -> dict[str, dict[str, float]]:
        """{combiner: {'top1': %, 'top5': %}}."""
        return {key: {f"top{k}": _percent(c, n) for k, c in counts.items()} for key, counts in self.counts.items()}


class CascadeCounts:
    """The confidence cascade (see `cascade`) accumulated chunk by chunk."""

    def __init__(self, costs: Sequence[float], thresholds: Sequence[float], *,
                 temperatures: Sequence[float] | None = None, ks: Sequence[int] = (1,)):
        b_count = len(costs)
        self.order = sorted(range(b_count), key=lambda b: costs[b])
        self.temps = list(temperatures) if temperatures is not None else [1.0] * b_count
        self.step_cost = torch.cumsum(torch.tensor([float(costs[b]) for b in self.order]), 0)
        self.ks, self.n = tuple(sorted(set(ks) | {1})), 0  # top-1 always (the cascade's own prediction)
        self.stats = {t: {"correct": dict.fromkeys(self.ks, 0), "cost": 0.0, "stops": [0] * b_count}
                      for t in thresholds}

    def update(self, rows: slice, chunk: list[Tensor], y: Tensor) -> None:
        b_count = len(self.order)
        probs = [(chunk[b] / self.temps[b]).softmax(-1) for b in self.order]
        running = torch.cumsum(torch.stack(probs), 0) / torch.arange(1, b_count + 1).view(-1, 1, 1)  # (B, n, C)
        conf, pred = running.max(-1)
        self.n += int(y.shape[0])
        for t, s in self.stats.items():
            confident = conf >= t
            confident[-1] = True
            stop = confident.float().argmax(0)  # first stage that is confident
            s["correct"][1] += int((pred.gather(0, stop.view(1, -1)).squeeze(0) == y).sum())
            if len(self.ks) > 1:
                final = running[stop, torch.arange(stop.shape[0])]  # (n, C): the stopping stage's mean probs
                for k in self.ks[1:]:
                    s["correct"][k] += int(topk_correct(final, y, k).sum())
            s["cost"] += float(self.step_cost[stop].sum())
            for k in range(b_count):
                s["stops"][k] += int((stop == k).sum())

    def rows(self) -> list[dict[str, Any]]:
        return [{"threshold": t, **{f"top{k}": _percent(c, self.n) for k, c in s["correct"].items()},
                 "mean_cost": s["cost"] / self.n, "stopped_after": {f"{k + 1}": c / self.n for k, c in enumerate(s["stops"])}}
                for t, s in self.stats.items()]


class SubsetCounts:
    """Mean of probabilities over every subset of >= 2 backbones (see `subset_mean_probs`), chunk by chunk."""

    def __init__(self, costs: Sequence[float], names: Sequence[str], *, ks: Sequence[int] = (1,), max_backbones: int = 8):
        b_count = len(costs)
        self.costs, self.names, self.ks, self.n = list(costs), list(names), tuple(ks), 0
        self.subsets = ([] if b_count > max_backbones else
                        [list(s) for k in range(2, b_count + 1) for s in itertools.combinations(range(b_count), k)])
        self.correct = {k: torch.zeros(len(self.subsets), dtype=torch.long) for k in self.ks}

    def update(self, rows: slice, chunk: list[Tensor], y: Tensor) -> None:
        self.n += int(y.shape[0])
        if not self.subsets:
            return
        probs = torch.stack([z.softmax(-1) for z in chunk])  # (B, n, C), computed once for every subset
        for i, subset in enumerate(self.subsets):
            pooled = probs[subset].sum(0)
            for k in self.ks:
                self.correct[k][i] += int(_hits(pooled, y, k).sum())

    def rows(self) -> list[dict[str, Any]]:
        return [{"combination": "+".join(self.names[b] for b in s), "method": "mean_probs",
                 **{f"top{k}": _percent(self.correct[k][i], self.n) for k in self.ks},
                 "cost": float(sum(self.costs[b] for b in s))} for i, s in enumerate(self.subsets)]


# ----------------------------------------------------------------------------------------- cost and cascade
def model_cost(model_id: str, *, device: str = "cpu", measure_time: bool = True, batch: int = 4,
               repeats: int = 3) -> dict[str, Any]:
    """Parameters (image tower and total), GFLOPs of encoding one image and (optionally) measured ms per image.

    Only the architecture matters, so this builds `ARCH` of `ARCH@TAG` without weights (no download).
    Parameters and FLOPs are counted on the meta device (shapes only, no computation) with
    torch.utils.flop_counter (a multiply-add counts 2). With `measure_time`, a randomly initialised copy on
    `device` encodes `batch` images: median over `repeats` timed batches after one warm-up batch.
    """
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    arch = model_id.split("@", 1)[0].strip().replace("/", "-")  # open_clip spells ViT-B/32 as ViT-B-32
    if arch not in open_clip.list_models():
        raise ConfigError(f"{model_id}: unknown open_clip architecture {arch!r} (open_clip.list_models() lists them)")
    with torch.device("meta"):
        model = open_clip.create_model(arch, pretrained=None, device="meta").eval()
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.encode_image(torch.empty(1, 3, *size, device="meta"))
    result = {
        "model": model_id,
        "params_image_M": sum(p.numel() for p in model.visual.parameters()) / 1e6,
        "params_total_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops_per_image": counter.get_total_flops() / 1e9,
        "image_size": list(size),
    }
    if measure_time:
        result.update(ms_per_image=_time_per_image(arch, size, device, batch, repeats), device=device)
    return result


def _time_per_image(arch: str, size: tuple[int, int], device: str, batch: int, repeats: int) -> float:
    """Median milliseconds per image of `encode_image` on `device` (random weights)."""
    import open_clip

    model = open_clip.create_model(arch, pretrained=None, device=device).eval()
    images = torch.randn(batch, 3, *size, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    with torch.no_grad():
        model.encode_image(images)
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            model.encode_image(images)
            sync()
            times.append((time.perf_counter() - t0) / batch)
    return 1000.0 * float(np.median(times))


def cascade(
    logits: Sequence[Any],
    labels: Tensor,
    costs: Sequence[float],
    thresholds: Sequence[float],
    *,
    temperatures: Sequence[float] | None = None,
    chunk_rows: int = 1024,
    ks: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Confidence cascade: run backbones from cheapest to dearest, stop once the running prediction is confident.

    After each backbone the prediction is the mean of the (temperature-scaled) softmax probabilities of the
    backbones run so far; a sample stops when its max probability ≥ threshold (the last backbone always
    stops). Cost of a sample = sum of the costs of the backbones it ran. One row per threshold, with top-k of
    the stopping stage's mean probabilities for k in `ks` (default `topk_levels(C)`).
    """
    _, c = check_array_list(logits)
    if len(costs) != len(logits):
        raise ConfigError(f"{len(costs)} costs for {len(logits)} backbones")
    counts = CascadeCounts(costs, thresholds, temperatures=temperatures, ks=ks or topk_levels(c))
    stream_chunks(logits, labels, [counts], chunk_rows=chunk_rows)
    return counts.rows()


def subset_mean_probs(logits: Sequence[Any], labels: Tensor, costs: Sequence[float], names: Sequence[str], *,
                      max_backbones: int = 8, chunk_rows: int = 1024, ks: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Top-k (k in `ks`, default `topk_levels(C)`) and cost of mean-of-probabilities over every subset of ≥ 2
    backbones (none when B > max_backbones). Each chunk's B probability tables are computed once for every subset.
    """
    _, c = check_array_list(logits)
    if len(logits) > max_backbones:
        return []
    counts = SubsetCounts(costs, names, ks=ks or topk_levels(c), max_backbones=max_backbones)
    stream_chunks(logits, labels, [counts], chunk_rows=chunk_rows)
    return counts.rows()


def accuracy_table(combined: dict[str, np.ndarray], labels: Tensor) -> dict[str, float]:
    """Top-1 (percent) of every combined logits array."""
    n = int(labels.shape[0])
    return {k: _percent((torch.from_numpy(v.argmax(1)) == labels).sum(), n) for k, v in combined.items()}


# ----------------------------------------------------------------------------------------- the whole run
@dataclass
class SynergyReport:
    """Everything a backbones run produces: `results` (JSON-able), `tables` (name -> rows), plot inputs."""

    results: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    names: list[str]
    agreement: list[list[float]]
    complementarity: list[list[float]]
    points: list[dict[str, Any]]
    cost_label: str


def _costs_in_order(costs: dict[str, float] | None, names: Sequence[str]) -> list[float]:
    """Each backbone's cost in `names` order (1 each without costs); a backbone missing from `costs` is an error."""
    if not costs:
        return [1.0] * len(names)
    missing = [x for x in names if x not in costs]
    if missing:
        raise ConfigError(f"no cost given for backbone(s) {missing}; costs name {sorted(costs)}")
    return [float(costs[x]) for x in names]


def evaluate_synergy(
    names: Sequence[str],
    test: ScoreSet,
    *,
    heldout: ScoreSet | None = None,
    classnames: Sequence[str] | None = None,
    costs: dict[str, float] | None = None,
    cost_label: str = "backbones run",
    thresholds: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
    chunk_rows: int = 1024,
    nlc_kwargs: dict | None = None,
    fitted: FittedCombiners | None = None,
) -> SynergyReport:
    """Per-backbone accuracy, oracle/synergy, pairwise matrices, per-class best, combiners, cost and cascade.

    Combiners are fitted on `heldout` (labelled) first; then one pass over `test` (`stream_chunks`) reads each
    chunk of rows once and every analysis and every fitted combiner consumes it — the combiners see logits and
    embeddings only, the labels are used only to score. Top-1 everywhere, top-5 too when C >= 5 (`topk`).
    Without costs every backbone costs 1 (the cost axis counts backbones run). `fitted`: combiners fitted
    already (`fit_combiners`), e.g. to evaluate several splits with one fit; `heldout` is then not refitted.
    """
    names = list(names)
    n, c = _check_synergy_inputs(names, test, heldout)
    classnames = list(classnames) if classnames else [str(i) for i in range(c)]
    cost = _costs_in_order(costs, names)
    ks = topk_levels(c)
    if fitted is None:
        fitted = fit_combiners(heldout, len(names), c, nlc_kwargs=nlc_kwargs, names=names)
    backbones, combiners, cascade_counts, subset_counts = _count_in_one_pass(
        names, test, fitted, cost, thresholds, ks, chunk_rows)
    summary = _backbone_summary(backbones, test.labels, names, ks)
    comb_acc = combiners.accuracy(n)
    cascade_rows = cascade_counts.rows()
    tables = _synergy_tables(names, classnames, cost, ks, summary, comb_acc, subset_counts.rows(), cascade_rows,
                             backbones.preds, test.labels)
    results = {
        **summary,
        "n": n,
        "num_classes": c,
        "heldout_n": heldout.n if heldout is not None else 0,
        "topk": list(ks),
        "combinations": {k: {**v, **fitted.details.get(k, {})} for k, v in comb_acc.items()},
        "cascade": cascade_rows,
        "costs": dict(zip(names, cost)),
        "cost_unit": cost_label,
        "cascade_order": [names[b] for b in sorted(range(len(names)), key=lambda b: cost[b])],
    }
    return SynergyReport(results=results, tables=tables, names=names, agreement=summary["agreement"],
                         complementarity=summary["complementarity"],
                         points=_cost_points(tables["per_backbone"], tables["subsets"], tables["combinations"]),
                         cost_label=cost_label)


def _check_synergy_inputs(names: list[str], test: ScoreSet, heldout: ScoreSet | None) -> tuple[int, int]:
    """(N, C) of the evaluated logits; ConfigError when a split lacks labels or the shapes disagree."""
    if test.labels is None:
        raise ConfigError("the evaluated split needs labels to score the backbones")
    n, c = check_array_list(test.logits, names=names)
    check_labels(test.labels, n, c, "evaluated split")
    if heldout is not None:
        hn, hc = check_array_list(heldout.logits, names=[f"{x} (held-out)" for x in names])
        if hc != c:
            raise ConfigError(f"held-out logits have {hc} classes but the evaluated logits have {c}")
        if heldout.labels is not None:
            check_labels(heldout.labels, hn, c, "held-out split")
    return n, c


def _count_in_one_pass(names: list[str], test: ScoreSet, fitted: FittedCombiners, cost: list[float],
                       thresholds: Sequence[float], ks: tuple[int, ...], chunk_rows: int
                       ) -> tuple[BackboneHits, CombinerCounts, CascadeCounts, SubsetCounts]:
    """Every analysis fed by one read of the test logits (`stream_chunks`); the cascade uses the fitted
    temperatures when the temperature combiner was fitted."""
    temps = fitted.combiners["temperature_mean"].temperatures_.tolist() if "temperature_mean" in fitted.combiners else None
    backbones = BackboneHits(len(names), test.n, ks)
    combiners = CombinerCounts(fitted, test.embeddings, ks)  # sees logits/embeddings only, never the labels
    cascade_counts = CascadeCounts(cost, thresholds, temperatures=temps, ks=ks)
    subset_counts = SubsetCounts(cost, names, ks=ks)
    stream_chunks(test.logits, test.labels, [backbones, combiners, cascade_counts, subset_counts], chunk_rows=chunk_rows)
    return backbones, combiners, cascade_counts, subset_counts


def _backbone_summary(backbones: BackboneHits, labels: Tensor, names: list[str], ks: tuple[int, ...]) -> dict[str, Any]:
    """`synergy_summary` of the argmax predictions, plus top-5 accuracies and oracle when 5 is in `ks`."""
    summary = synergy_summary(backbones.preds, labels, names)
    if 5 in ks:
        top5 = backbones.accuracy(5)
        summary["accuracy_top5"] = {x: float(a) for x, a in zip(names, top5)}
        summary["best_single"]["top5"] = summary["accuracy_top5"][summary["best_single"]["backbone"]]
        summary["oracle_top5"] = backbones.oracle(5)
    return summary


def _synergy_tables(names: list[str], classnames: list[str], cost: list[float], ks: tuple[int, ...],
                    summary: dict[str, Any], comb_acc: dict[str, dict[str, float]], subsets: list[dict[str, Any]],
                    cascade_rows: list[dict[str, Any]], preds: Tensor, labels: Tensor) -> dict[str, list[dict[str, Any]]]:
    """The report's tables (name -> rows), in the order they are written."""
    return {
        "per_backbone": _per_backbone_rows(names, cost, summary, ks),
        "combinations": _combination_rows(comb_acc, summary, cost),
        "subsets": subsets,
        "agreement": _matrix_rows(summary["agreement"], names),
        "complementarity": _matrix_rows(summary["complementarity"], names),
        "per_class_best": per_class_best(preds, labels, names, classnames),
        "cascade": _flat_cascade_rows(cascade_rows),
    }


def _per_backbone_rows(names: list[str], cost: list[float], summary: dict[str, Any], ks: tuple[int, ...]) -> list[dict]:
    """Table rows: each backbone's top-1 (and top-5) and cost."""
    return [{"backbone": x, "top1": summary["accuracy"][x],
             **({"top5": summary["accuracy_top5"][x]} if 5 in ks else {}), "cost": k}
            for x, k in zip(names, cost)]


def _combination_rows(comb_acc: dict[str, dict[str, float]], summary: dict[str, Any], cost: list[float]) -> list[dict]:
    """Table rows: each combiner's accuracy, its gain over the best single backbone, and the cost of running all."""
    return [{"method": k, **v, "gain_over_best": v["top1"] - summary["best_single"]["top1"], "cost": sum(cost)}
            for k, v in comb_acc.items()]


def _cost_points(per_backbone: list[dict], subsets: list[dict], combos: list[dict]) -> list[dict[str, Any]]:
    """The accuracy-vs-cost plot's points: single backbones, backbone subsets, combiners."""
    return ([{"label": r["backbone"], "kind": "single", "top1": r["top1"], "cost": r["cost"]} for r in per_backbone]
            + [{"label": r["combination"], "kind": "subset", "top1": r["top1"], "cost": r["cost"]} for r in subsets]
            + [{"label": r["method"], "kind": "combiner", "top1": r["top1"], "cost": r["cost"]} for r in combos])


def _matrix_rows(matrix: list[list[float]], names: list[str]) -> list[dict[str, Any]]:
    """A (B, B) matrix as table rows, one per backbone, one column per backbone."""
    return [{"backbone": a, **{b: matrix[i][j] for j, b in enumerate(names)}} for i, a in enumerate(names)]


def _flat_cascade_rows(cascade_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cascade rows for a flat table: the `stopped_after` dict becomes `stopped_after_<k>` columns."""
    return [{**{k: v for k, v in r.items() if k != "stopped_after"},
             **{f"stopped_after_{k}": v for k, v in r["stopped_after"].items()}} for r in cascade_rows]


__all__ = [
    "NORMALISATIONS", "ScoreSet", "SynergyReport", "evaluate_synergy", "FittedCombiners", "agreement_matrix", "accuracy_table", "cascade",
    "BackboneHits", "CascadeCounts", "CombinerCounts", "SubsetCounts", "stream_chunks", "topk_levels",
    "check_aligned_feature_sets", "check_labels", "complementarity_matrix", "feature_statistics",
    "fit_combiners", "fit_linear_probe", "model_cost", "normalisation_study", "normalise_features",
    "oracle_accuracy", "per_backbone_accuracy", "per_class_best", "predict_combiners", "predictions_streaming",
    "subset_mean_probs", "synergy_summary", "zero_shot_scores",
]
