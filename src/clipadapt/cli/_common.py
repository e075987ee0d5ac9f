"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from clipadapt.argtypes import COUNT, NON_NEGATIVE_INT
from clipadapt.constants import DEFAULT_BATCH_SIZE
from clipadapt.errors import ConfigError
from clipadapt.fileio import atomic_write_bytes

if TYPE_CHECKING:  # torch-backed: imported where used, so building the parser stays torch-free
    from clipadapt.eval.fewshot import FewShotConfig
    from clipadapt.features.extract import ExtractOptions
    from clipadapt.features.featureset import FeatureSet

T = TypeVar("T")


def comma_strings(text: str) -> list[str]:
    """argparse type: 'a, b,c' -> ['a', 'b', 'c'] (at least one item)."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return values


def add_feature_source_arguments(parser: argparse.ArgumentParser) -> None:
    """--features DIR, or --model/--dataset to extract through the cache."""
    src = parser.add_argument_group("features")
    src.add_argument("--features", type=Path, help="a feature directory (docs/feature-format.md), or a built-in set "
                     "such as builtin:coco500 (`clipadapt datasets`)")
    src.add_argument("--model", help="model id ARCH@TAG, e.g. ViT-B-32@openai (extract through the cache)")
    src.add_argument("--dataset", help="dataset spec, e.g. coop:oxford_pets:/data/pets, imagefolder:/data/x")
    src.add_argument("--cache-dir", type=Path, default=None,
                     help="feature cache root (default: $CLIPADAPT_CACHE or ~/.cache/clipadapt)")
    add_encoding_arguments(src, on_error="unreadable images when encoding: fail, or skip and record")
    add_file_check_argument(src)
    add_verify_argument(src)


DEVICE_HELP = "torch device (default: cuda if available, else cpu)"


def add_encoding_arguments(parser, *, on_error: str, device: str | None = DEVICE_HELP) -> None:
    """--device, --batch-size, --num-workers and --on-error of a command that encodes images; `on_error` and
    `device` are the help texts of --on-error (what the command does with an unreadable image) and --device."""
    parser.add_argument("--device", default=None, help=device)
    parser.add_argument("--batch-size", type=COUNT, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num-workers", type=NON_NEGATIVE_INT, default=0,
                        help="DataLoader workers when encoding images")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail", help=on_error)


def add_verify_argument(parser) -> None:
    """--verify: hash-check the directories read against their checksums.json (features.checksums)."""
    parser.add_argument("--verify", action="store_true",
                        help="also compare every file of the feature/retrieval directories read with the sha256 in "
                             "their checksums.json (reads every byte once; sizes are always checked)")


def add_file_check_argument(parser) -> None:
    """--file-check: how the feature cache notices image files rewritten in place (docs/encoders-and-cache.md)."""
    parser.add_argument("--file-check", choices=["stat", "sha256", "none"], default="stat",
                        help="cache key part for the image files: stat = size + mtime (default, fast), "
                             "sha256 = hash every file (exact, reads the whole dataset), none = paths only")


def refuse_unused(args: argparse.Namespace, source: str, unused: Sequence[str], instead: str = "") -> None:
    """ConfigError when options that the input `source` (e.g. '--features') makes irrelevant were given: they
    would be silently ignored (issue 12, item 7). `unused` are option names; an option counts as given when its
    value is set (these options default to None)."""
    given = [opt for opt in unused if getattr(args, opt.lstrip("-").replace("-", "_"), None) not in (None, [], "")]
    if given:
        raise ConfigError(f"conflicting inputs: {source} is given, so {', '.join(given)} would be ignored; "
                          f"give {source} or {instead or ', '.join(given)}, not both")


def options_given(args: argparse.Namespace, options: Sequence[str]) -> list[str]:
    """Those of `options` written on the command line (`--opt V` or `--opt=V`; the argv `main` recorded), for
    options whose default cannot be told apart from a value the user typed."""
    argv = getattr(args, "_argv", None) or []
    return [opt for opt in options if any(t == opt or t.startswith(opt + "=") for t in argv)]


def refuse_extraction_inputs(args: argparse.Namespace) -> None:
    """`refuse_unused` for --model/--dataset/--cache-dir: extraction-only inputs, meaningless with --features."""
    refuse_unused(args, "--features", ("--model", "--dataset", "--cache-dir"),
                  instead="--model/--dataset (extract through the cache)")


def load_features_from_args(args: argparse.Namespace, splits: Iterable[str] | None = None) -> FeatureSet:
    """The FeatureSet named by --features, or extracted (through the cache) for --model/--dataset."""
    if getattr(args, "features", None):
        from clipadapt.features.io import load_feature_dir

        refuse_extraction_inputs(args)
        return load_feature_dir(args.features, splits=splits)
    if getattr(args, "model", None) and getattr(args, "dataset", None):
        return feature_set_from_args(args, splits=splits)
    raise ConfigError("give --features DIR, or both --model and --dataset")


def from_args(cls: type[T], args: argparse.Namespace, *, skip: Sequence[str] = (), **values: Any) -> T:
    """The dataclass `cls` with each field taken from the command's argument of the same name where it has one
    (the field's default otherwise), except the fields in `skip`; `values` set fields directly."""
    taken = {f.name: getattr(args, f.name) for f in fields(cls)
             if f.name not in skip and f.name not in values and hasattr(args, f.name)}
    return cls(**taken, **values)


def extract_options(args: argparse.Namespace, **values: Any) -> ExtractOptions:
    """The one `ExtractOptions` of a command's arguments: --batch-size, --num-workers, --on-error, --shard-size,
    --precision, --file-check where the command has them (the defaults otherwise); `values` sets other fields
    (views, seed, progress: a command's --views or --seed may mean something else)."""
    from clipadapt.features.extract import ExtractOptions

    return from_args(ExtractOptions, args, skip=("views", "seed", "progress"), **values)


def parse_grid_overrides(specs: list[str]) -> dict[str, dict[str, list[float]]]:
    """['tip.beta=0.1:7:50', ...] -> {'tip': {'beta': [...]}}."""
    from clipadapt.eval.search import parse_grid

    grids: dict[str, dict[str, list[float]]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        family, dot, param = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--grid '{spec}': expected FAMILY.PARAM=SPEC, e.g. tip.beta=0.1:7:50")
        grids.setdefault(family.strip(), {})[param.strip()] = parse_grid(values)
    return grids


def fewshot_config(args: argparse.Namespace, **values: Any) -> FewShotConfig:
    """The FewShotConfig of a command's arguments (fewshot, fit, robustness; `from_args`), `grids` from --grid."""
    from clipadapt.eval.fewshot import FewShotConfig

    return from_args(FewShotConfig, args, **{"grids": parse_grid_overrides(args.grid), **values})


def feature_set_from_args(args: argparse.Namespace, splits: Iterable[str] | None = None) -> FeatureSet:
    """get_feature_set for --model/--dataset with this command's options (`extract_options`; --views or
    --train-views and --seed where the command has them, --cache-dir, --device, --adapter, --indices).
    `splits=None`: the evaluated --split plus the splits the chosen `eval --method` reads."""
    from clipadapt.features.pipeline import get_feature_set  # heavy imports only when encoding

    if splits is None:
        splits = [getattr(args, "split", None) or "test"]
        if getattr(args, "method", None):
            from clipadapt.eval.registry import get_eval_method

            splits += list(get_eval_method(args.method).splits)
    splits = list(dict.fromkeys(splits))
    views: int | dict[str, int] = getattr(args, "views", None) or 1
    if getattr(args, "train_views", None):
        views = {s: args.train_views if s == "train" else views for s in splits}
    options = extract_options(args, views=views, seed=getattr(args, "seed", None) or 0)
    return get_feature_set(args.model, args.dataset, splits, options, indices=getattr(args, "indices", None),
                           cache_dir=getattr(args, "cache_dir", None), device=getattr(args, "device", None),
                           adapter=getattr(args, "adapter", None))


def save_logits(path: Path, logits: Any) -> Path:
    """(N, C) float32 logits as .npy, written atomically like every other output."""
    import numpy as np

    path = Path(path)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(logits.detach().cpu().float().numpy(), dtype=np.float32))
    atomic_write_bytes(path, buffer.getvalue())
    return path

