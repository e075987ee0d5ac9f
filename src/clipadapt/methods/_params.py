"""Hyper-parameters by introspection, as scikit-learn does: they are the keyword-only `__init__` parameters,
stored unchanged under their own names, so `type(est)(**est.get_params())` rebuilds an unfitted twin."""

from __future__ import annotations

import copy
import inspect
from typing import Any, TypeVar

from clipadapt.errors import ConfigError

E = TypeVar("E", bound="Params")


class Params:
    """`get_params()` and `with_params(**changes)` from the `__init__` signature; no validation here (that is
    `fit`'s)."""

    @classmethod
    def param_names(cls) -> list[str]:
        """The hyper-parameter names, in `__init__` order."""
        return [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        """{name: value} of every hyper-parameter."""
        return {name: getattr(self, name) for name in self.param_names()}

    def with_params(self: E, **params: Any) -> E:
        """A shallow copy with other hyper-parameters and the same fitted state (e.g. a searched α, β)."""
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no hyper-parameter '{unknown[0]}'")
        clone = copy.copy(self)
        vars(clone).update(params)
        return clone
