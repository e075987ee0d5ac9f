"""`clipadapt predict`: label new images (or precomputed features) with a head file from `clipadapt fit`."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

from clipadapt.argtypes import COUNT
from clipadapt.builtin import is_builtin
from clipadapt.cli._common import add_encoding_arguments, add_file_check_argument, extract_options, save_logits
from clipadapt.cli._outputs import FILE, output_option
from clipadapt.constants import cache_root
from clipadapt.errors import ConfigError, HeadMismatchError
from clipadapt.fileio import atomic_write_bytes, read_text

COMMAND = "predict"
HELP = "label images (files, a folder, a CSV) or precomputed features with a head file from `clipadapt fit`"
EXAMPLES = """
clipadapt predict --head pets-tip.safetensors photo1.jpg photo2.jpg --out preds.csv
clipadapt predict --head pets-tip.safetensors --images new_photos/ --topk 3 --on-error skip --out preds.jsonl
clipadapt predict --head pets-tip.safetensors --csv batch.csv --out preds.csv        # batch.csv: a 'path' column
clipadapt predict --head coco-dn.safetensors --features builtin:coco500:test --save-logits logits.npy --out preds.csv
"""
FORMATS = (".csv", ".jsonl")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", type=Path, required=True, help="a head file written by `clipadapt fit`")
    parser.add_argument("images", nargs="*", type=Path, help="image files to label")
    parser.add_argument("--images", dest="image_dir", type=Path, metavar="DIR",
                        help="label every image under DIR (recursively, sorted)")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="label the images of a CSV's 'path' column (paths relative to the CSV's folder)")
    parser.add_argument("--features", metavar="DIR:SPLIT",
                        help="predict from precomputed features of the head's model (split default: test)")
    parser.add_argument("--adapted-features", metavar="DIR:SPLIT",
                        help="with --features, for tip++/tipx++ heads: the same rows through the IMO adapter")
    parser.add_argument("--topk", type=COUNT, default=5, help="labels (with probabilities) per image (default 5)")
    output_option(parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                                      help="predictions: .csv (path, label, probability, top-k columns) or .jsonl "
                                           "(one JSON per row)"), FILE)
    output_option(parser.add_argument("--save-logits", type=Path, metavar="FILE",
                                      help="also write the (N, C) float32 logits as .npy"), FILE)
    enc = parser.add_argument_group("encoding images")
    enc.add_argument("--cache-dir", type=Path, default=None,
                     help="feature cache root (default: $CLIPADAPT_CACHE or ~/.cache/clipadapt)")
    add_encoding_arguments(enc, on_error="unreadable images: fail, or skip them (listed in the output with their "
                                         "error)")
    enc.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_file_check_argument(enc)


def parse_split_spec(spec: str, default: str = "test") -> tuple[str, str]:
    """'DIR:SPLIT' -> (DIR, SPLIT); 'DIR' and 'builtin:NAME' -> (DIR, default)."""
    head, sep, tail = str(spec).rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail or not tail or (is_builtin(spec) and spec.count(":") == 1):
        return str(spec), default
    return head, tail


def _image_paths(args: argparse.Namespace) -> list[str]:
    """Absolute paths of the images to label, in the order given (a folder: sorted)."""
    from clipadapt.data._files import scan_images

    paths = [str(p.expanduser().resolve()) for p in args.images]
    if args.image_dir is not None:
        if not args.image_dir.is_dir():
            raise ConfigError(f"--images {args.image_dir}: not a directory")
        found = scan_images(args.image_dir.resolve())
        if not found:
            raise ConfigError(f"--images {args.image_dir}: no image files found")
        paths += found
    if args.csv is not None:
        text = read_text(args.csv, what="--csv file", error=ConfigError)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "path" not in [c.strip() for c in reader.fieldnames or []]:
            raise ConfigError(f"--csv {args.csv}: needs a 'path' column; found {reader.fieldnames}")
        for row in reader:
            value = {(k or "").strip(): (v or "").strip() for k, v in row.items()}["path"]
            if value:  # relative to the CSV's folder (an absolute path replaces it)
                paths.append(str((args.csv.parent / Path(value).expanduser()).resolve()))
    return paths


def _from_features(args: argparse.Namespace, head) -> tuple[Any, Any, list[str], Any, list[str]]:
    """(features, adapted or None, row names, labels or None, notes) of --features DIR:SPLIT."""
    from clipadapt.features.io import load_feature_dir

    directory, split = parse_split_spec(args.features)
    fs = load_feature_dir(directory, splits=[split])
    rows = fs.split(split)
    notes = head.check_feature_meta(fs.meta, fs.classnames, f"{directory}:{split}", labelled=rows.label is not None)
    adapted = None
    if head.needs_adapted:
        if not args.adapted_features:
            raise ConfigError(f"a {head.method} head needs --adapted-features DIR:SPLIT with --features (the same rows "
                              "through its IMO adapter)")
        a_dir, a_split = parse_split_spec(args.adapted_features)
        adapted = load_feature_dir(a_dir, splits=[a_split]).split(a_split).image
        if adapted.shape[0] != rows.n:
            raise ConfigError(f"--adapted-features {args.adapted_features}: {adapted.shape[0]} rows for {rows.n} "
                              f"rows of --features {args.features}")
    elif args.adapted_features:
        raise ConfigError(f"--adapted-features is for tip++/tipx++ heads; this head is {head.method}")
    names = rows.paths if rows.paths is not None else [f"{split}[{i}]" for i in range(rows.n)]
    return rows.image, adapted, list(names), rows.label, notes


def _from_images(args: argparse.Namespace, head, paths: list[str]):
    """(features, adapted or None, kept paths, skipped {path: error}) encoded through the feature cache."""
    from clipadapt.data.dataset import ImageDataset
    from clipadapt.features.pipeline import DEFAULT_TEMPLATES, get_feature_set

    if head.model_id is None:
        raise HeadMismatchError(head.features_only_message())
    ds = ImageDataset(kind="files", name="predict", split="predict", classnames=head.classnames,
                      templates=head.meta.get("templates") or list(DEFAULT_TEMPLATES), paths=paths,
                      labels=[0] * len(paths))
    common = dict(options=extract_options(args, progress=not args.no_progress), cache_dir=args.cache_dir,
                  device=args.device)
    fs = get_feature_set(head.model_id, {"predict": ds}, ["predict"], **common)
    _check_encoder_meta(head, fs.meta)
    rows = fs.split("predict")
    adapted = None
    if head.needs_adapted:
        if head.adapter is None:
            head.encoder(adapted=True)  # raises: the head stores no adapter (fitted from adapted features)
        # written back byte for byte (same sha256): the cache reuses adapted features encoded earlier
        adapter = head.adapter_checkpoint(Path(args.cache_dir or cache_root()) / "head-adapters"
                                          / head.meta["adapter"]["sha256"][:16])
        adapted = get_feature_set(head.model_id, {"predict": ds}, ["predict"], adapter=adapter,
                                  **common).split("predict").image
    kept = rows.paths if rows.paths is not None else paths
    skipped = {p: "unreadable image (skipped, --on-error skip)" for p in paths if p not in set(kept)}
    return rows.image, adapted, list(kept), skipped


def _check_encoder_meta(head, meta: dict) -> None:
    fp, model = meta.get("encoder") or {}, head.meta.get("model") or {}
    for field in ("weights", "preprocessing"):
        if model.get(field) is not None and fp.get(field) is not None and fp[field] != model[field]:
            raise HeadMismatchError(f"{head.model_id}: {field} {fp[field]} differ from the head's {model[field]}")


def write_predictions(path: Path, records: list[dict[str, Any]], topk: int) -> Path:
    """`.csv`: path, label, probability, label_2, probability_2, ..., error; `.jsonl`: one object per row."""
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:  # .csv (`run` refuses other suffixes before anything is computed)
        columns = ["path", "label", "probability"]
        for i in range(2, topk + 1):
            columns += [f"label_{i}", f"probability_{i}"]
        columns.append("error")
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for r in records:
            cells = [r["path"]]
            for i in range(topk):
                top = r["topk"][i] if i < len(r["topk"]) else None
                cells += [top["label"], f"{top['probability']:.6f}"] if top else ["", ""]
            writer.writerow(cells + [r.get("error") or ""])
        text = buffer.getvalue()
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def run(args: argparse.Namespace) -> int:
    from clipadapt.heads.io import load_head

    if args.out.suffix.lower() not in FORMATS:
        raise ConfigError(f"--out {args.out}: use a .csv or .jsonl file")
    head = load_head(args.head)
    paths = _image_paths(args)
    if args.features and paths:
        raise ConfigError("give images (files, --images, --csv) or --features, not both")
    labels, notes, skipped = None, [], {}
    if args.features:
        features, adapted, names, labels, notes = _from_features(args, head)
    elif paths:
        features, adapted, names, skipped = _from_images(args, head, paths)
    else:
        raise ConfigError("nothing to predict: give image files, --images DIR, --csv FILE or --features DIR:SPLIT")
    logits = head.predict_logits(features, adapted)  # one call: Tip-X's ψ range is over all rows (docs/heads.md)
    top = head.topk(logits, args.topk)
    records = [{"path": name, "topk": [{"label": c, "probability": p} for c, p in row]}
               for name, row in zip(names, top)]
    for r in records:
        r["label"], r["probability"] = r["topk"][0]["label"], r["topk"][0]["probability"]
    records += [{"path": p, "label": None, "probability": None, "topk": [], "error": e} for p, e in skipped.items()]
    write_predictions(args.out, records, min(args.topk, head.num_classes))
    if args.save_logits:
        save_logits(args.save_logits, logits)
    for note in notes:
        print(f"note: {note}")
    if labels is not None and (logits.shape[1] == head.num_classes):
        from clipadapt.eval.metrics import topk_accuracy

        acc = topk_accuracy(logits, labels, (1,))["top1"]
        print(f"{head.method}: top1 {acc:.2f} on {len(names)} labelled rows")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (listed in {args.out} with their error)")
    print(f"wrote {args.out} ({len(names)} predictions)")
    return 0
