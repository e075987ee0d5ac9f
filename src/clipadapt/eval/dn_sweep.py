"""How DN's accuracy / recall moves with λ and with the number of unlabeled samples behind its means.

`sweep_dn(evaluate, ...)` calls `evaluate(lam, n_samples, seed) -> ({metric: value}, n_used)` on a grid and
returns table rows (mean ± std over seeded draws); `classification_evaluator` and `retrieval_evaluator` build
`evaluate` for a FeatureSet split or a retrieval set.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

from torch import Tensor
from tqdm import tqdm

from clipadapt.eval.metrics import mean_std, topk_accuracy
from clipadapt.eval.retrieval import evaluate_retrieval
from clipadapt.methods.dn import DistributionNormalizer, FewerSamplesWarning

Evaluate = Callable[[float, "int | None", int], "tuple[dict[str, float], int]"]
DEFAULT_LAMBDAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
DEFAULT_SAMPLES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def classification_evaluator(pool: Tensor, text: Tensor, test: Tensor, labels: Tensor) -> Evaluate:
    """Top-1 of zero-shot + DN on (`test`, `labels`), means from `pool`."""

    def evaluate(lam: float, n: int | None, seed: int) -> tuple[dict[str, float], int]:
        dn = DistributionNormalizer(lam=lam, n_samples=n, seed=seed).fit(pool, text)
        return {"top1": topk_accuracy(dn.predict_logits(test), labels, ks=(1,))["top1"]}, dn.n_image_samples_

    return evaluate


def retrieval_evaluator(image: Tensor, text: Tensor, text_to_image: Tensor, pool_image: Tensor, pool_text: Tensor) -> Evaluate:
    """Image→text and text→image R@1 with DN (retrieval task), means from the pool."""

    def evaluate(lam: float, n: int | None, seed: int) -> tuple[dict[str, float], int]:
        dn = DistributionNormalizer(lam=lam, n_samples=n, seed=seed, task="retrieval").fit(pool_image, pool_text)
        res = evaluate_retrieval(image, text, text_to_image, normalizer=dn, ks=(1,))
        return {"i2t R@1": res["i2t"]["R@1"], "t2i R@1": res["t2i"]["R@1"]}, dn.n_image_samples_

    return evaluate


def _row(evaluate: Evaluate, sweep: str, lam: float, n: int | None, seeds: Sequence[int]) -> dict:
    values: dict[str, list[float]] = {}
    used = 0
    for seed in seeds:
        metrics, used = evaluate(lam, n, seed)
        for k, v in metrics.items():
            values.setdefault(k, []).append(v)
    row = {"sweep": sweep, "lambda": lam, "n_samples": "all" if n is None else n, "n_used": used, "draws": len(seeds)}
    for k, vs in values.items():
        row[k], row[f"{k} std"] = mean_std(vs)
    return row


def sweep_dn(
    evaluate: Evaluate,
    *,
    pool_size: int,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    samples: Sequence[int] = DEFAULT_SAMPLES,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    fixed_lambda: float = 0.25,
    fixed_samples: int | None = 100,
) -> list[dict]:
    """Rows of the λ sweep (at `fixed_samples`) and the sample-count sweep (at `fixed_lambda`).

    Sample counts above `pool_size` are dropped (one row uses the whole pool instead); a draw that uses the
    whole pool is deterministic, so it is evaluated once.
    """
    capped = sorted({n for n in samples if n < pool_size} | ({pool_size} if any(n >= pool_size for n in samples) else set()))
    jobs = [("lambda", lam, fixed_samples) for lam in lambdas] + [("samples", fixed_lambda, n) for n in capped]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerSamplesWarning)  # n_used in each row says what was used
        for sweep, lam, n in tqdm(jobs, desc="dn-sweep", leave=False):
            whole = n is None or n >= pool_size
            rows.append(_row(evaluate, sweep, lam, n, seeds[:1] if whole else seeds))
    return rows
