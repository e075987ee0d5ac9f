"""How DN's accuracy / recall moves with λ and with the number of unlabeled samples behind its means.

`sweep_dn(evaluate, ...)` calls `evaluate(lam, n_samples, seed) -> ({metric: value}, {count: value})` on a
grid and returns table rows (mean ± std over seeded draws); `classification_evaluator` and `retrieval_evaluator`
build `evaluate` for a FeatureSet split or a retrieval set.

A sample count that reaches the pool size becomes "all": every image *and every caption* of the pool, so the
row is deterministic and evaluated once (std 0 is then the truth). Without that, a retrieval pool with more
captions than images (5 per image in COCO) would draw `pool_size` of its captions at random — a seed-dependent
mean reported with std 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

from torch import Tensor
from tqdm import tqdm

from clipadapt.constants import (  # re-exported; defined there so the CLI parser is torch-free
    DEFAULT_LAMBDAS,
    DEFAULT_SAMPLES,
    DEFAULT_TEXT_MEAN,
)
from clipadapt.eval.metrics import mean_std, topk_accuracy
from clipadapt.eval.retrieval import evaluate_retrieval
from clipadapt.methods.dn import DistributionNormalizer, FewerSamplesWarning

Evaluate = Callable[[float, "int | None", int], "tuple[dict[str, float], dict[str, int]]"]


def classification_evaluator(pool: Tensor, text: Tensor, test: Tensor, labels: Tensor, *,
                             text_mean: str = DEFAULT_TEXT_MEAN) -> Evaluate:
    """Top-1 of zero-shot + DN on (`test`, `labels`), μ_img from `pool`, μ_txt per `text_mean`."""

    def evaluate(lam: float, n: int | None, seed: int) -> tuple[dict[str, float], dict[str, int]]:
        dn = DistributionNormalizer(lam=lam, n_samples=n, seed=seed, text_mean=text_mean).fit(pool, text)  # type: ignore[arg-type]
        return {"top1": topk_accuracy(dn.predict_logits(test), labels,
                                      ks=(1,))["top1"]}, {"n_used": dn.n_image_samples_}

    return evaluate


def retrieval_evaluator(image: Tensor, text: Tensor, text_to_image: Tensor, pool_image: Tensor,
                        pool_text: Tensor) -> Evaluate:
    """Image→text and text→image R@1 with DN (retrieval task), means from the pool (images and captions used are
    counted separately: `n_used`, `n_text_used`)."""

    def evaluate(lam: float, n: int | None, seed: int) -> tuple[dict[str, float], dict[str, int]]:
        dn = DistributionNormalizer(lam=lam, n_samples=n, seed=seed, task="retrieval").fit(pool_image, pool_text)
        res = evaluate_retrieval(image, text, text_to_image, normalizer=dn, ks=(1,))
        counts = {"n_used": dn.n_image_samples_, "n_text_used": dn.n_text_samples_}
        return {"i2t R@1": res["i2t"]["R@1"], "t2i R@1": res["t2i"]["R@1"]}, counts

    return evaluate


def _row(evaluate: Evaluate, sweep: str, lam: float, n: int | None, seeds: Sequence[int]) -> dict:
    values: dict[str, list[float]] = {}
    counts: dict[str, int] = {}
    for seed in seeds:
        metrics, counts = evaluate(lam, n, seed)
        for k, v in metrics.items():
            values.setdefault(k, []).append(v)
    row = {"sweep": sweep, "lambda": lam, "n_samples": "all" if n is None else n, **counts, "draws": len(seeds)}
    for k, vs in values.items():
        row[k], row[f"{k} std"] = mean_std(vs)
    return row


def whole_pool(n: int | None, pool_size: int) -> int | None:
    """The count to ask DN for: None ("all": every image and caption of the pool) once `n` reaches `pool_size`."""
    return None if n is None or n >= pool_size else n


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

    `pool_size` is the smaller of the pool's image and caption counts. Counts from `pool_size` up are replaced by
    one "all" row: DN's means from the whole pool (every image and every caption), which no seed changes, so it
    is evaluated once. Smaller counts are drawn once per seed.
    """
    counts = [whole_pool(n, pool_size) for n in samples]
    drawn = sorted({n for n in counts if n is not None})
    jobs = [("lambda", lam, whole_pool(fixed_samples, pool_size)) for lam in lambdas]
    jobs += [("samples", fixed_lambda, n) for n in drawn + ([None] if None in counts else [])]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerSamplesWarning)  # n_used in each row says what was used
        for sweep, lam, n in tqdm(jobs, desc="dn-sweep", leave=False):
            rows.append(_row(evaluate, sweep, lam, n, seeds[:1] if n is None else seeds))
    return rows
