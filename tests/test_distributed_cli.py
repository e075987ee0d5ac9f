"""`torchrun --nproc_per_node=2 -m clipadapt extract` (gloo, tiny ViT): the same features as one process, row
for row; a rank killed mid-write leaves no half-written shard and a rerun completes with identical output."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt.cli import main
from clipadapt.features import load_feature_dir

pytestmark = pytest.mark.slow  # torchrun: 3 Python processes per test; run by default, `-m "not slow"` skips

HERE = Path(__file__).resolve().parent
N, SHARD = 22, 4  # 6 shards, the last one short: ranks get shards 0-2 and 3-5
MODEL = "clipadapt-test-tiny-vit"  # random init with a fixed seed: identical on every rank


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    """imagefolder ROOT/test/<class>/*.png, 22 generated images over 3 classes."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(N):
        folder = root / "test" / ["red", "green", "blue"][i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 120, (36, 36, 3))
        pixels[..., i % 3] += 120
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return root


def _args(root: Path, cache: Path, out: Path) -> list[str]:
    return ["extract", "--model", MODEL, "--dataset", f"imagefolder:{root}", "--split", "test", "--device", "cpu",
            "--cache-dir", str(cache), "--out", str(out), "--shard-size", str(SHARD), "--batch-size", "3"]


@pytest.fixture(scope="module")
def reference(image_root, tmp_path_factory):
    """The single-process extraction."""
    tmp = tmp_path_factory.mktemp("single")
    assert main(_args(image_root, tmp / "cache", tmp / "out")) == 0
    return load_feature_dir(tmp / "out")


def _torchrun(args: list[str], *, script: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    target = script or ["-m", "clipadapt"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _assert_same_features(out: Path, reference) -> None:
    got = load_feature_dir(out)
    ref = reference.split("test")
    split = got.split("test")
    assert split.n == N  # no duplicate or padding rows
    torch.testing.assert_close(split.image, ref.image, rtol=0, atol=1e-6)
    assert torch.equal(split.label, ref.label) and split.paths == ref.paths  # same order
    torch.testing.assert_close(got.text, reference.text, rtol=0, atol=1e-6)


def test_torchrun_two_gloo_processes_equal_one_process_row_for_row(image_root, reference, tmp_path):
    run = _torchrun(_args(image_root, tmp_path / "cache", tmp_path / "out"))
    assert run.returncode == 0, run.stderr[-4000:]
    _assert_same_features(tmp_path / "out", reference)
    assert "2 of its 3 shards" not in run.stderr and "0 of its 3 shards" not in run.stderr
    assert run.stderr.count("3 of its 3 shards to encode") == 2  # each rank encoded its own half


def test_rank_killed_mid_write_leaves_no_partial_shard_and_rerun_is_identical(image_root, reference, tmp_path, caplog):
    args = _args(image_root, tmp_path / "cache", tmp_path / "out")
    crash = [str(HERE / "_dist_cli_crash.py"), json.dumps({"die_rank": 1, "die_at_shard": 2})]
    crashed = _torchrun(args, script=crash)
    assert crashed.returncode != 0
    shard_dirs = list((tmp_path / "cache").glob("images/*/shards"))
    assert len(shard_dirs) == 1
    finished = sorted(p.name for p in shard_dirs[0].glob("rows-*.safetensors"))
    assert "rows-000000012-000000016.safetensors" in finished  # rank 1's first shard completed
    assert "rows-000000016-000000020.safetensors" not in finished  # it died before renaming its second
    from clipadapt.features.shards import read_shard

    for name in finished:  # everything under a final name is a whole shard
        tensors, _ = read_shard(shard_dirs[0] / name)
        assert tensors["image"].shape[0] == SHARD
    assert not (tmp_path / "out").exists()
    # rerun, here as a single process (the shard cut does not depend on the process count)
    with caplog.at_level(logging.INFO, logger="clipadapt"):
        assert main(args) == 0
    assert f"resuming: {len(finished)} of 6 shards already encoded" in caplog.text
    _assert_same_features(tmp_path / "out", reference)
    assert not list((tmp_path / "cache").rglob(".*.tmp"))  # the dead rank's temp file is gone


def test_ranks_use_rank0s_cache_key_when_their_file_stats_differ(image_root, reference, tmp_path):
    """Rank 1 sees other mtimes (a node with its own copy of the images): it must still write its shards into
    rank 0's entry, not a second one that rank 0 never reads (rank 0 would then encode them again alone)."""
    run = _torchrun(_args(image_root, tmp_path / "cache", tmp_path / "out"),
                    script=[str(HERE / "_dist_cli_skew.py"), "1"])
    assert run.returncode == 0, run.stderr[-4000:]
    _assert_same_features(tmp_path / "out", reference)
    assert len([p for p in (tmp_path / "cache" / "images").iterdir() if p.is_dir()]) == 1
    assert run.stderr.count("3 of its 3 shards to encode") == 2 and "resuming: 6 of 6 shards" in run.stderr


def test_torchrun_sharded_rank0_publishes_the_index_instead_of_assembling(image_root, reference, tmp_path):
    """`--sharded` under torchrun: each rank encodes its half of the shards, rank 0 writes the entry's index and
    manifest (no `test.safetensors` anywhere, no split assembled or loaded by any rank) and the --out directory
    holds the same rows as the single-process assembled run."""
    args = _args(image_root, tmp_path / "cache", tmp_path / "out") + ["--sharded"]
    run = _torchrun(args, script=[str(HERE / "_dist_cli_no_assemble.py")])
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stderr.count("3 of its 3 shards to encode") == 2
    (entry,) = [p for p in (tmp_path / "cache" / "images").iterdir() if p.is_dir()]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["storage"] == "sharded" and manifest["n"] == N
    assert sum(name.startswith("shards/rows-") for name in manifest["files"]) == 6
    index = json.loads((entry / "test.shards.json").read_text())
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(a, min(a + SHARD, N)) for a in range(0, N, SHARD)]
    assert not (entry / "test.safetensors").exists() and not (tmp_path / "out" / "test.safetensors").exists()
    from clipadapt.features.shards import ShardedSplit

    opened = ShardedSplit.open(tmp_path / "out", "test")
    image = torch.cat([chunk for chunk, _ in opened.iter_chunks(5)])
    torch.testing.assert_close(image, reference.split("test").image, rtol=0, atol=1e-6)
    _assert_same_features(tmp_path / "out", reference)  # load_feature_dir reads the sharded directory too
