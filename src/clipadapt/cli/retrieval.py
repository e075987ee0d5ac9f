"""`clipadapt retrieval`: image↔text R@1/5/10, plain CLIP and with DN, from embeddings or captions + images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clipadapt.argtypes import COUNT, SEED
from clipadapt.cli._common import add_encoding_arguments, add_verify_argument, refuse_unused
from clipadapt.cli._conventions import (
    add_out_argument,
    draws_identical,
    identical_draws_note,
    out_dir,
    path_provenance,
    results_path,
    run_provenance,
    vs_baseline,
    write_results,
)
from clipadapt.cli._outputs import DIR, FILE, output_option
from clipadapt.errors import ConfigError
from clipadapt.eval.runners.dn import add_dn_arguments, dn_source_info, shared_images

if TYPE_CHECKING:  # torch-backed: imported where used, so building the parser stays torch-free
    from clipadapt.features.retrieval_dir import RetrievalSet

COMMAND = "retrieval"
HELP = "image↔text retrieval recall (R@1/5/10) with and without Distribution Normalization"
EXAMPLES = """
clipadapt retrieval --embeddings coco/ --dn-source holdout --holdout 100 --dn-samples all --out runs/coco
clipadapt retrieval --captions-json dataset_coco.json --image-root /data/coco --model ViT-B-16@openai --out runs/coco
clipadapt retrieval --dataset 'wds:/data/f30k/{split}/{0..4}.tar' --model ViT-B-16@openai --dn-source holdout
"""


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("input (embeddings, or caption JSON + images through an encoder)")
    src.add_argument("--embeddings", "--features", type=Path,
                     help="retrieval directory: <split>.safetensors with image, text, text_to_image; or "
                          "builtin:coco500")
    src.add_argument("--split", default="test", help="split to evaluate (default: test)")
    src.add_argument("--captions-json", type=Path, help="Karpathy-style caption JSON (Flickr30k / MSCOCO)")
    src.add_argument("--image-root", type=Path, help="folder the JSON's image paths are relative to")
    src.add_argument("--dataset", metavar="SPEC",
                     help="image-caption set instead of --captions-json: wds:PATTERN[?caption=txt] (the caption "
                          "member's lines) or hf:NAME_OR_PATH[?caption=COLUMN] (docs/datasets.md); with --model")
    src.add_argument("--pool-split", default="restval",
                     help="JSON split(s) (comma-separated), or one --dataset split, used as the unlabeled pool for "
                          "DN's means (default: restval)")
    src.add_argument("--model", help="model id ARCH@TAG for the encoder path")
    add_encoding_arguments(src, device=None, on_error="unreadable images: fail, or skip them with their captions "
                                                     "(listed in the results' meta.skipped)")
    src.add_argument("--max-pool", type=COUNT, default=1000, help="encode at most this many pool images (default 1000)")
    output_option(src.add_argument("--save-embeddings", type=Path,
                                   help="write the encoded embeddings as a retrieval directory"), DIR)
    add_dn_arguments(parser, sources=("unlabeled", "holdout", "test"))
    parser.add_argument("--holdout", type=COUNT, default=100,
                        help="with --dn-source holdout: images (with their captions) held out of the evaluation for "
                             "the means")
    parser.add_argument("--holdout-seed", type=SEED, default=0)
    parser.add_argument("--chunk-size", type=COUNT, default=1024, help="queries scored at once")
    add_verify_argument(parser)
    add_out_argument(parser, writes="recall.md, recall.csv", legacy_json=True)
    output_option(parser.add_argument("--table", type=Path, help="also write the recall table here (.md or .csv)"),
                  FILE)


def _load_from_json(args: argparse.Namespace) -> tuple[RetrievalSet, RetrievalSet | None]:
    from clipadapt.encoders import load_encoder
    from clipadapt.features.caption_data import read_karpathy_json, retrieval_set_from_entries

    if not (args.image_root and args.model):
        raise ConfigError("--captions-json needs --image-root and --model")
    encoder = load_encoder(args.model, device=args.device)
    opts = {"on_error": args.on_error, "num_workers": args.num_workers}
    test = retrieval_set_from_entries(encoder, read_karpathy_json(args.captions_json, [args.split]), args.image_root,
                                      args.batch_size, **opts)
    pool = None
    if args.dn_source == "unlabeled":
        entries = read_karpathy_json(args.captions_json, args.pool_split.split(","))[: args.max_pool]
        pool = retrieval_set_from_entries(encoder, entries, args.image_root, args.batch_size, **opts)
    if args.save_embeddings:
        test.meta["dataset"] = str(args.captions_json)
    return test, pool


def _load(args: argparse.Namespace) -> tuple[RetrievalSet, RetrievalSet | None]:
    from clipadapt.features.retrieval_dir import has_retrieval_split, load_retrieval_split, save_retrieval_split

    if args.embeddings:
        refuse_unused(args, "--embeddings", ("--captions-json", "--image-root", "--save-embeddings"),
                      instead="--captions-json/--image-root (encode the images)")
        test = load_retrieval_split(args.embeddings, args.split)
        pool = None
        if args.dn_source == "unlabeled":
            if not has_retrieval_split(args.embeddings, "unlabeled"):
                raise ConfigError(
                    f"{args.embeddings}: no unlabeled.safetensors for DN's means; add one, or pass "
                    "--dn-source holdout (hold out --holdout images) or --dn-source test (transductive)"
                )
            pool = load_retrieval_split(args.embeddings, "unlabeled")
        return test, pool
    if not (args.captions_json or args.dataset):
        raise ConfigError("give --embeddings DIR (or builtin:coco500), --captions-json FILE with --image-root and "
                          "--model, or --dataset wds:/hf: SPEC with --model")
    test, pool = (_load_from_json if args.captions_json else _load_from_dataset)(args)
    if args.save_embeddings:  # the encoded split (and DN's unlabeled pool) as a retrieval directory
        save_retrieval_split(args.save_embeddings, args.split, test)
        if pool is not None:
            save_retrieval_split(args.save_embeddings, "unlabeled", pool)
        print(f"wrote {args.save_embeddings}")
    return test, pool


def _load_from_dataset(args: argparse.Namespace) -> tuple[RetrievalSet, RetrievalSet | None]:
    """--dataset SPEC: the split's images and captions through the encoder; --pool-split for DN's unlabeled pool."""
    from clipadapt.data import build_caption_dataset
    from clipadapt.encoders import load_encoder
    from clipadapt.features.caption_data import retrieval_set_from_dataset

    if not args.model:
        raise ConfigError("--dataset needs --model")
    data = build_caption_dataset(args.dataset, args.split)
    pool_data = None
    if args.dn_source == "unlabeled":
        if "," in args.pool_split:
            raise ConfigError(f"--pool-split {args.pool_split}: with --dataset, give one split")
        pool_data = build_caption_dataset(args.dataset, args.pool_split)
        pool_data = pool_data.subset(range(min(len(pool_data), args.max_pool)))
    encoder = load_encoder(args.model, device=args.device)
    opts = {"on_error": args.on_error, "num_workers": args.num_workers}
    test = retrieval_set_from_dataset(encoder, data, args.batch_size, **opts)
    test.meta.update(dataset=args.dataset, dataset_fingerprint=f"dataset-sha256:{data.fingerprint()}")
    pool = None if pool_data is None else retrieval_set_from_dataset(encoder, pool_data, args.batch_size, **opts)
    return test, pool


def _pool(args: argparse.Namespace, test: RetrievalSet, pool: RetrievalSet | None) -> tuple[RetrievalSet, RetrievalSet]:
    """(evaluated set, pool of the means) for --dn-source."""
    from clipadapt.features.retrieval_dir import holdout_split

    if args.dn_source == "test":
        return test, test
    if args.dn_source == "holdout":
        return holdout_split(test, args.holdout, args.holdout_seed)
    if pool.image is None or pool.text is None:
        raise ConfigError("the unlabeled pool needs both 'image' and 'text' embeddings for DN's two means")
    return test, pool


def run(args: argparse.Namespace) -> int:
    from clipadapt.eval.retrieval import retrieval_with_dn
    from clipadapt.report.tables import markdown_table, write_table

    test, pool = _pool(args, *_load(args))
    seeds = [args.dn_seed + r for r in range(args.dn_repeats)]
    res = retrieval_with_dn(test.image, test.text, test.text_to_image, pool.image, pool.text,
                            lam=args.dn_lambda, n_samples=args.dn_samples, seeds=seeds, chunk_size=args.chunk_size)
    first = res["dn"]["draws"][0]
    shared = test.image.shape[0] if pool is test else shared_images(pool, test)
    res["dn"].update(dn_source_info(args.dn_source, args.split, first["n_image_samples"], first["n_text_samples"],
                                    args.dn_samples, shared=shared))
    res["dn"]["draws_identical"] = draws_identical(args.dn_repeats, (first["n_image_samples"], first["n_text_samples"]),
                                                   (pool.image.shape[0], pool.text.shape[0]))
    if args.dn_source == "holdout":
        res["dn"].update(holdout=args.holdout, holdout_seed=args.holdout_seed)
    res.update(n_images=int(test.image.shape[0]), n_captions=int(test.text.shape[0]), split=args.split, meta=test.meta)
    rows = _rows(res)
    print(markdown_table(rows), end="")
    print(summary_line(res))
    if res["dn"]["draws_identical"]:
        print(identical_draws_note(args.dn_repeats))
    write_results(results_path(args.out), res, _provenance(args, test))
    tables = [args.table] if args.table else []
    if out_dir(args.out):
        tables += [out_dir(args.out) / "recall.md", out_dir(args.out) / "recall.csv"]
    for table in tables:
        print(f"wrote {write_table(table, rows)}")
    return 0


def summary_line(res: dict) -> str:
    """'dn: i2t R@1 59.00 (CLIP 56.75, +2.25)  t2i R@1 ...': DN's mean over draws beside plain CLIP."""
    cells = [f"{d} R@1 {vs_baseline(res['dn']['mean'][f'{d} R@1'], res['plain'][d]['R@1'], 'CLIP')}"
             for d in ("i2t", "t2i") if f"{d} R@1" in res["dn"]["mean"]]
    return "dn: " + "  ".join(cells)


def _provenance(args: argparse.Namespace, test: RetrievalSet) -> dict:
    model = test.meta.get("model") or args.model
    if args.embeddings:
        return path_provenance(args, {"embeddings": args.embeddings}, model=model)
    if args.dataset and not args.captions_json:
        return run_provenance(args, model=model, data=args.dataset, fingerprint=test.meta.get("dataset_fingerprint"))
    return path_provenance(args, {"captions_json": args.captions_json, "image_root": args.image_root}, model=model,
                           unhashed=["image_root"])


def _rows(res: dict) -> list[dict]:
    plain = {f"{d} {k}": v for d in ("i2t", "t2i") for k, v in res["plain"][d].items()}
    std = res["dn"]["std"]
    spread = len(res["dn"]["draws"]) > 1 and not res["dn"].get("draws_identical")
    dn_row = {k: f"{v:.2f} ± {std[k]:.2f}" if spread else v
              for k, v in res["dn"]["mean"].items() if k != "rsum"}
    return [{"method": "CLIP", **plain}, {"method": f"DN (λ={res['dn']['lambda']})", **dn_row}]
