"""Tip-Adapter and Tip-Adapter-F (docs/methods.md §3), with the TA++ variant of §5.

Cache keys F (NK, D) are the mean of the raw augmented views of each shot, L2-normalised; values L are one-hot.
For a normalised test feature f:

    logits = s · f Wᵀ + b + α · exp(−β (1 − f Fᵀ)) L

s, b: the model's logit scale and bias (CLIP: 100, 0); α is relative to s (docs/methods.md §3).

TA++ (§5): given adapted keys F̃ and adapted test features f̃, only the cache affinity changes:
`exp(−β (1 − f̃ F̃ᵀ))`; the zero-shot term keeps the original f.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from clipadapt.errors import ConfigError
from clipadapt.methods._params import Params
from clipadapt.ops import (
    CLIP_LOGIT_SCALE,
    add_bias,
    check_is_fitted,
    check_same_dim,
    l2_normalize,
    one_hot,
    pool_views,
    prompt_ensemble,
)

TIP_ALPHA = 1.17
TIP_BETA = 1.0


def prepare_features(features: Tensor) -> Tensor:
    """Raw (N, D) or (N, V, D) embeddings -> (N, D) normalised (views averaged before normalising)."""
    return l2_normalize(pool_views(features))


def cache_affinity(cosine: Tensor, beta: float | Tensor) -> Tensor:
    """Tip-Adapter's affinity exp(−β (1 − f Fᵀ)) from the cosine matrix f Fᵀ."""
    return torch.exp(-beta * (1.0 - cosine))


def check_adapted_pair(original: Tensor, adapted: Tensor | None, what: str) -> None:
    """Adapted features must describe the same rows as the original ones (TA++/TX++ are paired)."""
    if adapted is not None and adapted.shape[0] != original.shape[0]:
        raise ConfigError(
            f"adapted {what} have {adapted.shape[0]} rows but the original {what} have {original.shape[0]}: "
            "TA++/TX++ need the same images encoded with and without the adapter"
        )


class TipAdapter(Params):
    """Training-free few-shot cache classifier (docs/methods.md §3); TA++ when fitted with `adapted_keys`."""

    def __init__(self, *, alpha: float = TIP_ALPHA, beta: float = TIP_BETA, logit_scale: float = CLIP_LOGIT_SCALE,
                 logit_bias: float = 0.0):
        self.alpha, self.beta, self.logit_scale, self.logit_bias = alpha, beta, logit_scale, logit_bias

    def fit(self, keys: Tensor, key_labels: Tensor, text: Tensor, *, adapted_keys: Tensor | None = None) -> TipAdapter:
        """Build the cache.

        `keys`: raw shot embeddings (NK, D) or (NK, V, D) (V augmented views, averaged); `key_labels` (NK,);
        `text`: raw class text embeddings (C, D) or (C, T, D); `adapted_keys`: the same shots through the IMO
        adapter (TA++), used only for the cache affinity.
        """
        self.classifier_ = prompt_ensemble(text)
        self.keys_ = prepare_features(keys)
        check_same_dim(self.keys_, self.classifier_, "cache keys", "class text embeddings")
        if key_labels.shape[0] != self.keys_.shape[0]:
            raise ConfigError(f"{key_labels.shape[0]} cache labels for {self.keys_.shape[0]} cache keys")
        self.values_ = one_hot(key_labels.to(self.keys_.device), self.classifier_.shape[0], dtype=self.keys_.dtype)
        check_adapted_pair(keys, adapted_keys, "cache keys")
        self.adapted_keys_ = prepare_features(adapted_keys) if adapted_keys is not None else None
        return self

    # -- pieces shared with the vectorised search (clipadapt.eval.search) ------------------------------------
    def zero_shot_logits(self, features: Tensor) -> Tensor:
        """s · f Wᵀ + b on the original features."""
        check_is_fitted(self, "classifier_")
        f = prepare_features(features)
        check_same_dim(f, self.classifier_, "image features", "class text embeddings")
        return add_bias(self.logit_scale * f @ self.classifier_.T, self.logit_bias)

    def cache_cosine(self, features: Tensor, adapted_features: Tensor | None = None) -> Tensor:
        """f Fᵀ (N, NK), or f̃ F̃ᵀ for a TA++ cache: the cosine matrix the affinity is built from."""
        check_is_fitted(self, "keys_")
        keys = self.cache_keys()
        if self.adapted_keys_ is not None:
            if adapted_features is None:
                raise ConfigError(
                    f"{type(self).__name__} was fitted with adapted cache keys (TA++/TX++): "
                    "predict_logits needs adapted_features too"
                )
            check_adapted_pair(features, adapted_features, "features")
            f = prepare_features(adapted_features)
            check_same_dim(f, keys, "adapted image features", "adapted cache keys")
        else:
            f = prepare_features(features)
            check_same_dim(f, keys, "image features", "cache keys")
        return f @ keys.T

    def cache_keys(self) -> Tensor:
        """The keys the affinity is measured against (adapted ones for TA++)."""
        return self.adapted_keys_ if self.adapted_keys_ is not None else self.keys_

    def predict_logits(self, features: Tensor, adapted_features: Tensor | None = None) -> Tensor:
        """(N, D) or (N, V, D) raw test embeddings -> (N, C) logits."""
        zs = self.zero_shot_logits(features)
        affinity = cache_affinity(self.cache_cosine(features, adapted_features), self.beta)
        return zs + self.alpha * (affinity @ self.values_)


class TipAdapterF(TipAdapter):
    """Tip-Adapter-F (docs/methods.md §3): the cache keys become a trainable linear layer, fine-tuned with α, β fixed.

    The epoch kept is the one with the best *validation* accuracy (the original picked on test); α, β are then
    searched on validation by `clipadapt.eval.search.search_tip_adapter` on the fine-tuned keys. With (NK, V, D)
    training features one view per shot is drawn each epoch (the original re-augments every epoch). Fine-tuned
    keys are used as learned (not re-normalised), as in the original.
    """

    def __init__(
        self,
        *,
        alpha: float = TIP_ALPHA,
        beta: float = TIP_BETA,
        logit_scale: float = CLIP_LOGIT_SCALE,
        logit_bias: float = 0.0,
        epochs: int = 20,
        lr: float = 1e-3,
        eps: float = 1e-4,
        weight_decay: float = 0.01,
        batch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__(alpha=alpha, beta=beta, logit_scale=logit_scale, logit_bias=logit_bias)
        self.epochs, self.lr, self.eps, self.weight_decay = epochs, lr, eps, weight_decay
        self.batch_size, self.seed = batch_size, seed

    def fit(  # type: ignore[override]
        self,
        keys: Tensor,
        key_labels: Tensor,
        text: Tensor,
        *,
        val_features: Tensor | None = None,
        val_labels: Tensor | None = None,
        adapted_keys: Tensor | None = None,
    ) -> TipAdapterF:
        """Build the cache from `keys` (as TipAdapter), then fine-tune the keys on the same shots.

        `val_features`/`val_labels` select the epoch; without them the last epoch is kept.
        """
        if adapted_keys is not None:
            raise ConfigError("TipAdapterF does not support adapted keys (TA++ is training-free)")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(
                f"TipAdapterF needs epochs >= 1 and batch_size >= 1, got {self.epochs}, {self.batch_size}")
        if (val_features is None) != (val_labels is None):
            raise ConfigError("give both val_features and val_labels, or neither")
        super().fit(keys, key_labels, text)
        labels = key_labels.to(self.keys_.device).long()
        views = keys if keys.ndim == 3 else keys.unsqueeze(1)
        weight = torch.nn.Parameter(self.keys_.clone())
        steps_per_epoch = math.ceil(labels.shape[0] / self.batch_size)
        optimizer = torch.optim.AdamW([weight], lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed)
        best_acc, best_keys, history = -1.0, self.keys_, []
        for epoch in range(1, self.epochs + 1):
            self._train_epoch(weight, views, labels, optimizer, schedule, generator)
            self.keys_ = weight.detach().clone()
            acc = self._val_accuracy(val_features, val_labels) if val_features is not None else float("nan")
            history.append(acc)
            if val_features is None or acc > best_acc:  # strict: ties keep the earlier epoch
                best_acc, best_keys, self.best_epoch_ = acc, self.keys_, epoch
        self.keys_, self.val_history_ = best_keys, history
        return self

    def _train_epoch(self, weight, views, labels, optimizer, schedule, generator) -> None:
        n, v = views.shape[0], views.shape[1]
        pick = torch.randint(v, (n,), generator=generator).to(views.device)
        feats = l2_normalize(views[torch.arange(n, device=views.device), pick])
        zs = add_bias(self.logit_scale * feats @ self.classifier_.T, self.logit_bias)
        order = torch.randperm(n, generator=generator).to(views.device)
        with torch.enable_grad():
            for start in range(0, n, self.batch_size):
                batch = order[start : start + self.batch_size]
                affinity = cache_affinity(feats[batch] @ weight.T, self.beta)
                logits = zs[batch] + self.alpha * (affinity @ self.values_)
                loss = torch.nn.functional.cross_entropy(logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()

    @torch.no_grad()
    def _val_accuracy(self, features: Tensor, labels: Tensor) -> float:
        pred = self.predict_logits(features).argmax(dim=1)
        return 100.0 * (pred == labels.to(pred.device)).float().mean().item()
