"""Distributed extraction: 2 gloo processes under torchrun give the single-process features row for row,
and a run where one rank dies mid-write resumes to the same output with no half-written shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipadapt.features.distributed import assign_shards, detect_env, run_sharded_extraction, shard_ranges
from clipadapt.features.io import _load_tensors
from clipadapt.features.shards import ShardedSplit, shard_file_name

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_dist_worker.py"
N, SHARD = 22, 4  # 6 shards, the last one short


def test_shard_plan_covers_every_row_once_in_order():
    for n, size, world in [(22, 4, 2), (10, 3, 4), (5, 10, 3), (0, 4, 2), (100, 7, 3)]:
        ranges = shard_ranges(n, size)
        blocks = [assign_shards(ranges, r, world) for r in range(world)]
        flat = [row for block in blocks for (a, b) in block for row in range(a, b)]
        assert flat == list(range(n))  # no duplicate, no padding, rank order = row order
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_detect_env_reads_torchrun_variables():
    assert detect_env({}).world_size == 1
    env = detect_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_distributed, env.is_main) == (3, 4, 1, True, False)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """One random tiny-ViT state dict shared by every process (identical weights on all ranks)."""
    import open_clip

    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("clipadapt-test-tiny-vit")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def worker(tiny_ckpt):
    """The worker module and its encode_range, loaded in this process (the single-process path)."""
    sys.path.insert(0, str(HERE))
    try:
        import _dist_worker as w
    finally:
        sys.path.remove(str(HERE))
    model, preprocess = w.build_encoder(str(tiny_ckpt))
    return w.make_encode_range(model, preprocess)


@pytest.fixture(scope="module")
def reference(worker) -> torch.Tensor:
    """Single-process features of all rows, encoded in one go."""
    image, _ = worker(0, N)
    return image


def _torchrun(out: Path, ckpt: Path, **extra: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           json.dumps({"out": str(out), "ckpt": str(ckpt), "n": N, "shard_size": SHARD, **extra})]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _check_output(out: Path, reference: torch.Tensor) -> None:
    sharded = ShardedSplit.open(out, "test")
    loaded = sharded.load()
    assert loaded.n == N  # no duplicate or padding rows
    torch.testing.assert_close(loaded.image, reference, rtol=0, atol=1e-6)
    assert torch.equal(loaded.label, torch.arange(N) % 3)
    merged = _load_tensors(out / "test.safetensors")
    assert torch.equal(merged["image"], loaded.image)
    assert not list((out / "test.shards").glob(".*.tmp"))  # no half-written shard


def test_two_gloo_processes_equal_single_process_row_for_row(tmp_path, tiny_ckpt, reference):
    run = _torchrun(tmp_path, tiny_ckpt)
    assert run.returncode == 0, run.stderr[-3000:]
    _check_output(tmp_path, reference)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(r["encoded"]) for r in reports] == [3, 3]  # each rank encoded its own half


def test_rank_killed_mid_write_then_rerun_completes_identically(tmp_path, tiny_ckpt, worker, reference):
    crashed = _torchrun(tmp_path, tiny_ckpt, die_rank=1, die_at_shard=2)
    assert crashed.returncode != 0
    shard_dir = tmp_path / "test.shards"
    survivors = sorted(p.name for p in shard_dir.glob("*.safetensors"))
    assert "00000016-00000020.safetensors" not in survivors  # rank 1 died before its second shard's rename
    assert "00000012-00000016.safetensors" in survivors  # its first shard was complete
    for name in survivors:  # whatever has its final name is a whole, readable shard
        assert ShardedSplit([shard_dir / name]).n == 4
    assert not (tmp_path / "test.shards.json").exists()  # no index for an incomplete run
    # rerun (here as one process: the shard cut does not depend on the number of processes)
    result = run_sharded_extraction(worker, N, tmp_path, split="test", shard_size=SHARD, progress=False)
    assert sorted(shard_file_name(*r) for r in result.skipped) == survivors  # finished shards not re-encoded
    assert len(result.encoded) + len(result.skipped) == 6
    _check_output(tmp_path, reference)
