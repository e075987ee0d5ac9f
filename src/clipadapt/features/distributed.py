"""Distributed feature extraction on torch.distributed: `torchrun --nproc_per_node=N -m clipadapt extract ...`.

How it works (docs/scaling.md):
- `detect_env()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; `init_distributed()` starts the process
  group (NCCL on CUDA, gloo on CPU) and picks this rank's device (cuda:LOCAL_RANK).
- The split's rows are cut into shards of `shard_size` rows ([0, s), [s, 2s), ...: the same cut for any
  number of processes); rank r takes a contiguous block of shards, so every row is encoded exactly once and
  no padding rows exist (unlike DistributedSampler).
- Each rank writes its own shard files atomically (temp file + rename, `shards.write_shard`): a rank that
  dies leaves at most a temp file, which the next run deletes, never a half-written shard.
- Resume: a shard whose file is already there with the right rows is skipped.
- After a barrier, rank 0 checks every shard is present and writes the shard index (`<split>.shards.json`)
  and, unless `merge=False`, the merged `<split>.safetensors` of the feature-directory format.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clipadapt.errors import CacheError, ConfigError
from clipadapt.features.featureset import FeatureSplit
from clipadapt.features.shards import ShardedSplit, _header, shard_file_name, write_shard, write_shard_index

log = logging.getLogger(__name__)

EncodeRange = Callable[[int, int], tuple[Tensor, Tensor | None]]


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
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({e}); are you running under torchrun?") from e
    if not 0 <= env.rank < env.world_size:
        raise ConfigError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
    return env


def init_distributed(env: DistEnv, device: str | None = None, *, timeout_min: float | None = None) -> str:
    """Start the process group if `env` is distributed; returns this rank's device.

    Backend: NCCL when the device is CUDA, gloo otherwise. `timeout_min` (default $CLIPADAPT_DIST_TIMEOUT_MIN or
    60) bounds how long a rank waits at a barrier for slower ranks.
    """
    if device is None:
        device = f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and env.is_distributed:
        device = f"cuda:{env.local_rank}"
    if not env.is_distributed:
        return device
    import torch.distributed as dist

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
        import torch.distributed as dist

        dist.barrier()


def shutdown(env: DistEnv) -> None:
    """Tear the process group down (no-op for a single process)."""
    if env.is_distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------- shard plan
def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of the shards of an n-row split; independent of the number of processes."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    return [(lo, min(lo + shard_size, n)) for lo in range(0, n, shard_size)]


def assign_shards(ranges: list[tuple[int, int]], rank: int, world_size: int) -> list[tuple[int, int]]:
    """Rank `rank`'s contiguous block of shards: blocks differ in length by at most one shard, cover every
    shard once, and are in rank order (so concatenating ranks' shards gives the split in order)."""
    base, extra = divmod(len(ranges), world_size)
    start = rank * base + min(rank, extra)
    return ranges[start : start + base + (1 if rank < extra else 0)]


def shard_path(shard_dir: Path, start: int, stop: int) -> Path:
    return Path(shard_dir) / shard_file_name(start, stop)


def shard_is_complete(shard_dir: Path, start: int, stop: int) -> bool:
    """Whether the shard of rows [start, stop) exists and its header says it holds stop - start rows."""
    path = shard_path(shard_dir, start, stop)
    if not path.is_file():
        return False
    try:
        image = _header(path).get("image")
    except Exception:  # unreadable: re-encode it
        log.warning("%s: unreadable shard, re-encoding it", path)
        return False
    return image is not None and image[0] == stop - start


def remove_stale_temp_files(shard_dir: Path) -> int:
    """Delete temp files left by a process that died while writing a shard; returns how many."""
    stale = list(Path(shard_dir).glob(".*.tmp")) if Path(shard_dir).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


# ----------------------------------------------------------------------------------------- the run
@dataclass
class ShardedRunResult:
    """What one rank did: shards encoded now, shards skipped as already complete; on rank 0 the opened split."""

    encoded: list[tuple[int, int]]
    skipped: list[tuple[int, int]]
    split: ShardedSplit | None


def run_sharded_extraction(
    encode_range: EncodeRange,
    n: int,
    out_dir: str | Path,
    *,
    split: str,
    shard_size: int = 1024,
    env: DistEnv | None = None,
    merge: bool = True,
    progress: bool = True,
) -> ShardedRunResult:
    """Encode rows [0, n) of `split` as shards under OUT/<split>.shards/, each rank its own contiguous block.

    `encode_range(start, stop)` returns (image (rows, D) or (rows, V, D), label (rows,) or None) for those rows.
    Every rank must call this with the same arguments. Rank 0 writes OUT/<split>.shards.json and (with
    `merge`) OUT/<split>.safetensors once all shards exist.
    """
    env = env or DistEnv()
    out_dir = Path(out_dir)
    shard_dir = out_dir / f"{split}.shards"
    ranges = shard_ranges(n, shard_size)
    mine = assign_shards(ranges, env.rank, env.world_size)
    if env.is_main:
        shard_dir.mkdir(parents=True, exist_ok=True)
        if removed := remove_stale_temp_files(shard_dir):
            log.info("removed %d temp file(s) left by an interrupted run in %s", removed, shard_dir)
    barrier(env)  # nobody writes before the stale temp files are gone
    encoded, skipped = [], []
    bar = tqdm(mine, desc=f"rank {env.rank}/{env.world_size} {split}", unit="shard", disable=not progress,
               position=env.local_rank)
    for start, stop in bar:
        if shard_is_complete(shard_dir, start, stop):
            skipped.append((start, stop))
            continue
        image, label = encode_range(start, stop)
        if image.shape[0] != stop - start:
            raise CacheError(f"encoding rows [{start}, {stop}) returned {image.shape[0]} rows")
        write_shard(shard_dir, start, image, label)
        encoded.append((start, stop))
    barrier(env)  # every shard written
    sharded = finalize_sharded_split(out_dir, split, ranges, merge=merge) if env.is_main else None
    barrier(env)  # rank 0 has written the index
    return ShardedRunResult(encoded=encoded, skipped=skipped, split=sharded)


def finalize_sharded_split(out_dir: Path, split: str, ranges: list[tuple[int, int]], *, merge: bool) -> ShardedSplit:
    """Check every shard is present, write the shard index and optionally the merged split file."""
    shard_dir = Path(out_dir) / f"{split}.shards"
    missing = [r for r in ranges if not shard_is_complete(shard_dir, *r)]
    if missing:
        raise CacheError(f"{shard_dir}: {len(missing)} shard(s) missing after all ranks finished, e.g. rows {missing[0]}")
    sharded = ShardedSplit.open(write_shard_index(out_dir, split, [shard_path(shard_dir, *r) for r in ranges]))
    if merge:
        from clipadapt.features.io import save_split

        save_split(out_dir, split, sharded.load())
    return sharded


def merged_split(out_dir: str | Path, split: str) -> FeatureSplit:
    """The split written by `run_sharded_extraction`, loaded from its shard index."""
    return ShardedSplit.open(out_dir, split).load()


# ----------------------------------------------------------------------------------------- `clipadapt extract`
def _broadcast(env: DistEnv, value):
    """Rank 0's `value` on every rank."""
    if not env.is_distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def extract_distributed(args, finish: Callable[[object], int], env: DistEnv | None = None) -> int:
    """`clipadapt extract` under torchrun: every rank encodes its block of the cache entry's shards, then rank 0
    runs the normal single-process path `finish(encoder)`, which finds every shard done and assembles the
    entry (and --out). Uses the extraction pipeline's shard plan, shard writer and resume check."""
    from clipadapt.data import build_dataset
    from clipadapt.encoders import load_encoder
    from clipadapt.features.cache import FeatureCache, dataset_fingerprint, image_key
    from clipadapt.features.extract import _check_shard_key, encode_shards, missing_shards, plan_shards

    env = env or detect_env()
    device = init_distributed(env, args.device)
    try:
        encoder = load_encoder(args.model, device=device, precision=args.precision, adapter=args.adapter)
        cache = FeatureCache(args.cache_dir)
        for split in args.split or ["test"]:
            dataset = build_dataset(args.dataset, split)
            key = image_key(encoder.fingerprint(), dataset_fingerprint(dataset), views=args.views, seed=args.seed)
            entry = cache.image_entry(key)
            todo = None
            if env.is_main:
                if cache.load_split(entry, split, len(dataset.classnames)) is None:
                    entry.begin()
                    _check_shard_key(entry.shard_dir, key)
                    remove_stale_temp_files(entry.shard_dir)
                    todo = True
            if not _broadcast(env, todo):
                continue  # cached already: rank 0's finish() reads it
            mine = assign_shards(plan_shards(len(dataset), args.shard_size), env.rank, env.world_size)
            pending = missing_shards(entry.shard_dir, mine)
            log.info("rank %d/%d, split %s: %d of its %d shards to encode", env.rank, env.world_size, split,
                     len(pending), len(mine))
            encode_shards(encoder, dataset, pending, entry.shard_dir, views=args.views, seed=args.seed,
                          batch_size=args.batch_size, num_workers=args.num_workers, on_error=args.on_error,
                          progress=env.local_rank == 0)
        barrier(env)  # every rank's shards are written
        code = finish(encoder) if env.is_main else 0
        barrier(env)
        return code
    finally:
        shutdown(env)
