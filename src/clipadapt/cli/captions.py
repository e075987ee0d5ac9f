"""`clipadapt captions`: CLIPScore / RefCLIPScore with and without DN, and Kendall τ-b/τ-c to human judgments."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from clipadapt.builtin import caption_tensors, is_builtin
from clipadapt.cli._common import add_encoding_arguments, refuse_unused
from clipadapt.cli._conventions import (
    add_out_argument,
    draws_identical,
    identical_draws_note,
    out_dir,
    path_provenance,
    results_path,
    vs_baseline,
    write_results,
)
from clipadapt.cli._outputs import FILE, output_option
from clipadapt.errors import ConfigError, DatasetError
from clipadapt.eval.runners.dn import add_dn_arguments
from clipadapt.fileio import read_text

COMMAND = "captions"
HELP = "caption scoring: CLIPScore/RefCLIPScore with and without DN, Kendall tau to human judgments"
EXAMPLES = """
clipadapt captions --judgments judgments.csv --embeddings emb.safetensors --out runs/captions
clipadapt captions --judgments flickr8k.csv --image-root /data/flickr8k --model ViT-B-32@openai --out runs/flickr8k
"""
REF_SEP = "||"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judgments", type=Path, required=True,
                        help="CSV, one row per human judgment: image, caption, human[, references] (docs/dn.md)")
    parser.add_argument("--embeddings", type=Path,
                        help="safetensors with 'image' (N, D), 'caption' (M, D)[, 'reference' (K, D)]: the CSV's "
                             "image/caption/references columns are then row indices (references ';'-separated); "
                             "or builtin:coco500 (500 images and their 500 captions, row i a matched pair)")
    parser.add_argument("--image-root", type=Path,
                        help="without --embeddings: folder the CSV's image paths are relative to")
    parser.add_argument("--model", help="model id ARCH@TAG: without --embeddings, the encoder of the images and "
                                        "captions; with --embeddings, recorded in the results as the model that "
                                        "computed them")
    add_encoding_arguments(parser, device=None, on_error="unreadable images: fail, or skip them and drop their "
                                                         "judgments (listed in the results JSON)")
    parser.add_argument("--dn-pool", type=Path,
                        help="with --dn-source unlabeled: safetensors with 'image' and 'text' raw embeddings for "
                             "the means")
    add_dn_arguments(parser, source_default="test", sources=("test", "unlabeled"), samples_default=None)
    add_out_argument(parser, writes="correlations.md, correlations.csv, scores.csv (per judgment)", legacy_json=True)
    output_option(parser.add_argument("--table", type=Path,
                                      help="also write the correlation table here (.md or .csv)"), FILE)
    output_option(parser.add_argument("--scores-out", type=Path,
                                      help="also write the per-judgment scores CSV here"), FILE)


def read_judgments(path: Path) -> list[dict[str, str]]:
    """Rows of the judgments CSV; 'image', 'caption' and 'human' are required columns."""
    try:
        rows = list(csv.DictReader(io.StringIO(read_text(path, what="judgments CSV", error=DatasetError), newline="")))
    except OSError as e:
        raise DatasetError(f"{path}: cannot read judgments CSV ({e})") from e
    if not rows:
        raise DatasetError(f"{path}: no judgments")
    missing = [c for c in ("image", "caption", "human") if c not in rows[0]]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; found {list(rows[0])}")
    return rows


def _int(value: str, path: Path, line: int, column: str, n: int) -> int:
    try:
        i = int(value)
    except ValueError as e:
        raise DatasetError(f"{path}: line {line}: column '{column}' must be a row index with --embeddings, got "
                           f"'{value}'") from e
    if not 0 <= i < n:
        raise DatasetError(f"{path}: line {line}: {column} index {i} outside [0, {n})")
    return i


def _from_embeddings(args: argparse.Namespace, rows: list[dict]) -> tuple:
    """(image, caption, references, DN pool, rows, skipped images) from the row indices into --embeddings."""
    from clipadapt.features.io import _require, load_tensors

    tensors = caption_tensors(args.embeddings) if is_builtin(args.embeddings) else load_tensors(args.embeddings)
    image_all = _require(tensors, "image", args.embeddings).float()
    caption_all, ref_all = _require(tensors, "caption", args.embeddings).float(), tensors.get("reference")
    img_idx = [_int(r["image"], args.judgments, i + 2, "image", image_all.shape[0]) for i, r in enumerate(rows)]
    cap_idx = [_int(r["caption"], args.judgments, i + 2, "caption", caption_all.shape[0]) for i, r in enumerate(rows)]
    refs = None
    if "references" in rows[0] and ref_all is not None:
        refs = [ref_all.float()[[_int(x, args.judgments, i + 2, "references", ref_all.shape[0])
                                 for x in r["references"].split(";") if x.strip()]]
                for i, r in enumerate(rows)]
    pool = (image_all[sorted(set(img_idx))], caption_all[sorted(set(cap_idx))])
    return image_all[img_idx], caption_all[cap_idx], refs, pool, rows, []


def _from_images(args: argparse.Namespace, rows: list[dict]) -> tuple:
    """(image, caption, references, DN pool, rows, skipped images), encoding the CSV's images and captions.
    With --on-error skip, the judgments of unreadable images are left out of the returned rows."""
    from clipadapt.data import path_under
    from clipadapt.encoders import load_encoder
    from clipadapt.features.caption_data import encode_captions, encode_image_files

    if not (args.image_root and args.model):
        raise ConfigError("without --embeddings, give --image-root and --model to encode the CSV's images and captions")
    encoder = load_encoder(args.model, device=args.device)
    images = sorted({r["image"] for r in rows})
    files = [path_under(args.image_root, p, f"{args.judgments}: image {p!r}") for p in images]  # inside --image-root
    encoded = encode_image_files(encoder, files, args.batch_size,
                                 on_error=args.on_error, num_workers=args.num_workers)
    if encoded.skipped:
        unreadable = {images[s["row"]] for s in encoded.skipped}
        rows = [r for r in rows if r["image"] not in unreadable]
        if not rows:
            raise DatasetError(f"{args.judgments}: every judged image is unreadable (first: "
                               f"{encoded.skipped[0]['error']})")
        images = [images[i] for i in encoded.rows]
    image_emb = encoded.image
    texts = sorted({r["caption"] for r in rows} | {x.strip() for r in rows
                                                   for x in (r.get("references") or "").split(REF_SEP) if x.strip()})
    text_emb = encode_captions(encoder, texts, args.batch_size)
    img_id, txt_id = {p: i for i, p in enumerate(images)}, {t: i for i, t in enumerate(texts)}
    refs = None
    if "references" in rows[0]:
        refs = [text_emb[[txt_id[x.strip()] for x in r["references"].split(REF_SEP) if x.strip()]] for r in rows]
        if any(ref.shape[0] == 0 for ref in refs):
            raise DatasetError(f"{args.judgments}: a row has an empty 'references' column")
    cap_rows = [txt_id[r["caption"]] for r in rows]
    pool = (image_emb, text_emb[sorted(set(cap_rows))])
    return image_emb[[img_id[r["image"]] for r in rows]], text_emb[cap_rows], refs, pool, rows, encoded.skipped


def run(args: argparse.Namespace) -> int:
    import torch

    from clipadapt.eval.captions import evaluate_caption_scores
    from clipadapt.features.io import _require, load_tensors
    from clipadapt.report.tables import markdown_table, write_table

    rows = read_judgments(args.judgments)
    try:
        [float(r["human"]) for r in rows]
    except ValueError as e:
        raise DatasetError(f"{args.judgments}: column 'human' must be numeric ({e})") from e
    if args.embeddings:
        refuse_unused(args, "--embeddings", ("--image-root",), instead="--image-root with --model (encode the images)")
    image, caption, refs, pool, rows, skipped = (_from_embeddings if args.embeddings else _from_images)(args, rows)
    human = torch.tensor([float(r["human"]) for r in rows])  # rows of skipped images are gone
    if args.dn_source == "unlabeled":
        if not args.dn_pool:
            raise ConfigError("--dn-source unlabeled needs --dn-pool FILE.safetensors (tensors 'image' and 'text')")
        t = load_tensors(args.dn_pool)
        pool = (_require(t, "image", args.dn_pool).float(), _require(t, "text", args.dn_pool).float())
    seeds = [args.dn_seed + r for r in range(args.dn_repeats)]
    res = evaluate_caption_scores(image, caption, human, refs, lam=args.dn_lambda, n_samples=args.dn_samples,
                                  seeds=seeds, pool_image=pool[0], pool_text=pool[1])
    res["dn"].update(source=args.dn_source, transductive=args.dn_source == "test",
                     note="DN scores are not on CLIPScore's scale (no 2.5x, no clamp, can be negative); compare "
                          "correlations only")
    res["dn"]["draws_identical"] = draws_identical(args.dn_repeats,
                                                   (res["dn"]["n_image_samples"], res["dn"]["n_text_samples"]),
                                                   (pool[0].shape[0], pool[1].shape[0]))
    res["model"] = args.model
    res["data"] = {"judgments": str(args.judgments), "n_judgments": len(rows),
                   **({"embeddings": str(args.embeddings)} if args.embeddings
                      else {"image_root": str(args.image_root)}),
                   **({"dn_pool": str(args.dn_pool)} if args.dn_source == "unlabeled" else {})}
    table = [{"metric": m, **c} for m, c in res["correlations"].items()]
    print(markdown_table(table, digits=4), end="")
    for line in summary_lines(res["correlations"]):
        print(line)
    if res["dn"]["draws_identical"]:
        print(identical_draws_note(args.dn_repeats))
    scores = res.pop("scores")
    if skipped:
        res["skipped_images"] = skipped
        print(f"{len(skipped)} unreadable images skipped with their judgments ({len(rows)} judgments left)")
    write_results(results_path(args.out), res, _provenance(args))
    directory = out_dir(args.out)
    for path in [args.table] + ([directory / "correlations.md", directory / "correlations.csv"] if directory else []):
        if path:
            print(f"wrote {write_table(path, table)}")
    score_files = [args.scores_out] + ([directory / "scores.csv"] if directory else [])
    if any(score_files):
        per_row = [{"image": r["image"], "caption": r["caption"], "human": float(human[i]),
                    **{m: float(s[i]) for m, s in scores.items()}} for i, r in enumerate(rows)]
        for path in filter(None, score_files):
            print(f"wrote {write_table(path, per_row)}")
    return 0


def summary_lines(correlations: dict) -> list[str]:
    """'DN-CLIP-S: tau_b 0.5200 (CLIP-S 0.5000, +0.0200)  tau_c ...': each DN metric beside its plain metric."""
    lines = []
    for metric, corr in correlations.items():
        base = correlations.get(metric[len("DN-"):]) if metric.startswith("DN-") else None
        if base is not None:
            cells = [f"{v} {vs_baseline(corr[v], base[v], metric[len('DN-'):], digits=4)}" for v in ("tau_b", "tau_c")]
            lines.append(f"{metric}: " + "  ".join(cells))
    return lines


def _provenance(args: argparse.Namespace) -> dict:
    paths = {"judgments": args.judgments, "embeddings": args.embeddings,
             "image_root": None if args.embeddings else args.image_root,
             "dn_pool": args.dn_pool if args.dn_source == "unlabeled" else None}
    return path_provenance(args, paths, model=args.model, unhashed=["image_root"])
