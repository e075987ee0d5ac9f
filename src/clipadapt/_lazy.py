"""Lazy package exports (PEP 562): `import clipadapt` and the CLI's parser must not import torch.

A package lists where each public name lives; the submodule is imported on first attribute access, so
`from clipadapt import TipAdapter` still works and `dir(clipadapt)` still lists every export.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, given {submodule (absolute or '.relative'): [names]}."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(module, package), name)
        setattr(importlib.import_module(package), name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(where))

    __getattr__.exports = where  # type: ignore[attr-defined]  (lets a test check __all__ and TYPE_CHECKING agree)
    return __getattr__, __dir__
