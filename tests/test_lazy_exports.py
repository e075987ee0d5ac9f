"""Lazy exports only where the torch-free CLI parser needs them (the root package, data, report, eval); there each
package lists its public names three times (__all__, the lazy mapping, the TYPE_CHECKING imports for type
checkers) and the three must agree. The torch-backed packages import plainly and export `__all__`."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import clipadapt

SRC = Path(clipadapt.__file__).parent
PACKAGES = sorted(
    "clipadapt" + ("." + str(p.parent.relative_to(SRC)).replace("/", ".") if p.parent != SRC else "")
    for p in SRC.rglob("__init__.py")
    if "lazy_exports" in p.read_text()
)


def _type_checking_names(init: Path) -> set[str]:
    """Names bound by the imports inside `if TYPE_CHECKING:` of a package's __init__.py."""
    names: set[str] = set()
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                    names |= {alias.asname or alias.name.split(".")[0] for alias in stmt.names}
    return names


PLAIN = ["clipadapt.adapters", "clipadapt.encoders", "clipadapt.features", "clipadapt.heads", "clipadapt.methods"]


def test_only_the_packages_the_parser_needs_export_lazily():
    assert PACKAGES == ["clipadapt", "clipadapt.data", "clipadapt.eval", "clipadapt.report"]


@pytest.mark.parametrize("package", PLAIN)
def test_plain_packages_bind_every_name_in_all(package):
    module = importlib.import_module(package)
    assert not hasattr(module, "__getattr__")
    assert module.__all__ and all(name in vars(module) for name in module.__all__)


@pytest.mark.parametrize("package", PACKAGES)
def test_all_lazy_mapping_and_type_checking_imports_agree(package):
    module = importlib.import_module(package)
    init = Path(module.__file__)
    lazy = set(module.__getattr__.exports)
    assert set(module.__all__) == lazy
    assert _type_checking_names(init) == lazy
