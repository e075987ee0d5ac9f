"""Distributed feature extraction on torch.distributed: `torchrun --nproc_per_node=N -m clipadapt extract ...`.

How it works (docs/scaling.md):
- `detect_env()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed()` starts the process
  group (NCCL on CUDA, gloo on CPU) and picks this rank's device (cuda:LOCAL_RANK).
- The split's rows are cut into shards of `shard_size` rows (`shards.plan_shards`: [0, s), [s, 2s), ...,
  the same cut for any number of processes); rank r takes a contiguous block of shards (`assign_shards`), so
  every row is encoded exactly once and no padding rows exist (unlike DistributedSampler).
- Each rank encodes its block with the single-process pipeline's `extract.encode_shards`, which writes every
  shard atomically (`shards.write_shard`: temp file + rename): a rank that dies leaves at most a temp file,
  which the next run deletes, never a half-written shard.
- Resume: a shard whose file is already there with the right rows is skipped (`shards.missing_shards`).
- After a barrier, rank 0 runs the normal single-process path, which finds every shard done and publishes
  the cache entry's shard index and manifest (and --out; `--sharded` keeps the split out of memory there too).
- Rank 0 computes each entry's key (with the image files' stats, `cache.dataset_fingerprint`) and sends it to
  every rank, so all ranks write into the one entry rank 0 publishes.
- Rank 0 holds each entry's inter-process lock (`FeatureCache.lock`) from its check to the publishing, so an
  unrelated process asking for the same features waits for the job instead of encoding them too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from clipadapt.errors import ConfigError
from clipadapt.features.cache import FeatureCache, cache_writes, dataset_fingerprint, image_key
from clipadapt.features.extract import ExtractOptions
from clipadapt.features.shards import missing_shards, plan_shards

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class DistEnv:
    """This process's place in a torchrun job (world_size 1 = a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Rank, world size and local rank from torchrun's environment variables (all absent: a single process)."""
    environ = os.environ if environ is None else environ
    try:
        env = DistEnv(
            rank=int(environ.get("RANK", 0)),
            world_size=int(environ.get("WORLD_SIZE", 1)),
            local_rank=int(environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e}); are you running under "
                          "torchrun?") from e
    if not 0 <= env.rank < env.world_size:
        raise ConfigError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
    return env


def init_distributed(env: DistEnv, device: str | None = None, *, timeout_min: float | None = None) -> str:
    """Start the process group if `env` is distributed; returns this rank's device.

    Backend: NCCL when the device is CUDA, gloo otherwise. `timeout_min` (default $CLIPADAPT_DIST_TIMEOUT_MIN or
    60) bounds how long a rank waits at a barrier for slower ranks.
    """
    if device is None or device == "auto":  # 'auto' as in encoders.resolve_device, but per local rank
        device = f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and env.is_distributed:
        device = f"cuda:{env.local_rank}"
    if not env.is_distributed:
        return device
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        minutes = timeout_min if timeout_min is not None else float(os.environ.get("CLIPADAPT_DIST_TIMEOUT_MIN", 60))
        dist.init_process_group(
            backend="nccl" if device.startswith("cuda") else "gloo",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(minutes=minutes),
        )
    return device


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for a single process)."""
    if env.is_distributed:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Tear the process group down (no-op for a single process)."""
    if env.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------- shard plan
def assign_shards(ranges: list[tuple[int, int]], rank: int, world_size: int) -> list[tuple[int, int]]:
    """Rank `rank`'s contiguous block of shards: blocks differ in length by at most one shard, cover every
    shard once, and are in rank order (so concatenating ranks' shards gives the split in order)."""
    base, extra = divmod(len(ranges), world_size)
    start = rank * base + min(rank, extra)
    return ranges[start : start + base + (1 if rank < extra else 0)]


# ----------------------------------------------------------------------------------------- `clipadapt extract`
def _broadcast(env: DistEnv, value):
    """Rank 0's `value` on every rank."""
    if not env.is_distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def extract_distributed(model: str, dataset: str, splits: Sequence[str], options: ExtractOptions, *,
                        finish: Callable[[object], int], cache_dir: str | Path | None = None,
                        device: str | None = None, adapter: str | Path | None = None,
                        env: DistEnv | None = None) -> int:
    """`clipadapt extract` under torchrun: every rank encodes its block of the cache entry's shards, then rank 0
    runs the normal single-process path `finish(encoder)`, which finds every shard done and publishes the
    entry (and --out). Uses the extraction pipeline's shard plan, shard writer and resume check."""
    from clipadapt.data import build_dataset
    from clipadapt.encoders import load_encoder
    from clipadapt.features.extract import encode_shards

    env = env or detect_env()
    device = init_distributed(env, device)
    held = ExitStack()  # rank 0: the entries' locks, until finish() has published them
    try:
        encoder = load_encoder(model, device=device, precision=options.precision, adapter=adapter)
        cache = FeatureCache(cache_dir)
        splits = list(dict.fromkeys(splits))
        datasets = {split: build_dataset(dataset, split) for split in splits}
        keys = None
        if env.is_main:  # rank 0's keys on every rank: the files' stats (or hashes) are taken once, and a node
            # whose copy of the images has other mtimes still writes into the entries rank 0 publishes
            keys = {split: image_key(encoder.fingerprint(), dataset_fingerprint(ds, file_check=options.file_check),
                                     views=options.for_split(split).views, seed=options.seed)
                    for split, ds in datasets.items()}
        keys = _broadcast(env, keys)
        entries = {split: cache.image_entry(keys[split]) for split in splits}
        if env.is_main:  # every lock up front, in one global order: two jobs over the same splits cannot deadlock
            unique = {str(e.path): e for e in entries.values()}
            for path in sorted(unique):
                held.enter_context(cache.lock(unique[path]))
        for split in splits:
            ds, entry, opts = datasets[split], entries[split], options.for_split(split)
            todo = None
            if env.is_main:  # a valid entry (or one migrated from an older cache version) is not encoded again
                with cache_writes(entry.path):
                    cached = cache.open_split(entry, split) or cache.migrate(entry, split, ds.paths, opts.shard_size)
                    if not cached:
                        entry.begin()
                        todo = True
            if not _broadcast(env, todo):
                continue  # cached already: rank 0's finish() reads it
            mine = assign_shards(plan_shards(len(ds), opts.shard_size), env.rank, env.world_size)
            pending = missing_shards(entry.shard_dir, mine)
            log.info("rank %d/%d, split %s: %d of its %d shards to encode", env.rank, env.world_size, split,
                     len(pending), len(mine))
            with cache_writes(entry.path):
                encode_shards(encoder, ds, pending, entry.shard_dir, opts, progress=env.local_rank == 0)
        barrier(env)  # every rank's shards are written
        code = finish(encoder) if env.is_main else 0
        held.close()
        barrier(env)
        return code
    finally:
        held.close()
        shutdown(env)
