"""`clipadapt eval`: evaluate one method on a feature directory or a (model, dataset)."""

from __future__ import annotations

import argparse
import functools
from dataclasses import fields
from pathlib import Path

from clipadapt.cli._common import (
    add_feature_source_arguments,
    feature_set_from_args,
    from_args,
    load_features_from_args,
    options_given,
    save_logits,
)
from clipadapt.cli._conventions import add_out_argument, featureset_provenance, results_path, vs_baseline, write_results
from clipadapt.cli._outputs import FILE, output_option
from clipadapt.errors import ConfigError
from clipadapt.eval.registry import EvalMethod, EvalOptions, get_eval_method, list_eval_methods

COMMAND = "eval"
HELP = "evaluate a method (zero-shot, DN, ...) on cached or given features; writes results.json"
EXAMPLES = """
clipadapt eval --features feats/ --method dn --dn-repeats 5 --out runs/dn
clipadapt eval --model ViT-B-32@openai --dataset coop:oxford_pets:/data/pets --method zeroshot --save-logits logits.npy
"""
BASELINES = {"without_dn": "zero-shot"}  # extra fields of a method's result that hold the same split without it


def configure(parser: argparse.ArgumentParser) -> None:
    add_feature_source_arguments(parser)
    methods = list_eval_methods()
    parser.add_argument("--method", default="zeroshot", choices=methods, help="method to evaluate")
    parser.add_argument("--split", default="test", help="split to evaluate")
    add_out_argument(parser, legacy_json=True)
    output_option(parser.add_argument("--save-logits", type=Path, help="write the (N, C) float32 logits as .npy"), FILE)
    for name in methods:
        method = get_eval_method(name)
        if method.add_arguments is not None:
            method.add_arguments(parser.add_argument_group(f"--method {name}"))


def method_options(method: EvalMethod, args: argparse.Namespace) -> EvalOptions:
    """The runner's options dataclass, each field taken from the argument of the same name; `fetch` encodes
    splits through the cache when the features come from --model/--dataset rather than --features."""
    encodable = getattr(args, "model", None) and getattr(args, "dataset", None) and not getattr(args, "features", None)
    return from_args(method.options, args, fetch=functools.partial(feature_set_from_args, args) if encodable else None)


def summary_line(name: str, results: dict) -> str:
    """'dn: top1 57.00 (zero-shot 56.75, +0.25)  top5 ...  (n=...)': the method, beside its baseline if it has one."""
    key, base_name = next(((k, v) for k, v in BASELINES.items() if isinstance(results.get(k), dict)), (None, None))
    base = results[key] if key else {}
    cells = [f"{m} {vs_baseline(results[m], base.get(m), base_name)}" for m in ("top1", "top5") if m in results]
    return f"{name}: {'  '.join(cells)}  (n={results['n']})"


def _refuse_other_methods_options(method: EvalMethod, args: argparse.Namespace) -> None:
    """ConfigError for options of another `--method` (e.g. --dn-lambda with --method zeroshot): silently
    ignored otherwise (issue 12, item 7)."""
    mine = {f.name for f in fields(method.options)}
    others = {f.name for name in list_eval_methods() for f in fields(get_eval_method(name).options)} - mine
    given = options_given(args, [f"--{dest.replace('_', '-')}" for dest in sorted(others)])
    if given:
        raise ConfigError(f"conflicting inputs: {', '.join(given)} belong to another --method; --method "
                          f"{method.name} would ignore them")


def run(args: argparse.Namespace) -> int:
    from clipadapt.eval.metrics import classification_report

    method = get_eval_method(args.method)
    _refuse_other_methods_options(method, args)
    features = load_features_from_args(args)
    features.split(args.split).require_rows(args.split, f"eval --method {method.name}")
    output = method.run(features, method_options(method, args))
    for line in output.notes:
        print(line)
    labels = features.split(args.split).labels(args.split)
    results = {
        "method": method.name,
        **classification_report(output.logits, labels),
        "split": args.split,
        "hyperparameters": output.hyperparameters,
        **output.extra,
        "features": features.describe(),
    }
    print(summary_line(method.name, results))
    write_results(results_path(args.out), results, featureset_provenance(args, features))
    if args.save_logits:
        print(f"wrote {save_logits(args.save_logits, output.logits)}")
    return 0
