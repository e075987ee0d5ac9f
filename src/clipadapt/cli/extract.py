"""`clipadapt extract`: encode dataset splits into the feature cache (and optionally a feature directory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.argtypes import COUNT, NON_NEGATIVE_INT, SEED
from clipadapt.cli._common import add_file_check_argument, extract_options
from clipadapt.cli._outputs import DIR, output_option
from clipadapt.constants import DEFAULT_BATCH_SIZE, DEFAULT_SHARD_SIZE

COMMAND = "extract"
HELP = "encode a dataset with an open_clip model into the feature cache (raw image + class text embeddings)"
EXAMPLES = """
clipadapt extract --model ViT-B-32@openai --dataset coop:oxford_pets:/data/pets --split train --split test --out feats/
clipadapt extract --model ViT-B-16@openai --dataset imagefolder:/data/pool --split train --sharded --out pool/
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model id: ARCH@TAG (ViT-B-32@openai), ARCH@/path/ckpt.pt, hf-hub:ORG/REPO")
    parser.add_argument("--dataset", required=True, help="dataset spec, e.g. coop:oxford_pets:/data/pets, imagefolder:/data/x")
    parser.add_argument("--split", action="append", default=None, help="split to encode (repeatable; default: test)")
    parser.add_argument("--views", type=COUNT, default=1, help="V > 1: V augmented views per image (crop 0.5-1 + flip)")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the augmented views (used when --views > 1)")
    output_option(parser.add_argument("--out", type=Path,
                                      help="also write a feature directory here (docs/feature-format.md)"), DIR)
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache root (default: $CLIPADAPT_CACHE or ~/.cache/clipadapt)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="auto: AMP on cuda, fp32 on cpu")
    parser.add_argument("--batch-size", type=COUNT, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num-workers", type=NON_NEGATIVE_INT, default=0, help="DataLoader worker processes for image decoding")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail", help="unreadable images: fail, or skip and record them")
    parser.add_argument("--adapter", type=Path, default=None, help="IMO adapter checkpoint to attach to the image tower")
    parser.add_argument("--shard-size", type=COUNT, default=DEFAULT_SHARD_SIZE, help="rows per resumable shard")
    parser.add_argument("--sharded", action="store_true",
                        help="keep each split as its shards + a <split>.shards.json index, never assembled in memory "
                             "(splits larger than memory; --out then writes a sharded feature directory)")
    add_file_check_argument(parser)


def run(args: argparse.Namespace) -> int:
    from clipadapt.features.distributed import detect_env, extract_distributed

    options = extract_options(args, views=args.views, seed=args.seed)
    if detect_env().is_distributed:  # under torchrun: docs/scaling.md
        return extract_distributed(args.model, args.dataset, args.split or ["test"], options,
                                   finish=lambda encoder: _extract(args, options, encoder), cache_dir=args.cache_dir,
                                   device=args.device, adapter=args.adapter)
    return _extract(args, options)


def _extract(args: argparse.Namespace, options, encoder=None) -> int:
    from clipadapt.features.pipeline import get_feature_set, get_sharded_feature_set  # heavy imports only when encoding

    get = get_sharded_feature_set if args.sharded else get_feature_set
    fs = get(args.model, args.dataset, args.split or ["test"], options, cache_dir=args.cache_dir, device=args.device,
             adapter=args.adapter, encoder=encoder)
    print(f"model {fs.meta['model']}  dataset {fs.meta['dataset']}  classes {len(fs.classnames)}  text {tuple(fs.text.shape)}")
    for name, split in fs.splits.items():
        skipped = fs.meta["skipped"].get(name, 0)
        note = f"  ({skipped} unreadable images skipped, see {name}.skipped.json)" if skipped else ""
        shape = (split.n, split.dim) if split.views == 1 else (split.n, split.views, split.dim)
        stored = f" in {len(split.shards)} shards" if args.sharded else ""
        print(f"{name}: {shape}{stored} -> {fs.meta['cache'][name]}{note}")
    if args.out:
        _write_out(args.out, fs, sharded=args.sharded)
        print(f"wrote {'sharded ' if args.sharded else ''}feature directory {args.out}")
    return 0


def _write_out(out: Path, fs, *, sharded: bool) -> None:
    """Each split's skipped-rows file, then the --out feature directory (sharded: index + shard files linked from
    the cache), whose writer records checksums.json last, over every file."""
    from clipadapt.errors import CacheError
    from clipadapt.features.io import save_feature_dir
    from clipadapt.features.shards import save_sharded_feature_dir
    from clipadapt.fileio import atomic_write_json, read_json

    for name in fs.splits:
        skipped_file = Path(fs.meta["cache"][name]) / f"{name}.skipped.json"
        skipped = read_json(skipped_file, what="skipped-rows file") if skipped_file.is_file() else []
        atomic_write_json(out / f"{name}.skipped.json", skipped)
    if sharded:
        try:
            save_sharded_feature_dir(fs, out)
        except FileNotFoundError as e:  # linked after the entry's lock is released: another process repaired it
            raise CacheError(f"{out}: a shard of the cache entry vanished while it was linked ({e.filename}); another "
                             f"process is repairing that entry — run the command again") from e
    else:
        save_feature_dir(fs, out)
