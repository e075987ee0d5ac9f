"""Backbone synergy, the combiners (docs/methods.md §6) on per-backbone score sets, streamed by rows.

Logits may be memory-mapped `.npy` arrays that do not fit in memory together: everything here reads them
`chunk_rows` rows at a time, so peak memory is O(B · chunk_rows · C) plus any (N, C) output, never O(B · N · C).
The combiners (clipadapt.methods.ensembles, logit_controller) stay pure tensor code; the arrays are read here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.methods.ensembles import COMBINERS, check_logits_list
from clipadapt.methods.logit_controller import NeuralLogitController


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


# ----------------------------------------------------------------------------------------- streaming
def iter_row_chunks(n: int, chunk_rows: int) -> Iterator[slice]:
    """Consecutive row slices of at most `chunk_rows` rows covering [0, n)."""
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}")
    for start in range(0, n, chunk_rows):
        yield slice(start, min(start + chunk_rows, n))


def as_float_tensor(block: np.ndarray | Tensor) -> Tensor:
    if isinstance(block, Tensor):
        return block.float()
    return torch.from_numpy(np.array(block, dtype=np.float32))  # a copy: memmap slices are read-only


def predict_streaming(combiner: Any, logits: Sequence[np.ndarray | Tensor], *, chunk_rows: int = 1024) -> np.ndarray:
    """Apply a (fitted) logits combiner chunk by chunk; returns (N, C) float32.

    `logits` may be memory-mapped arrays (`np.load(path, mmap_mode="r")`): only `chunk_rows` rows of each
    backbone are read at a time.
    """
    n, c = check_logits_list(logits)
    out = np.empty((n, c), dtype=np.float32)
    for rows in iter_row_chunks(n, chunk_rows):
        out[rows] = combiner.predict_logits([as_float_tensor(z[rows]) for z in logits]).numpy()
    return out


def predictions_streaming(logits: Sequence[np.ndarray | Tensor], *, chunk_rows: int = 1024) -> Tensor:
    """(B, N) argmax class of every backbone, read chunk by chunk (what the oracle/agreement analyses need)."""
    n, _ = check_logits_list(logits)
    preds = torch.empty(len(logits), n, dtype=torch.long)
    for rows in iter_row_chunks(n, chunk_rows):
        for b, z in enumerate(logits):
            preds[b, rows] = as_float_tensor(z[rows]).argmax(1)
    return preds


# ----------------------------------------------------------------------------------------- fitting, predicting
@dataclass
class FittedCombiners:
    """Combiners ready to predict: the static ones, and those fitted on a labelled held-out ScoreSet."""

    combiners: dict[str, Any] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)


def fit_combiners(heldout: ScoreSet | None, names: Sequence[str], *, nlc_kwargs: dict | None = None) -> FittedCombiners:
    """Static combiners always (they need no fit); fitted ones (temperatures, stacking, NLC) when a labelled
    held-out set is given. `names`: the backbones, in order (they key the fitted temperatures and weights)."""
    fitted = FittedCombiners({key: cls() for key, cls in COMBINERS.items() if not cls.requires_fit})
    if heldout is None or heldout.labels is None:
        return fitted
    logits = [as_float_tensor(z[:]) for z in heldout.logits]
    for key, cls in COMBINERS.items():
        if cls.requires_fit:
            est = fitted.combiners[key] = cls().fit(logits, heldout.labels)
            fitted.details[key] = {what: dict(zip(names, getattr(est, f"{what}_").tolist()))
                                   for what in ("temperatures", "weights") if hasattr(est, f"{what}_")}
    if heldout.embeddings is not None:
        nlc = NeuralLogitController(**(nlc_kwargs or {})).fit(heldout.embeddings, logits, heldout.labels)
        fitted.combiners["nlc"] = nlc
        fitted.details["nlc"] = {"best_epoch": nlc.best_epoch_, "epochs_run": len(nlc.val_loss_history_),
                                 "hyperparameters": nlc.get_params()}
    return fitted


def usable(fitted: FittedCombiners, embeddings: list[Tensor] | None) -> list[str]:
    """The combiners that can predict: all but the NLC when there are no embeddings."""
    return [key for key, est in fitted.combiners.items()
            if not (isinstance(est, NeuralLogitController) and embeddings is None)]


def combine_chunk(est: Any, chunk: list[Tensor], embeddings: list[Tensor] | None, rows: slice) -> Tensor:
    """(n, C) combined scores of one combiner on one chunk. Gets logits and embeddings only: no combiner can see
    labels."""
    if isinstance(est, NeuralLogitController):
        return est.predict_logits([e[rows] for e in embeddings], chunk)
    return est.predict_logits(chunk)


def predict_combiners(fitted: FittedCombiners, test: ScoreSet, *, chunk_rows: int = 1024) -> dict[str, np.ndarray]:
    """(N, C) combined logits of every usable combiner on `test`, streamed by rows. Reads no labels.

    For the combined logits themselves; `evaluate_synergy` only scores them (`CombinerCounts`, no (N, C) output).
    """
    out = {key: np.empty((test.n, test.num_classes), dtype=np.float32) for key in usable(fitted, test.embeddings)}
    for rows in iter_row_chunks(test.n, chunk_rows):
        chunk = [as_float_tensor(z[rows]) for z in test.logits]
        for key in out:
            out[key][rows] = combine_chunk(fitted.combiners[key], chunk, test.embeddings, rows).numpy()
    return out
