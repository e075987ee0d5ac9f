"""Worker for the distributed-extraction tests, launched with `python -m torch.distributed.run ... _dist_worker.py '{"out": ..., "ckpt": ...}'`.

Encodes generated 32×32 images with the tiny ViT (weights from a checkpoint file, so every rank has the same
model) through `run_sharded_extraction`. `config keys die_rank R, die_at_shard K` makes rank R exit abruptly while it
is writing its K-th shard (after the temp file is written, before the rename): the crash the tests resume from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_image(i: int) -> Image.Image:
    """Deterministic image of row i."""
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def build_encoder(ckpt: str):
    import open_clip

    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms("clipadapt-test-tiny-vit")
    model.load_state_dict(torch.load(ckpt, map_location="cpu"))
    return model.eval(), preprocess


def make_encode_range(model, preprocess, batch_size: int = 4):
    def encode_range(start: int, stop: int):
        out = []
        with torch.no_grad():
            for lo in range(start, stop, batch_size):
                batch = torch.stack([preprocess(make_image(i)) for i in range(lo, min(lo + batch_size, stop))])
                out.append(model.encode_image(batch).float())
        return torch.cat(out), torch.arange(start, stop) % 3
    return encode_range


def install_crash(rank_to_die: int, at_shard: int, rank: int) -> None:
    """Make this rank die inside its `at_shard`-th shard write, between temp file and rename."""
    if rank != rank_to_die:
        return
    count = {"n": 0}
    real_replace = os.replace

    def dying_replace(src, dst):
        if str(dst).endswith(".safetensors") and ".shards" in str(dst):
            count["n"] += 1
            if count["n"] == at_shard:
                os._exit(17)
        return real_replace(src, dst)

    os.replace = dying_replace  # the process dies anyway; only shard renames are affected


def main() -> int:
    # one positional JSON argument: torchrun's own parser would claim abbreviations of --options
    cfg = {"n": 20, "shard_size": 4, "die_rank": -1, "die_at_shard": 0, **json.loads(sys.argv[1])}
    args = argparse.Namespace(**cfg)
    torch.set_num_threads(1)
    from clipadapt.features.distributed import detect_env, init_distributed, run_sharded_extraction, shutdown

    env = detect_env()
    init_distributed(env, "cpu")
    install_crash(args.die_rank, args.die_at_shard, env.rank)
    model, preprocess = build_encoder(args.ckpt)
    result = run_sharded_extraction(
        make_encode_range(model, preprocess), args.n, args.out, split="test", shard_size=args.shard_size,
        env=env, progress=False,
    )
    report = {"rank": env.rank, "world_size": env.world_size, "encoded": result.encoded, "skipped": result.skipped}
    Path(args.out, f"rank{env.rank}.json").write_text(json.dumps(report))
    shutdown(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
