"""Distribution Normalization (DN) — Zhou et al., NeurIPS 2023 (docs/methods.md §2).

    S_λ(x, y) = (φ(x) − λ·μ_img)ᵀ (ψ(y) − λ·μ_txt)

`μ_img`, `μ_txt` are means of unlabeled embeddings from the target distribution. Where the subtraction happens
differs by task, and is explicit here (`task=`):

- ``"classification"``: μ_img is the mean of the **raw** image embeddings of the drawn samples. The text side
  follows the same order (subtract from raw, then normalise), with μ_txt chosen by ``text_mean``:

  * ``"prompts"`` (default, docs/methods.md §2 "the mean of all class-prompt embeddings"): μ_txt is the mean of the
    **raw** embeddings t_kj of every class × template prompt; each prompt becomes t_kj − λμ_txt, and the class
    row is the usual prompt ensemble of those (normalise each, average over templates, re-normalise):
    ``c_k = norm(mean_j norm(t_kj − λμ_txt))``; with (C, D) text ``c_k = norm(t_k − λμ_txt)``.
  * ``"classes"``: μ_txt is the mean over classes of the prompt-ensembled rows W_k (each template normalised,
    averaged, re-normalised), and ``c_k = norm(W_k − λμ_txt)``.

  Then ``logits = s · norm(f − λμ_img) · c_kᵀ + b`` (s, b: the model's logit scale and bias; CLIP 100, 0).
  The two agree when the text embeddings are already unit
  vectors and there is one template per class.
- ``"retrieval"`` and ``"caption"``: normalise first, means of the **normalised** embeddings, subtract,
  dot product, **no** re-normalisation: ``S = (norm(f) − λμ_img)·(norm(t) − λμ_txt)``. Only the query-side
  mean can change a ranking; the candidate-side mean adds a per-query constant.

λ = 0.25 is the authors' setting ("DN*", the default); λ = 0.5 is the theory's value; λ = 0 is plain CLIP.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor

from clipadapt.constants import (  # re-exported; defined there so the CLI parser is torch-free
    DEFAULT_LAMBDA,
    DEFAULT_TEXT_MEAN,
    DN_TEXT_MEANS,
    THEORY_LAMBDA,  # noqa: F401
)
from clipadapt.errors import ConfigError
from clipadapt.methods._params import Params
from clipadapt.ops import (
    CLIP_LOGIT_SCALE,
    add_bias,
    check_is_fitted,
    check_same_dim,
    l2_normalize,
    pool_views,
    prompt_ensemble,
    safe_mean,
)

Task = Literal["classification", "retrieval", "caption"]
TextMean = Literal["prompts", "classes"]
TASKS: tuple[str, ...] = ("classification", "retrieval", "caption")


class FewerSamplesWarning(UserWarning):
    """Fewer unlabeled samples were available than `n_samples` asked for; all of them were used."""


def draw_samples(x: Tensor, n_samples: int | None, generator: torch.Generator, what: str = "embeddings") -> Tensor:
    """Rows of `x` drawn uniformly without replacement (all rows when `n_samples` is None).

    Asking for more rows than exist warns (FewerSamplesWarning) and uses every row; an empty `x` is an error.
    """
    n = int(x.shape[0])
    if n == 0:
        raise ConfigError(f"DN needs unlabeled {what} to estimate its mean, but 0 were given")
    if n_samples is None or n_samples == n:
        return x
    if n_samples < 1:
        raise ConfigError(f"n_samples must be >= 1 (or None for all), got {n_samples}")
    if n_samples > n:
        warnings.warn(
            f"DN: asked for {n_samples} unlabeled {what} but only {n} are available; using all {n}",
            FewerSamplesWarning,
            stacklevel=3,
        )
        return x
    return x[torch.randperm(n, generator=generator)[:n_samples].to(x.device)]


class DistributionNormalizer(Params):
    """Test-time Distribution Normalization of CLIP scores (docs/methods.md §2); see the module docstring."""

    def __init__(
        self,
        *,
        lam: float = DEFAULT_LAMBDA,
        n_samples: int | None = 100,
        seed: int = 0,
        task: Task = "classification",
        logit_scale: float = CLIP_LOGIT_SCALE,
        text_mean: TextMean = DEFAULT_TEXT_MEAN,
        logit_bias: float = 0.0,
    ):
        self.lam, self.n_samples, self.seed, self.task, self.logit_scale = lam, n_samples, seed, task, logit_scale
        self.text_mean, self.logit_bias = text_mean, logit_bias

    def _check_params(self) -> None:
        try:
            lam = float(self.lam)
        except (TypeError, ValueError):
            lam = math.nan
        if not math.isfinite(lam):
            raise ConfigError(f"DistributionNormalizer: lam must be a finite number, got {self.lam!r}")
        if self.task not in TASKS:
            raise ConfigError(f"DistributionNormalizer: task must be one of {TASKS}, got '{self.task}'")
        if self.n_samples is not None and self.n_samples < 1:
            raise ConfigError(f"DistributionNormalizer: n_samples must be >= 1 or None (all), got {self.n_samples}")
        if self.text_mean not in DN_TEXT_MEANS:
            raise ConfigError(f"DistributionNormalizer: text_mean must be one of {DN_TEXT_MEANS}, got '{self.text_mean}'")

    def fit(self, image_embeddings: Tensor, text_embeddings: Tensor) -> DistributionNormalizer:
        """Estimate μ_img and μ_txt from unlabeled raw embeddings.

        `image_embeddings`: (N, D) or (N, V, D) raw (views averaged first); `n_samples` rows drawn with `seed`.
        `text_embeddings`: classification — the raw class text (C, D) or (C, T, D), every class and template
        used (μ_txt per `text_mean`), kept as the classifier for `predict_logits`; retrieval / caption — (M, D)
        unlabeled captions, `n_samples` drawn with the same generator after the images.
        """
        self._check_params()
        image = pool_views(image_embeddings)
        check_same_dim(image, text_embeddings, "DN image embeddings", "DN text embeddings")
        g = torch.Generator().manual_seed(int(self.seed))
        image = draw_samples(image, self.n_samples, g, "images")
        self.n_image_samples_ = int(image.shape[0])
        if self.task == "classification":
            self.image_mean_ = safe_mean(image, dim=0)  # raw embeddings: a plain float32 sum could overflow
            rows = self._text_mean_rows(text_embeddings)
            self.n_text_samples_ = int(rows.shape[0])
            self.text_mean_ = safe_mean(rows, dim=0)
            self.classifier_ = self._class_rows(text_embeddings)
        else:
            if text_embeddings.ndim != 2:
                raise ConfigError(
                    f"DN ({self.task}): text embeddings must be (M, D) captions, got {tuple(text_embeddings.shape)}"
                )
            text = draw_samples(text_embeddings, self.n_samples, g, "captions")
            self.n_text_samples_ = int(text.shape[0])
            self.image_mean_ = l2_normalize(image).mean(dim=0)
            self.text_mean_ = l2_normalize(text).mean(dim=0)
        return self

    def _text_mean_rows(self, text: Tensor) -> Tensor:
        """The rows μ_txt averages: every raw prompt embedding ('prompts') or every ensembled class ('classes')."""
        if self.text_mean == "prompts":
            if text.ndim not in (2, 3):
                raise ConfigError(f"DN class text must be (C, D) or (C, T, D) embeddings, got {tuple(text.shape)}")
            return text.reshape(-1, text.shape[-1])
        return prompt_ensemble(text)

    def _class_rows(self, text: Tensor) -> Tensor:
        """(C, D) unit DN class rows: subtract λμ_txt from each raw prompt then ensemble ('prompts'), or subtract
        it from the ensembled class row and re-normalise ('classes')."""
        if self.text_mean == "prompts":
            return prompt_ensemble(text - self.lam * self.text_mean_)
        return l2_normalize(prompt_ensemble(text) - self.lam * self.text_mean_)

    def transform_image(self, image: Tensor) -> Tensor:
        """(N, D) or (N, V, D) raw -> (N, D) DN image side (views averaged on the raw embeddings first)."""
        check_is_fitted(self, "image_mean_")
        f = pool_views(image)
        check_same_dim(f, self.image_mean_, "image embeddings", "the fitted DN image mean")
        if self.task == "classification":
            return self._centre_and_scale(f, 1.0)
        return l2_normalize(f) - self.lam * self.image_mean_

    def _centre_and_scale(self, f: Tensor, scale: float) -> Tensor:
        """scale · norm(f − λμ_img): the subtraction makes a fresh buffer, normalised and scaled in place, so DN
        costs no more passes over the (N, D) features than plain zero-shot's normalise-then-scale."""
        out = f - self.lam * self.image_mean_
        norm = out.norm(dim=-1, keepdim=True)
        # huge raw embeddings: the overflow-safe normalisation (not while torch.export traces: no data branch)
        if not torch.compiler.is_compiling() and not bool(torch.isfinite(norm).all()):
            return l2_normalize(out).mul_(scale)
        return out.mul_(scale / norm.clamp_min_(1e-12))

    def transform_text(self, text: Tensor) -> Tensor:
        """Raw text -> DN text side: classification (C, D)|(C, T, D) class text; retrieval/caption (M, D)."""
        check_is_fitted(self, "text_mean_")
        check_same_dim(text, self.text_mean_, "text embeddings", "the fitted DN text mean")
        if self.task == "classification":
            return self._class_rows(text)
        return l2_normalize(text) - self.lam * self.text_mean_

    def score(self, image: Tensor, text: Tensor) -> Tensor:
        """(N, M) DN similarities S_λ between every image and every text (no logit scale)."""
        return self.transform_image(image) @ self.transform_text(text).T

    def pair_score(self, image: Tensor, text: Tensor) -> Tensor:
        """(N,) DN similarity of each (image_i, text_i) pair — caption scoring."""
        if image.shape[0] != text.shape[0]:
            raise ConfigError(f"pair_score: {image.shape[0]} images but {text.shape[0]} texts")
        return (self.transform_image(image) * self.transform_text(text)).sum(dim=-1)

    def predict_logits(self, features: Tensor) -> Tensor:
        """Classification: (N, D) or (N, V, D) raw image embeddings -> (N, C) logits against the fitted classes."""
        if self.task != "classification":
            raise ConfigError(f"predict_logits is for task='classification'; this normalizer has task='{self.task}'")
        check_is_fitted(self, "classifier_")
        f = pool_views(features)
        check_same_dim(f, self.image_mean_, "image embeddings", "the fitted DN image mean")
        return add_bias(self._centre_and_scale(f, self.logit_scale) @ self.classifier_.T, self.logit_bias)

    def describe(self) -> dict:
        """Hyper-parameters and sample counts for a results file."""
        shown = {"lam", "n_samples", "seed", "task"} | ({"text_mean"} if self.task == "classification" else set())
        out = {("lambda" if k == "lam" else k): v for k, v in self.get_params().items() if k in shown}
        if hasattr(self, "n_image_samples_"):
            out.update(n_image_samples=self.n_image_samples_, n_text_samples=self.n_text_samples_)
        return out
