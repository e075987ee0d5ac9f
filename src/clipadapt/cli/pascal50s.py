"""`clipadapt pascal50s`: Pascal-50S pairwise accuracy (HC/HI/HM/MM) of CLIP-S / RefCLIP-S with and without DN."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.argtypes import COUNT, LAMBDA, SEED
from clipadapt.cli._conventions import add_out_argument, out_dir, results_path, run_provenance, write_results
from clipadapt.cli._outputs import FILE, output_option
from clipadapt.constants import DEFAULT_BATCH_SIZE, DEFAULT_LAMBDA

COMMAND = "pascal50s"
HELP = "Pascal-50S pairwise accuracy (HC/HI/HM/MM) of caption scores with and without DN, from the original .mat files"
EXAMPLES = """
clipadapt pascal50s --pairs pair_pascal.mat --consensus consensus_pascal.mat --image-root VOC2010/JPEGImages \
--model ViT-B-32@openai --out runs/pascal50s
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=Path, required=True, help="pair_pascal.mat (candidate pairs and categories)")
    parser.add_argument("--consensus", type=Path, required=True,
                        help="consensus_pascal.mat (48 votes + references per pair)")
    parser.add_argument("--image-root", type=Path, required=True, help="folder of the Pascal images (VOC JPEGImages)")
    parser.add_argument("--model", required=True, help="model id ARCH@TAG")
    parser.add_argument("--references", type=COUNT, default=5,
                        help="reference sentences per pair (seeded sample; default 5)")
    parser.add_argument("--vote-positive", choices=["a", "b"], default="a",
                        help="which candidate a +1 consensus vote prefers (default a; see docs/dn.md)")
    parser.add_argument("--dn-lambda", type=LAMBDA, default=DEFAULT_LAMBDA)
    parser.add_argument("--dn-seed", type=SEED, default=0,
                        help="seed of the DN sample draw and of the reference sample")
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=COUNT, default=DEFAULT_BATCH_SIZE)
    add_out_argument(parser, writes="accuracy.md")
    output_option(parser.add_argument("--table", type=Path, help="accuracy table (.md or .csv)"), FILE)


def run(args: argparse.Namespace) -> int:
    from clipadapt.data import path_under
    from clipadapt.data.caption_judgments import read_pascal50s
    from clipadapt.encoders import load_encoder
    from clipadapt.eval.pascal50s import pascal50s_accuracy
    from clipadapt.features.caption_data import encode_captions, encode_image_files
    from clipadapt.report.provenance import path_fingerprint
    from clipadapt.report.tables import markdown_table, write_table

    pairs = read_pascal50s(args.pairs, args.consensus, n_references=args.references, seed=args.dn_seed,
                           positive_is_a=args.vote_positive == "a")
    encoder = load_encoder(args.model, device=args.device)
    images = sorted({p["image"] for p in pairs})
    files = [path_under(args.image_root, i, f"{args.pairs}: image {i!r}") for i in images]  # inside --image-root
    image_emb = encode_image_files(encoder, files, args.batch_size).image
    texts = sorted({t for p in pairs for t in (p["a"], p["b"], *p["references"])})
    text_emb = encode_captions(encoder, texts, args.batch_size)
    img_id, txt_id = {p: i for i, p in enumerate(images)}, {t: i for i, t in enumerate(texts)}
    refs = ([text_emb[[txt_id[r] for r in p["references"]]] for p in pairs] if all(p["references"] for p in pairs)
            else None)
    res = pascal50s_accuracy(image_emb[[img_id[p["image"]] for p in pairs]], text_emb[[txt_id[p["a"]] for p in pairs]],
                             text_emb[[txt_id[p["b"]] for p in pairs]], refs, [p["winner"] for p in pairs],
                             [p["category"] for p in pairs], lam=args.dn_lambda, seed=args.dn_seed)
    res.update(model=args.model, n_pairs=len(pairs), references_per_pair=args.references,
               vote_positive=args.vote_positive, pairs_file=str(args.pairs), consensus_file=str(args.consensus))
    table = [{"metric": m, **acc} for m, acc in res["accuracy"].items()]
    print(markdown_table(table), end="")
    data = {"pairs": str(args.pairs), "consensus": str(args.consensus), "image_root": str(args.image_root)}
    # images: not hashed
    prints = {"pairs": path_fingerprint(args.pairs), "consensus": path_fingerprint(args.consensus)}
    write_results(results_path(args.out), res, run_provenance(args, model=args.model, data=data, fingerprint=prints))
    if out_dir(args.out) is not None:
        write_table(out_dir(args.out) / "accuracy.md", table)
    if args.table:
        print(f"wrote {write_table(args.table, table)}")
    return 0
