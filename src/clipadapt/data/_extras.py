"""Optional packages behind some dataset sources: a named error with the pip command when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from clipadapt.errors import DatasetError

# module -> (pyproject extra, pip package)
EXTRAS = {"webdataset": ("wds", "webdataset"), "datasets": ("hf-datasets", "datasets")}


def require(module: str, what: str) -> ModuleType:
    """Import `module` (a key of EXTRAS) or raise DatasetError saying which extra to install for `what`."""
    extra, package = EXTRAS[module]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise DatasetError(
            f"{what} needs the '{package}' package, which is not installed: pip install 'clipadapt[{extra}]' "
            f"(or pip install {package})"
        ) from e
