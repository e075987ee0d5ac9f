"""The Neural Logit Controller (docs/methods.md §6): per-sample, per-backbone temperatures from an MLP.

An MLP reads the concatenated image embeddings of all B backbones and outputs B positive temperatures
`τ_b(x) = softplus(h_b(x)) + min_temperature`; the combined logits are `z(x) = Σ_b z_b(x) / τ_b(x)`.
Trained with cross-entropy on a small labelled held-out set (as little as one shot per class) with Adam
(lr 2e-4, weight decay 0.01), hidden width 128, early stopping on a seeded split of that held-out set.

`predict_logits` takes embeddings and logits only: the controller has no way to see test labels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from clipadapt.errors import ConfigError
from clipadapt.methods._params import Params
from clipadapt.methods.ensembles import check_logits_list
from clipadapt.ops import check_is_fitted, l2_normalize


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class NeuralLogitController(Params):
    """MLP on concatenated embeddings -> positive temperature per backbone per sample; `z = Σ_b z_b / τ_b(x)`.

    Hyper-parameters (keyword-only): `hidden` width (128), `lr` (2e-4), `weight_decay` (0.01, Adam's L2 term),
    `max_epochs`, `batch_size`, `val_fraction` of the held-out rows kept aside for early stopping, `patience`
    (epochs without a better validation loss before stopping), `normalize` (L2-normalise each backbone's
    embedding before concatenating: backbones have very different embedding norms), `init_temperature`
    (initial τ for every backbone; None = B, i.e. training starts at the mean of the logits),
    `min_temperature` (lower bound of τ), `seed` (weights init, split and batch order).
    """

    def __init__(
        self,
        *,
        hidden: int = 128,
        lr: float = 2e-4,
        weight_decay: float = 0.01,
        max_epochs: int = 300,
        batch_size: int = 32,
        val_fraction: float = 0.25,
        patience: int = 30,
        normalize: bool = True,
        init_temperature: float | None = None,
        min_temperature: float = 1e-2,
        seed: int = 0,
    ):
        self.hidden, self.lr, self.weight_decay, self.seed = hidden, lr, weight_decay, seed
        self.max_epochs, self.batch_size, self.patience = max_epochs, batch_size, patience
        self.val_fraction, self.normalize = val_fraction, normalize
        self.init_temperature, self.min_temperature = init_temperature, min_temperature

    # ------------------------------------------------------------------------------------- inputs
    def _inputs(self, embeddings: Sequence[Tensor], logits: Sequence[Tensor], what: str,
                labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(N, ΣD) controller input and (B, N, C) logits, with shape (and label) checks naming the backbone."""
        n, _ = check_logits_list(logits, labels, what=f"{what} logits")
        if len(embeddings) != len(logits):
            raise ConfigError(f"{what}: {len(embeddings)} embedding tensors for {len(logits)} logits tensors")
        return self._embedding_input(embeddings, n, what), torch.stack([z.float() for z in logits])

    def _embedding_input(self, embeddings: Sequence[Tensor], n: int, what: str) -> Tensor:
        """(N, ΣD): each backbone's (N, D_b) embeddings (L2-normalised with `normalize`), concatenated."""
        for b, e in enumerate(embeddings):
            if e.ndim != 2 or e.shape[0] != n:
                raise ConfigError(f"{what} embeddings[{b}] has shape {tuple(e.shape)}; expected ({n}, D_{b})")
        return torch.cat([l2_normalize(e.float()) if self.normalize else e.float() for e in embeddings], dim=1)

    def _check_fitted_input(self, x: Tensor, num_backbones: int) -> None:
        """The input matches what the controller was fitted on: same number of backbones, same total width."""
        check_is_fitted(self, "model_")
        if num_backbones != self.num_backbones_:
            raise ConfigError(f"NeuralLogitController was fitted on {self.num_backbones_} backbones, got "
                              f"{num_backbones}")
        if x.shape[1] != self.model_[0].in_features:
            raise ConfigError(
                f"concatenated embeddings have {x.shape[1]} dimensions but the controller was fitted on "
                f"{self.model_[0].in_features}: same backbones, same order?"
            )

    def _temperatures(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(self.model_(x)) + self.min_temperature  # (N, B)

    @staticmethod
    def _combine(logits: Tensor, tau: Tensor) -> Tensor:
        """(B, N, C) logits, (N, B) temperatures -> (N, C) = Σ_b z_b / τ_b."""
        return (logits / tau.T.unsqueeze(-1)).sum(0)

    def _build(self, in_dim: int, num_backbones: int) -> nn.Module:
        model = nn.Sequential(nn.Linear(in_dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, num_backbones))
        init = float(num_backbones if self.init_temperature is None else self.init_temperature)
        if init <= self.min_temperature:
            raise ConfigError(f"init_temperature {init} must exceed min_temperature {self.min_temperature}")
        with torch.no_grad():  # start at uniform temperatures: output = bias
            model[2].weight.zero_()
            model[2].bias.fill_(_inverse_softplus(init - self.min_temperature))
        return model

    def _split(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n_val = max(1, int(round(self.val_fraction * n)))
        if n - n_val < 1:
            raise ConfigError(f"NeuralLogitController needs at least 2 held-out samples (got {n})")
        perm = torch.randperm(n, generator=generator)
        return perm[n_val:], perm[:n_val]

    # ------------------------------------------------------------------------------------- estimator
    def fit(self, embeddings: Sequence[Tensor], logits: Sequence[Tensor], labels: Tensor) -> NeuralLogitController:
        """Train on the held-out split: per-backbone embeddings (N, D_b), logits (N, C), labels (N,)."""
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        x, z = self._inputs(embeddings, logits, "held-out", labels)
        y = labels.long()
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model_ = self._build(x.shape[1], z.shape[0]).to(x.device)  # follow the inputs' device
        train_idx, val_idx = (i.to(x.device) for i in self._split(x.shape[0], generator))
        opt = torch.optim.Adam(self.model_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, best_epoch, stale, history = math.inf, copy.deepcopy(self.model_.state_dict()), -1, 0, []
        for epoch in range(self.max_epochs):
            self.model_.train()
            order = train_idx[torch.randperm(train_idx.numel(), generator=generator).to(x.device)]
            for start in range(0, order.numel(), self.batch_size):
                idx = order[start : start + self.batch_size]
                loss = nn.functional.cross_entropy(self._combine(z[:, idx], self._temperatures(x[idx])), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            val_loss = self._loss(x[val_idx], z[:, val_idx], y[val_idx])
            history.append(val_loss)
            if val_loss < best - 1e-6:
                best, best_state, stale, best_epoch = val_loss, copy.deepcopy(self.model_.state_dict()), 0, epoch
            else:
                stale += 1
                if stale >= self.patience:
                    break
        self.model_.load_state_dict(best_state)
        self.model_.eval()
        self.val_loss_history_ = history
        self.num_backbones_ = int(z.shape[0])
        self.best_epoch_ = best_epoch  # -1: no epoch improved on the initial controller
        return self

    @torch.no_grad()
    def _loss(self, x: Tensor, z: Tensor, y: Tensor) -> float:
        self.model_.eval()
        return float(nn.functional.cross_entropy(self._combine(z, self._temperatures(x)), y))

    @torch.no_grad()
    def temperatures(self, embeddings: Sequence[Tensor]) -> Tensor:
        """(N, B) per-sample, per-backbone temperatures τ_b(x)."""
        check_is_fitted(self, "model_")
        if not embeddings:
            raise ConfigError("temperatures: need the embeddings of every backbone, got none")
        x = self._embedding_input(embeddings, int(embeddings[0].shape[0]), "test")
        self._check_fitted_input(x, len(embeddings))
        return self._temperatures(x)

    @torch.no_grad()
    def predict_logits(self, embeddings: Sequence[Tensor], logits: Sequence[Tensor]) -> Tensor:
        """(N, C) combined logits `Σ_b z_b / τ_b(x)`; reads no labels."""
        check_is_fitted(self, "model_")
        x, z = self._inputs(embeddings, logits, "test")
        self._check_fitted_input(x, z.shape[0])
        return self._combine(z, self._temperatures(x))
