"""Eval-method runners; every module here registers itself (see clipadapt.eval.registry)."""
