"""The distributed shard plan and the generic sharded extraction loop (the torchrun runs themselves are in
tests/test_distributed_cli.py): every row once, in order; resume skips finished shards; atomic shards."""

from __future__ import annotations

import pytest
import torch

from clipadapt.features.distributed import (
    DistEnv,
    assign_shards,
    detect_env,
    remove_stale_temp_files,
    run_sharded_extraction,
    shard_ranges,
)
from clipadapt.features.io import _load_tensors
from clipadapt.features.shards import ShardedSplit, shard_file_name, write_shard

N, SHARD = 22, 4


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


def _encode(calls: list):
    """A deterministic 'encoder' of row ranges that records what it was asked for."""
    def encode_range(start, stop):
        calls.append((start, stop))
        rows = torch.arange(start, stop, dtype=torch.float32)
        return torch.stack([rows, rows ** 0.5, -rows], dim=1), torch.arange(start, stop) % 3
    return encode_range


def test_ranks_of_a_world_write_disjoint_shards_and_rank0_assembles(tmp_path):
    calls = {0: [], 1: [], 2: []}
    # ranks 1 and 2 of a world of 3 have written their blocks; rank 0 then encodes only what is left
    for rank in (1, 2):
        encode = _encode(calls[rank])
        for start, stop in assign_shards(shard_ranges(N, SHARD), rank, 3):
            write_shard(tmp_path / "test.shards", start, *encode(start, stop))
    result = run_sharded_extraction(_encode(calls[0]), N, tmp_path, split="test", shard_size=SHARD,
                                    env=DistEnv(), progress=False)
    assert calls[0] == [r for r in shard_ranges(N, SHARD) if r not in calls[1] + calls[2]]  # only the rest
    split = ShardedSplit.open(tmp_path, "test").load()
    assert torch.equal(split.image[:, 0], torch.arange(N, dtype=torch.float32))  # every row once, in order
    assert torch.equal(_load_tensors(tmp_path / "test.safetensors")["image"], split.image)
    assert len(result.skipped) == len(calls[1]) + len(calls[2])


def test_interrupted_run_resumes_from_finished_shards(tmp_path):
    calls: list = []
    encode = _encode(calls)

    def failing(start, stop):
        if start == 12:
            raise RuntimeError("simulated crash")
        return encode(start, stop)

    with pytest.raises(RuntimeError):
        run_sharded_extraction(failing, N, tmp_path, split="test", shard_size=SHARD, progress=False)
    (tmp_path / "test.shards" / ".00000012-00000016.safetensors.abc.tmp").write_bytes(b"half")  # a dead writer's
    assert not (tmp_path / "test.shards.json").exists()
    calls.clear()
    result = run_sharded_extraction(encode, N, tmp_path, split="test", shard_size=SHARD, progress=False)
    assert calls == [(12, 16), (16, 20), (20, 22)] and result.skipped == [(0, 4), (4, 8), (8, 12)]
    assert not list((tmp_path / "test.shards").glob(".*.tmp"))
    assert torch.equal(ShardedSplit.open(tmp_path, "test").load().image[:, 0], torch.arange(N, dtype=torch.float32))
    assert remove_stale_temp_files(tmp_path / "missing") == 0
    assert (tmp_path / "test.shards" / shard_file_name(20, 22)).is_file()
