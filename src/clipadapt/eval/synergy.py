"""Backbone synergy analyses (docs/methods.md §6): oracle, agreement, complementarity, per-class best backbone,
combiners' accuracy, subsets and a confidence cascade, over per-backbone score sets (`ScoreSet`) whose rows are
the same samples in the same order.

Every function here is pure (tensors / arrays in, numbers and tables out). Logits may be memory-mapped arrays: the
analyses read them `chunk_rows` rows at a time, and `evaluate_synergy` reads each chunk once: every analysis
is a chunk consumer (`update(rows, chunk, labels)`) fed by one loop, `stream_chunks`. The combiners are fitted
in synergy_combiners.py, the normalisation study is synergy_norm.py, the (impure) cost measurement synergy_cost.py.

Accuracy is reported at top-1 and, when there are at least 5 classes, top-5 (`topk_levels`); with fewer classes
top-5 would be trivially 100 % and is omitted everywhere (keys, columns, printed table).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.eval.metrics import topk_correct
from clipadapt.eval.synergy_combiners import (
    FittedCombiners,
    ScoreSet,
    as_float_tensor,
    combine_chunk,
    fit_combiners,
    iter_row_chunks,
    usable,
)
from clipadapt.methods.ensembles import check_labels, check_logits_list


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
    n, _ = check_logits_list(logits)
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
        self.counts = {key: dict.fromkeys(self.ks, 0) for key in usable(fitted, embeddings)}

    def update(self, rows: slice, chunk: list[Tensor], y: Tensor) -> None:
        for key, counts in self.counts.items():
            scores = combine_chunk(self.fitted.combiners[key], chunk, self.embeddings, rows)
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
                 "mean_cost": s["cost"] / self.n,
                 "stopped_after": {f"{k + 1}": c / self.n for k, c in enumerate(s["stops"])}}
                for t, s in self.stats.items()]


class SubsetCounts:
    """Mean of probabilities over every subset of >= 2 backbones (see `subset_mean_probs`), chunk by chunk."""

    def __init__(self, costs: Sequence[float], names: Sequence[str], *, ks: Sequence[int] = (1,),
                 max_backbones: int = 8):
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


# ----------------------------------------------------------------------------------------- cascade, subsets
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
    _, c = check_logits_list(logits)
    if len(costs) != len(logits):
        raise ConfigError(f"{len(costs)} costs for {len(logits)} backbones")
    counts = CascadeCounts(costs, thresholds, temperatures=temperatures, ks=ks or topk_levels(c))
    stream_chunks(logits, labels, [counts], chunk_rows=chunk_rows)
    return counts.rows()


def subset_mean_probs(logits: Sequence[Any], labels: Tensor, costs: Sequence[float], names: Sequence[str], *,
                      max_backbones: int = 8, chunk_rows: int = 1024,
                      ks: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Top-k (k in `ks`, default `topk_levels(C)`) and cost of mean-of-probabilities over every subset of ≥ 2
    backbones (none when B > max_backbones). Each chunk's B probability tables are computed once for every subset.
    """
    _, c = check_logits_list(logits)
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
        fitted = fit_combiners(heldout, names, nlc_kwargs=nlc_kwargs)
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
    n, c = check_logits_list(test.logits, names=names)
    check_labels(test.labels, n, c, "evaluated split")
    if heldout is not None:
        hn, hc = check_logits_list(heldout.logits, names=[f"{x} (held-out)" for x in names])
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
    temps = (fitted.combiners["temperature_mean"].temperatures_.tolist() if "temperature_mean" in fitted.combiners
             else None)
    backbones = BackboneHits(len(names), test.n, ks)
    combiners = CombinerCounts(fitted, test.embeddings, ks)  # sees logits/embeddings only, never the labels
    cascade_counts = CascadeCounts(cost, thresholds, temperatures=temps, ks=ks)
    subset_counts = SubsetCounts(cost, names, ks=ks)
    stream_chunks(test.logits, test.labels, [backbones, combiners, cascade_counts, subset_counts],
                  chunk_rows=chunk_rows)
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
                    cascade_rows: list[dict[str, Any]], preds: Tensor,
                    labels: Tensor) -> dict[str, list[dict[str, Any]]]:
    """The report's tables (name -> rows), in the order they are written: per backbone top-1 (top-5) and cost,
    each combiner's accuracy and gain over the best single backbone, subsets, matrices, per class, cascade."""
    return {
        "per_backbone": [{"backbone": x, "top1": summary["accuracy"][x],
                          **({"top5": summary["accuracy_top5"][x]} if 5 in ks else {}), "cost": k}
                         for x, k in zip(names, cost)],
        "combinations": [{"method": k, **v, "gain_over_best": v["top1"] - summary["best_single"]["top1"],
                          "cost": sum(cost)} for k, v in comb_acc.items()],  # running every backbone
        "subsets": subsets,
        "agreement": _matrix_rows(summary["agreement"], names),
        "complementarity": _matrix_rows(summary["complementarity"], names),
        "per_class_best": per_class_best(preds, labels, names, classnames),
        "cascade": _flat_cascade_rows(cascade_rows),
    }


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

