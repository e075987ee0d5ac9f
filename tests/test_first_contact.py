"""A fresh clone, with nothing beside it and nothing installed from it, runs the quickstart and the real-data tests.

The clone is `git clone` of this checkout's HEAD into a temporary directory (no ../shared next to it); it is
imported through PYTHONPATH=<clone>/src, so the packaged builtin:coco500 data of the clone itself is read.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

# -k: their coco500 tests
COCO500_TESTS = ["tests/test_builtin.py", "tests/test_retrieval.py", "tests/test_zeroshot.py"]


def _git(*args: str, cwd=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip(f"{PROJECT_ROOT} is not a git checkout: there is no repository to clone")
    head = _git("rev-parse", "HEAD", cwd=PROJECT_ROOT)
    dest = tmp_path_factory.mktemp("fresh") / "clipadapt"
    _git("clone", "--quiet", "--no-checkout", str(PROJECT_ROOT), str(dest))
    _git("checkout", "--quiet", head, cwd=dest)
    assert not (dest.parent / "shared").exists()
    return dest


def _env(clone) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLIPADAPT_SHARED_DATA", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(clone / "src"), "CLIPADAPT_CACHE": str(clone.parent / "cache")}


def test_fresh_clone_runs_the_quickstart_from_its_own_package_data(clone):
    where = subprocess.run([sys.executable, "-c", "import clipadapt.builtin as b; print(b.BUILTIN_ROOT)"],
                           cwd=clone, env=_env(clone), capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(clone)), where  # the clone's data, not this checkout's
    run = subprocess.run([sys.executable, "-m", "clipadapt", "retrieval", "--features", "builtin:coco500"],
                         cwd=clone, env=_env(clone), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = {line.split("|")[1].strip(): line for line in run.stdout.splitlines() if line.startswith("| ")}
    assert "CLIP" in rows and "DN (λ=0.25)" in rows


def test_fresh_clone_passes_its_real_embedding_tests(clone):
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k",
                          "coco500 or builtin",
                          *COCO500_TESTS], cwd=clone, env=_env(clone), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "error" not in run.stdout.splitlines()[-1]
