"""Heads: an adapted classifier fitted once (`clipadapt fit`), saved as one safetensors file, applied anywhere
(`clipadapt predict`, `clipadapt export`, `clipadapt.load_head`). docs/heads.md.

A layer-3 package beside eval: a head combines the estimators (methods), the few-shot protocol (eval.fewshot),
features, encoders and the IMO adapter.
"""

from clipadapt.heads.head import Head
from clipadapt.heads.io import load_head, save_head

__all__ = ["Head", "load_head", "save_head"]
