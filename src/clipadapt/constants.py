"""Torch-free defaults and choices that the command line needs while it builds its parser.

Each lives here once and is re-exported by the module that uses it (e.g. `clipadapt.methods.dn.DEFAULT_LAMBDA`),
so `clipadapt --help` and argument errors never import torch (docs/cli-startup.md).
"""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"  # clipadapt.__version__; here so that any layer (results provenance, --version) reads it
DEFAULT_LAMBDA = 0.25  # DN's λ, "DN*": the authors' code and tables (docs/methods.md §2)
THEORY_LAMBDA = 0.5  # DN's λ, "DN": the first-order approximation of InfoNCE
DN_TEXT_MEANS = ("prompts", "classes")  # DN classification μ_txt: raw prompt embeddings (spec) | ensembled class rows
DEFAULT_TEXT_MEAN = "prompts"  # docs/methods.md §2: "the mean of all class-prompt embeddings", raw like the image side
DEFAULT_LAMBDAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # `dn-sweep` λ axis
DEFAULT_SAMPLES = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)  # `dn-sweep` sample-count axis
DEFAULT_SHARD_SIZE = 1024  # rows per resumable extraction shard
DEFAULT_BATCH_SIZE = 64  # images per forward when encoding (`--batch-size`, `ExtractOptions.batch_size`)
TOPK_BACKENDS = ("torch", "faiss")  # `search --backend`
GRID_PRESETS = ("tip-adapter", "sus-x", "imo")  # `fewshot --grid-preset`: a paper's search grids and tie order
TIE_BREAKS = ("grid-order", "centre")  # `fewshot --tie-break`: which of equally good validation grid points is kept
HEAD_METHODS = ("zeroshot", "dn", "tip", "tip-f", "tipx", "tip++", "tipx++")  # `clipadapt fit --method`
HEAD_EXPORT_FORMATS = ("onnx", "torch-export")  # `clipadapt export --format`


CACHE_ENV = "CLIPADAPT_CACHE"  # the feature cache root when no --cache-dir is given


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The feature cache root: the argument, else $CLIPADAPT_CACHE, else ~/.cache/clipadapt (torch-free, so the
    CLI's output checks can name it before anything is imported; re-exported by features.cache)."""
    root = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "clipadapt"
    return Path(root).expanduser()
