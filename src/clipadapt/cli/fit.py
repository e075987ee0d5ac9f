"""`clipadapt fit`: fit zero-shot, DN or a cache method once and write it as one head file (docs/heads.md)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from clipadapt.argtypes import COUNT, SEED
from clipadapt.cli._common import add_feature_source_arguments, extract_options, fewshot_config
from clipadapt.cli._conventions import run_provenance
from clipadapt.cli._outputs import FILE, output_option
from clipadapt.constants import GRID_PRESETS, HEAD_METHODS, TIE_BREAKS
from clipadapt.errors import ConfigError, DatasetError

COMMAND = "fit"
HELP = "fit a classifier (zeroshot, dn, tip, tip-f, tipx, tip++, tipx++) once and save it as one head file"
EXAMPLES = """
clipadapt fit --features feats/ --method tip --shots 16 --seed 1 --out pets-tip.safetensors
clipadapt fit --model ViT-B-16@openai --dataset imagefolder:/data/birds --method tipx --shots 8 --out birds.safetensors
clipadapt fit --features builtin:coco500 --method dn --dn-source unlabeled --out coco-dn.safetensors
clipadapt predict --head pets-tip.safetensors --images new_photos/ --topk 3 --out preds.csv
"""


def configure(parser: argparse.ArgumentParser) -> None:
    add_feature_source_arguments(parser)
    parser.add_argument("--method", required=True, choices=HEAD_METHODS, help="the classifier to fit")
    parser.add_argument("--shots", type=COUNT, default=None, metavar="K",
                        help="cache methods: K training images per class drawn with --seed (default: every train row)")
    parser.add_argument("--seed", type=SEED, default=1, help="sampling seed of the shots (and Tip-F's training)")
    parser.add_argument("--val", default="val", metavar="SPLIT",
                        help="the labelled split the hyper-parameters are chosen on (and val top-1 reported on)")
    parser.add_argument("--val-from-train", type=COUNT, default=None, metavar="N",
                        help="validate on N train images per class disjoint from the shots, instead of the 'val' split")
    parser.add_argument("--views", type=COUNT, default=10,
                        help="augmented views per cache image with --model/--dataset (default 10)")
    adapted = parser.add_mutually_exclusive_group()
    adapted.add_argument("--adapter", type=Path, help="IMO adapter checkpoint for tip++/tipx++ (stored in the head)")
    adapted.add_argument("--adapted-features", type=Path,
                         help="features of the same images through the IMO adapter, for tip++/tipx++ with --features "
                              "(the head then predicts from features only)")
    parser.add_argument("--allow-fewer", action="store_true",
                        help="classes with fewer train images than --shots use all")
    parser.add_argument("--grid", action="append", default=[], metavar="FAMILY.PARAM=SPEC",
                        help="override a search grid as in `fewshot`, e.g. tip.beta=0.1:7:50; repeatable")
    parser.add_argument("--grid-preset", choices=GRID_PRESETS, default=None,
                        help="a paper's search grids (as in `fewshot`)")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default="grid-order", help="tied validation grid points")
    parser.add_argument("--tipf-epochs", type=COUNT, default=20, help="Tip-Adapter-F training epochs (default 20)")
    parser.add_argument("--chunk-size", type=COUNT, default=None, help="validation rows per search chunk")
    dn = parser.add_argument_group("--method dn")
    from clipadapt.eval.runners.dn import add_dn_arguments, add_text_mean_argument

    add_dn_arguments(dn, sources=None)
    add_text_mean_argument(dn)
    output_option(parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                                      help="the head file to write (one safetensors file, e.g. head.safetensors)"),
                  FILE)


def _fetch(args: argparse.Namespace):
    from clipadapt.features.pipeline import get_feature_set

    return functools.partial(get_feature_set, args.model, args.dataset, options=extract_options(args),
                             cache_dir=args.cache_dir, device=args.device)


def _split_or_none(fetch, features, name: str):
    """A split of --features, or fetched for --model/--dataset; None when the dataset has no such split."""
    if features is not None:
        return features.split(name) if features.has_split(name) else None
    try:
        return fetch([name]).split(name)
    except DatasetError:
        return None


def _fit_simple(args: argparse.Namespace):
    """zeroshot / dn: (FitResult, classnames, text, meta, encoder_loaded)."""
    from clipadapt.features.io import load_feature_dir
    from clipadapt.heads.fit import fit_dn, fit_zeroshot

    features = load_feature_dir(args.features) if args.features else None
    fetch = None if features is not None else _fetch(args)
    if args.method == "dn":
        if args.dn_repeats != 1:
            raise ConfigError("--dn-repeats: a head stores one DN fit; give --dn-seed to choose the draw")
        base = features if features is not None else fetch([args.dn_source])
        pool = base.split(args.dn_source)
        val = _split_or_none(fetch, features, args.val) if args.dn_source != args.val else None
        result = fit_dn(base.text, pool, pool_name=args.dn_source, val=val, lam=args.dn_lambda,
                        n_samples=args.dn_samples, seed=args.dn_seed, text_mean=args.dn_text_mean,
                        logit=base.logit_params(), val_split=args.val)
    else:
        val = _split_or_none(fetch, features, args.val)
        base = features if features is not None else (fetch([args.val]) if val is not None else None)
        if base is None:  # no val split: the class text (and meta) come with one train row; test is never encoded
            base = fetch(["train"], indices={"train": [0]})
        result = fit_zeroshot(base.text, val, logit=base.logit_params(), val_split=args.val)
    return result, base, bool(base.meta.get("encoder_loaded") or base.meta.get("encoder"))


def _fit_cache(args: argparse.Namespace):
    """Cache methods through the few-shot protocol: (FitResult, base feature set, encoder used)."""
    from clipadapt.data import build_dataset
    from clipadapt.eval.fewshot import DirectorySource, PipelineSource, sample_shots, validation_indices
    from clipadapt.features.io import load_feature_dir
    from clipadapt.heads.fit import fit_fewshot

    config = fewshot_config(args, shots=[args.shots or 1], seeds=[args.seed], methods=[args.method])
    if config.needs_adapted and not (args.adapter or args.adapted_features):
        raise ConfigError(f"{args.method} needs --adapter CKPT (with --model/--dataset) or --adapted-features DIR")
    if args.features:
        if args.adapter:
            raise ConfigError("--adapter needs --model/--dataset; with --features give --adapted-features DIR")
        features = load_feature_dir(args.features)
        adapted = load_feature_dir(args.adapted_features) if args.adapted_features else None
        splits = ("train",) + ((args.val,) if not args.val_from_train else ())
        source = DirectorySource(features, adapted, splits=splits + (("test",) if features.has_split("test") else ()))
        fitted = fit_fewshot(source, args.method, config, shots=args.shots, seed=args.seed, val_split=args.val)
        return fitted, features, False
    if args.adapted_features:
        raise ConfigError("--adapted-features goes with --features; with --model/--dataset give --adapter CKPT")
    fetch = _fetch(args)
    train = build_dataset(args.dataset, "train")
    if args.val_from_train:  # the validation rows give the class text and meta: 'test' is never encoded
        import torch

        labels = torch.as_tensor(train.labels, dtype=torch.long)
        idx = (sample_shots(labels, args.shots, args.seed, classnames=train.classnames, allow_fewer=args.allow_fewer)
               if args.shots else list(range(len(train))))
        vidx = validation_indices(labels, {args.shots or 0: idx}, args.val_from_train, args.seed,
                                  classnames=train.classnames, allow_fewer=args.allow_fewer)
        base = fetch(["train"], views={"train": 1}, indices={"train": vidx})
    else:
        base = fetch([args.val])
    source = PipelineSource(fetch, views=args.views, adapter=args.adapter, train_dataset=train,
                            use_val=not args.val_from_train, base=base)
    fitted = fit_fewshot(source, args.method, config, shots=args.shots, seed=args.seed, val_split=args.val)
    return fitted, base, True


def run(args: argparse.Namespace) -> int:
    from clipadapt.heads.fit import adapter_block, build_head, model_block
    from clipadapt.heads.io import save_head

    if not args.features and not (args.model and args.dataset):
        raise ConfigError("give --features DIR, or both --model and --dataset")
    if args.features and args.model:
        raise ConfigError("give --features DIR or --model/--dataset, not both")
    result, base, loaded = (_fit_simple if args.method in ("zeroshot", "dn") else _fit_cache)(args)
    adapter, adapter_tensors = None, None
    if args.adapter and args.method.endswith("++"):
        adapter, adapter_tensors = adapter_block(args.adapter)
    data = {"features": str(args.features)} if args.features else {"dataset": args.dataset}
    if args.adapted_features:
        data["adapted_features"] = str(args.adapted_features)
    model = base.meta.get("model")
    head = build_head(args.method, result, classnames=base.classnames, templates=base.meta.get("templates"),
                      dim=int(base.text.shape[-1]), model=model_block(base.meta, encoder_loaded=loaded),
                      provenance=run_provenance(args, model=model, data=data), adapter=adapter,
                      adapter_tensors=adapter_tensors, data=data)
    path = save_head(head, args.out)
    sel = head.meta["selection"]
    val = f"val top1 {sel['val_top1']:.2f}" if sel.get("val_top1") is not None else "no validation split"
    shown = ("alpha", "beta", "gamma", "lambda", "best_epoch")
    chosen = {k: v for k, v in sel["hyperparameters"].items() if k in shown}
    print(f"{args.method}: {head.num_classes} classes, {model or 'unknown model'}; "
          f"chosen {chosen or 'defaults'} ({val})")
    if not head.meta["model"]["encodable"]:
        print(f"note: {head.features_only_message()}")
    for note in head.meta["notes"]:
        print(f"note: {note}")
    print(f"wrote {path}")
    return 0
