"""Combining the logits of several backbones (docs/methods.md §6): static combiners and a stacking baseline.

Every combiner is an estimator over a *list* of per-backbone logits, one (N, C) tensor per backbone, all rows
in the same sample order:

    combiner.fit(held_out_logits, held_out_labels)      # labels are ignored by the static combiners
    combined = combiner.predict_logits(test_logits)     # (N, C); argmax is the prediction

What `predict_logits` returns (documented per class) is always a score whose row-wise argmax is the combined
prediction; where the combination is a probability, the log of that probability is returned so that
`softmax(predict_logits(...))` is the combined distribution. Static combiners learn nothing: they predict
without `fit` (`requires_fit = False`). Streaming memory-mapped logits chunk by chunk is eval/synergy_combiners.py's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.methods._params import Params
from clipadapt.ops import check_is_fitted

LogitsList = Sequence[Tensor]


# ----------------------------------------------------------------------------------------- validation
def check_logits_list(
    logits: Sequence[np.ndarray | Tensor],
    labels: Tensor | None = None,
    what: str = "logits",
    *,
    names: Sequence[str] | None = None,
) -> tuple[int, int]:
    """(N, C) shared by every backbone's logits — tensors or arrays (memory-mapped .npy too, only shapes are read);
    the error names the backbone that differs, as `names[b]` (e.g. its file) or `what[b]`."""
    if len(logits) < 1:
        raise ConfigError(f"{what}: need the logits of at least one backbone, got none")
    names = list(names) if names is not None else [f"{what}[{b}]" for b in range(len(logits))]
    if len(names) != len(logits):
        raise ConfigError(f"{what}: {len(names)} names for the logits of {len(logits)} backbones")
    shape0 = tuple(logits[0].shape)
    if len(shape0) != 2:
        raise ConfigError(f"{names[0]}: expected (N, C) logits, got shape {shape0}")
    for name, z in zip(names[1:], logits[1:]):
        shape = tuple(z.shape)
        if shape != shape0:
            kind = "shape"
            if len(shape) == 2:
                kind = "sample count N" if shape[1] == shape0[1] else "class count C" if shape[0] == shape0[0] else kind
            raise ConfigError(
                f"{name} has shape {shape} but {names[0]} has {shape0}: every backbone must score the same samples "
                f"in the same order over the same classes (same {kind})"
            )
    n, c = shape0
    if labels is not None:
        check_labels(labels, n, c, what)
    return int(n), int(c)


def check_labels(labels: Tensor, n: int, num_classes: int, what: str = "logits") -> None:
    """(N,) integer labels in [0, C) for `what`, N rows of C-class logits; the error names `what`."""
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ConfigError(f"{what}: labels have shape {tuple(labels.shape)} but the logits have N={n} rows")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(
            f"{what}: labels must lie in [0, {num_classes}) for {num_classes}-class logits; "
            f"got [{int(labels.min())}, {int(labels.max())}]"
        )


def fit_temperature(logits: Tensor, labels: Tensor, *, max_iter: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T) on labelled data (Guo et al. 2017).

    Optimised over log T with L-BFGS, in float64 so that CLIP-scale logits (×100) stay stable.
    """
    z, y = logits.detach().double(), labels.long()
    log_t = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


# ----------------------------------------------------------------------------------------- base
class _Combiner(Params):
    """Shared fit/validation: remembers B and C so predicting on other shapes is a clear error. Static combiners
    (`requires_fit = False`) predict unfitted too; fitting them only pins B and C."""

    needs_labels = False
    requires_fit = False

    def fit(self, logits: LogitsList, labels: Tensor | None = None) -> _Combiner:
        if self.needs_labels and labels is None:
            raise ConfigError(f"{type(self).__name__}.fit needs the held-out labels")
        check_logits_list(logits, labels, what="held-out logits")
        self._fit(list(logits), labels)
        self.num_backbones_ = len(logits)
        self.num_classes_ = int(logits[0].shape[1])
        return self

    def _fit(self, logits: list[Tensor], labels: Tensor | None) -> None:
        """Validate the hyper-parameters and learn (static combiners learn nothing)."""

    def predict_logits(self, logits: LogitsList) -> Tensor:
        if self.requires_fit:
            check_is_fitted(self, "num_backbones_")
        check_logits_list(logits)
        if hasattr(self, "num_backbones_") and (len(logits) != self.num_backbones_
                                                or logits[0].shape[1] != self.num_classes_):
            raise ConfigError(
                f"{type(self).__name__} was fitted on {self.num_backbones_} backbones × {self.num_classes_} classes "
                f"but got {len(logits)} backbones × {logits[0].shape[1]} classes"
            )
        return self._combine([z.float() for z in logits])

    def _combine(self, logits: list[Tensor]) -> Tensor:
        raise NotImplementedError


# ----------------------------------------------------------------------------------------- static
class MeanLogits(_Combiner):
    """Average of the raw logits: `z = (1/B) Σ_b z_b`."""

    def _combine(self, logits: list[Tensor]) -> Tensor:
        return torch.stack(logits).mean(0)


class MeanProbs(_Combiner):
    """Average of the softmax probabilities; returns `log((1/B) Σ_b softmax(z_b))`."""

    def _combine(self, logits: list[Tensor]) -> Tensor:
        log_p = torch.stack([z.log_softmax(-1) for z in logits])
        return torch.logsumexp(log_p, dim=0) - math.log(len(logits))


class MajorityVote(_Combiner):
    """Each backbone votes for its argmax class; the class with most votes wins.

    Ties (deterministic): among the classes with the most votes, the one with the highest mean probability wins;
    an exact tie of that too goes to the lowest class index. Returned scores:
    `votes + 0.5 · mean_prob` — the vote count dominates (the tie-break term is < 1) and argmax gives the
    rule above (torch.argmax returns the first maximum).
    """

    def _combine(self, logits: list[Tensor]) -> Tensor:
        n, c = logits[0].shape
        votes = torch.zeros(n, c, device=logits[0].device)
        for z in logits:
            votes.scatter_add_(1, z.argmax(1, keepdim=True), torch.ones(n, 1, device=z.device))
        mean_prob = torch.stack([z.softmax(-1) for z in logits]).mean(0)
        return votes + 0.5 * mean_prob


class _SelectBackbone(_Combiner):
    """Per sample, keep the log-probabilities of the one backbone with the best score (ties: lowest index)."""

    def _scores(self, log_p: Tensor) -> Tensor:
        """(B, N) score per backbone per sample; higher is more trusted."""
        raise NotImplementedError

    def _combine(self, logits: list[Tensor]) -> Tensor:
        log_p = torch.stack([z.log_softmax(-1) for z in logits])  # (B, N, C)
        choice = self._scores(log_p).argmax(0)  # first maximum: lowest backbone index on ties
        return log_p[choice, torch.arange(log_p.shape[1], device=log_p.device)]

    def selected_backbone(self, logits: LogitsList) -> Tensor:
        """(N,) index of the backbone chosen for each sample."""
        log_p = torch.stack([z.float().log_softmax(-1) for z in logits])
        return self._scores(log_p).argmax(0)


class MaxConfidence(_SelectBackbone):
    """Per sample, the backbone whose top softmax probability is highest."""

    def _scores(self, log_p: Tensor) -> Tensor:
        return log_p.max(-1).values


class MinEntropy(_SelectBackbone):
    """Per sample, the backbone whose softmax distribution has the lowest entropy."""

    def _scores(self, log_p: Tensor) -> Tensor:
        return (log_p.exp() * log_p).sum(dim=-1)  # minus the Shannon entropy


# ----------------------------------------------------------------------------------------- fitted
class TemperatureScaledMean(_Combiner):
    """Fit one temperature per backbone by NLL on held-out labels, then average.

    `average="logits"` (default): `z = (1/B) Σ_b z_b / T_b` — the Neural Logit Controller with constant
    temperatures, so the two are directly comparable. `average="probs"`: `log((1/B) Σ_b softmax(z_b / T_b))`.
    """

    needs_labels = requires_fit = True

    def __init__(self, *, average: str = "logits", max_iter: int = 100):
        self.average, self.max_iter = average, max_iter

    def _fit(self, logits: list[Tensor], labels: Tensor | None) -> None:
        if self.average not in ("logits", "probs"):
            raise ConfigError(f"average must be 'logits' or 'probs', got {self.average!r}")
        # CPU floats
        self.temperatures_ = torch.tensor([fit_temperature(z, labels, max_iter=self.max_iter) for z in logits])

    def _combine(self, logits: list[Tensor]) -> Tensor:
        scaled = [z / t for z, t in zip(logits, self.temperatures_.tolist())]
        if self.average == "logits":
            return torch.stack(scaled).mean(0)
        return MeanProbs()._combine(scaled)


class Stacking(_Combiner):
    """Convex weights over backbones fitted by NLL on held-out labels (a linear opinion pool).

    `w = softmax(a)`, `p(y|x) = Σ_b w_b softmax(z_b / T_b)`; `a` (and, with `temperature_scale=True`, the
    per-backbone temperatures `T_b`, fitted first and independently) are learned on the held-out split.
    Returns `log p`. `weights_` holds w (sums to 1).
    """

    needs_labels = requires_fit = True

    def __init__(self, *, temperature_scale: bool = True, max_iter: int = 200):
        self.temperature_scale, self.max_iter = temperature_scale, max_iter

    def _fit(self, logits: list[Tensor], labels: Tensor | None) -> None:
        if self.temperature_scale:
            self.temperatures_ = torch.tensor([fit_temperature(z, labels) for z in logits])
        else:
            self.temperatures_ = torch.ones(len(logits))
        log_p = self._log_probs(logits).double()  # (B, N, C)
        y = labels.long()
        true_log_p = log_p[:, torch.arange(y.shape[0], device=y.device), y]  # (B, N)
        a = torch.zeros(len(logits), dtype=torch.float64, device=y.device, requires_grad=True)
        opt = torch.optim.LBFGS([a], lr=0.5, max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            log_w = a.log_softmax(0).unsqueeze(1)
            loss = -torch.logsumexp(log_w + true_log_p, dim=0).mean()
            loss.backward()
            return loss

        opt.step(closure)
        self.weights_ = a.detach().softmax(0).float()

    def _log_probs(self, logits: list[Tensor]) -> Tensor:
        return torch.stack([(z / t).log_softmax(-1) for z, t in zip(logits, self.temperatures_.tolist())])

    def _combine(self, logits: list[Tensor]) -> Tensor:
        log_w = self.weights_.clamp_min(1e-30).log().view(-1, 1, 1)
        return torch.logsumexp(log_w + self._log_probs(logits), dim=0)


COMBINERS: dict[str, type[_Combiner]] = {
    "mean_logits": MeanLogits,
    "mean_probs": MeanProbs,
    "majority_vote": MajorityVote,
    "temperature_mean": TemperatureScaledMean,
    "max_confidence": MaxConfidence,
    "min_entropy": MinEntropy,
    "stacking": Stacking,
}
"""Every logits-only combiner by name (the Neural Logit Controller also needs embeddings: logit_controller.py)."""
