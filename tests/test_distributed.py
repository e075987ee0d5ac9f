"""The distributed shard plan and the real sharded extraction path (`extract.encode_shards`, as run by each rank
of `extract_distributed`; the torchrun runs themselves are in tests/test_distributed_cli.py): ranks' blocks
give the single-process features row for row; an interrupted run leaves only whole shards; a rerun resumes
with identical output; `ShardedSplit` reads the pipeline's shards memory-mapped."""

from __future__ import annotations

import pytest
import torch
from _imagedata import CountingEncoder, make_images

from clipadapt.encoders import load_encoder
from clipadapt.features.distributed import assign_shards, detect_env
from clipadapt.features.extract import encode_shards, extract_split
from clipadapt.features.shards import (
    ShardedSplit,
    missing_shards,
    plan_shards,
    read_shard,
    remove_stale_temp_files,
    shard_file_name,
    shard_path,
)

N, SHARD, BATCH = 22, 4, 3


def test_shard_plan_covers_every_row_once_in_order():
    for n, size, world in [(22, 4, 2), (10, 3, 4), (5, 10, 3), (0, 4, 2), (100, 7, 3)]:
        ranges = plan_shards(n, size)
        blocks = [assign_shards(ranges, r, world) for r in range(world)]
        flat = [row for block in blocks for (a, b) in block for row in range(a, b)]
        assert flat == list(range(n))  # no duplicate, no padding, rank order = row order
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_detect_env_reads_torchrun_variables():
    assert detect_env({}).world_size == 1
    env = detect_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_distributed, env.is_main) == (3, 4, 1, True, False)


@pytest.fixture(scope="module")
def enc():
    return load_encoder("clipadapt-test-tiny-vit", device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("images"), N)


@pytest.fixture(scope="module")
def reference(enc, images, tmp_path_factory):
    """The single-process extraction."""
    shard_dir = tmp_path_factory.mktemp("single")
    return extract_split(enc, images, shard_dir=shard_dir, batch_size=BATCH, shard_size=SHARD, progress=False)


@pytest.mark.parametrize("device", [None, "auto", "cuda"])
def test_init_distributed_puts_each_rank_on_its_own_gpu_with_nccl(monkeypatch, device):
    import torch.distributed as dist

    from clipadapt.features.distributed import DistEnv, init_distributed

    calls = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", str(d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.setdefault("backend", backend))
    assert init_distributed(DistEnv(rank=3, world_size=4, local_rank=1), device) == "cuda:1"
    assert calls == {"set_device": "cuda:1", "backend": "nccl"}


def test_ranks_of_a_world_write_disjoint_shards_and_rank0_assembles(enc, images, reference, tmp_path):
    plan = plan_shards(N, SHARD)
    for rank in (1, 2):  # ranks 1 and 2 of a world of 3 have written their blocks
        encode_shards(enc, images, assign_shards(plan, rank, 3), tmp_path, batch_size=BATCH, progress=False)
    assert missing_shards(tmp_path, plan) == assign_shards(plan, 0, 3)  # only rank 0's block is left
    rank0 = CountingEncoder(enc)
    split = extract_split(rank0, images, shard_dir=tmp_path, batch_size=BATCH, shard_size=SHARD, progress=False)
    assert rank0.images == sum(b - a for a, b in assign_shards(plan, 0, 3))  # it encoded only the rest
    torch.testing.assert_close(split.image, reference.image, rtol=0, atol=1e-6)  # row for row
    assert torch.equal(split.label, reference.label) and split.paths == reference.paths
    mapped = ShardedSplit.from_dir(tmp_path, name="test")  # the same shards, memory-mapped
    assert (mapped.n, len(mapped.shards)) == (N, len(plan))
    assert torch.equal(mapped.load().image, split.image) and torch.equal(mapped.load().label, split.label)


def test_interrupted_run_leaves_whole_shards_and_resumes_identically(enc, images, reference, tmp_path):
    crashing = CountingEncoder(enc, fail_after=5)  # batches of 3 never cross a shard: shards 0..8 done, 8..12 not
    with pytest.raises(KeyboardInterrupt):
        extract_split(crashing, images, shard_dir=tmp_path, batch_size=BATCH, shard_size=SHARD, progress=False)
    (tmp_path / f".{shard_file_name(8, 12)}.abc.tmp").write_bytes(b"half")  # a dead writer's temp file
    finished = sorted(p.name for p in tmp_path.glob("rows-*.safetensors"))
    assert finished == [shard_file_name(0, 4), shard_file_name(4, 8)]
    for name in finished:  # everything under a final name is a whole shard
        tensors, _ = read_shard(tmp_path / name)
        assert tensors["image"].shape[0] == SHARD
    assert remove_stale_temp_files(tmp_path) == 1 and not list(tmp_path.glob(".*.tmp"))
    assert remove_stale_temp_files(tmp_path / "missing") == 0
    resumed = CountingEncoder(enc)
    split = extract_split(resumed, images, shard_dir=tmp_path, batch_size=BATCH, shard_size=SHARD, progress=False)
    assert resumed.images == N - 8  # rows 8..21 only
    torch.testing.assert_close(split.image, reference.image, rtol=0, atol=1e-6)
    assert torch.equal(split.label, reference.label)
    assert shard_path(tmp_path, 20, 22).is_file()


@pytest.mark.parametrize("order", [["test", "train"], ["train", "test"]])
def test_torchrun_rank0_takes_every_entry_lock_up_front_in_one_global_order(tmp_path, monkeypatch, order):
    """Two jobs listing the same splits in different orders lock the entries in the same (sorted) order, all
    before encoding: neither can hold one entry while waiting for the other's (no deadlock)."""
    from contextlib import contextmanager

    from _imagedata import make_imagefolder

    from clipadapt.encoders.configs import register_model_configs
    from clipadapt.features.cache import FeatureCache
    from clipadapt.features.distributed import DistEnv, extract_distributed
    from clipadapt.features.extract import ExtractOptions

    register_model_configs()
    root = make_imagefolder(tmp_path / "data", per_class=1)
    events: list[str] = []
    original = FeatureCache.lock

    @contextmanager
    def recording_lock(self, entry):
        events.append(f"lock {entry.path.name}")
        with original(self, entry):
            yield

    monkeypatch.setattr(FeatureCache, "lock", recording_lock)
    monkeypatch.setattr("clipadapt.features.extract.encode_shards", lambda *a, **k: events.append("encode"))
    options = ExtractOptions(precision="fp32", shard_size=4, batch_size=4)
    assert extract_distributed("clipadapt-test-tiny-vit", f"imagefolder:{root}", order, options, device="cpu",
                               cache_dir=tmp_path / "cache", finish=lambda encoder: 0, env=DistEnv()) == 0
    locks = [e for e in events if e.startswith("lock")]
    assert len(locks) == 2 and locks == sorted(locks)
    assert events[:2] == locks and events[2:] == ["encode", "encode"]  # every lock before any encoding
