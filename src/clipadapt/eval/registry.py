"""Registry of methods that `clipadapt eval --method NAME` can run on a FeatureSet.

A runner module under `clipadapt/eval/runners/` registers itself with `@register_eval_method`; adding a method
to the CLI is adding a module, not editing a shared list. A runner gets typed options (a dataclass extending
`EvalOptions`, whose fields are named after the argparse destinations, so the CLI builds it by name) and returns
a `MethodResult`; it prints nothing (lines for the console go in `MethodResult.notes`). Runner modules are
imported while the CLI builds its parser, so they must not import torch at module level: import methods and
features inside the run function.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clipadapt.errors import ConfigError

if TYPE_CHECKING:  # torch-free at import: `clipadapt eval --help` lists the methods without importing torch
    from torch import Tensor

    from clipadapt.features.featureset import FeatureSet


@dataclass
class MethodResult:
    """Test logits of one method plus what produced them (for results.json)."""

    logits: Tensor
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # console lines, printed by the CLI before its summary


@dataclass
class EvalOptions:
    """What every runner reads: the evaluated split, and `fetch(splits)`, which encodes splits the features lack
    through the cache (None when the features come from a directory and nothing can be encoded)."""

    split: str = "test"
    fetch: Callable[[list[str]], FeatureSet] | None = None


RunFn = Callable[["FeatureSet", Any], MethodResult]
ArgsFn = Callable[[argparse.ArgumentParser], None]


@dataclass
class EvalMethod:
    name: str
    run: RunFn
    add_arguments: ArgsFn | None
    help: str
    splits: tuple[str, ...]  # splits the method reads besides 'test' (e.g. 'train', 'val', 'unlabeled')
    options: type[EvalOptions] = EvalOptions


_METHODS: dict[str, EvalMethod] = {}


def register_eval_method(
    name: str, *, help: str, add_arguments: ArgsFn | None = None, splits: tuple[str, ...] = (),
    options: type[EvalOptions] = EvalOptions,
) -> Callable[[RunFn], RunFn]:
    """Decorator: register `run(features, options) -> MethodResult` under `name`; `options` is its dataclass."""

    def decorator(run: RunFn) -> RunFn:
        if name in _METHODS:
            raise ValueError(f"eval method '{name}' registered twice")
        _METHODS[name] = EvalMethod(name=name, run=run, add_arguments=add_arguments, help=help, splits=splits,
                                    options=options)
        return run

    return decorator


def _import_runners() -> None:
    package = importlib.import_module("clipadapt.eval.runners")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def list_eval_methods() -> list[str]:
    _import_runners()
    return sorted(_METHODS)


def get_eval_method(name: str) -> EvalMethod:
    _import_runners()
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
