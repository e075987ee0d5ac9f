"""The tree passes `ruff check` with the project's configuration (pyproject.toml: E, F, W, I, B, UP; lines <= 120).

Runs ruff (the `test` extra installs it) on src/, tests/ and benchmarks/ and lists every violation on failure.
Skipped only where ruff is not installed at all."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT


def _ruff() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    exe = shutil.which("ruff")
    return [exe] if exe else None


def test_ruff_check_is_clean():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([*ruff, "check", "--no-cache", "--output-format", "concise", "src", "tests", "benchmarks"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"ruff check found violations:\n{proc.stdout}{proc.stderr}", pytrace=False)
