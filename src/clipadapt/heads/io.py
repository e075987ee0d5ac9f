"""The head file: one safetensors file, no pickle (docs/heads.md).

Tensors: `state.<attr>` — the estimator's fitted tensors (classifier_, keys_, values_, adapted_keys_,
key_log_signatures_, image_mean_, text_mean_) — and `adapter.blocks.{i}.{down,up}.{weight,bias}` for TA++/TX++
heads fitted through an adapter checkpoint. Metadata: one key, `clipadapt_head`, holding JSON (one key because
safetensors writes its metadata map in varying order): format, version, method, estimator, params (its
hyper-parameters), fitted (non-tensor fitted values), tensors (name -> shape, dtype), tensors_sha256, classnames,
templates, dim, model (id, encodable, weights, weights_sha256, preprocessing), selection (chosen hyper-parameters
and the validation accuracy that chose them, shots, seed, validation), adapter, provenance.

Reading checks, in order, each failure a HeadFileError naming the file: a pickle/torch.save archive is refused
unread; a safetensors file without the metadata is not a head; the tensor names, their shapes against the
metadata and against each other (C = number of class names, D = dim), then the sha256 of all tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from clipadapt.errors import HeadFileError
from clipadapt.fileio import atomic_path
from clipadapt.heads.head import (
    ADAPTER_PREFIX,
    ESTIMATORS,
    REQUIRED_STATE,
    STATE_PREFIX,
    STATE_SHAPES,
    Head,
    estimator_state,
    tensors_sha256,
)

HEAD_FORMAT = "clipadapt-head"
HEAD_VERSION = 1
METADATA_KEY = "clipadapt_head"
_PICKLE_MAGIC = (b"\x80",)  # pickle protocol >= 2
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's zip archive (a pickle inside)


def head_tensors(head: Head) -> dict[str, Tensor]:
    """Every tensor a head file stores, under its file name."""
    tensors, _ = estimator_state(head.estimator)
    out = {STATE_PREFIX + k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for k, v in (head.adapter or {}).items():
        out[ADAPTER_PREFIX + k] = v.detach().cpu().contiguous()
    return out


def save_head(head: Head, path: str | Path) -> Path:
    """Write `head` as one safetensors file (atomically); returns the path."""
    path = Path(path)
    tensors = head_tensors(head)
    _, fitted = estimator_state(head.estimator)
    meta = {**head.meta, "format": HEAD_FORMAT, "version": HEAD_VERSION,
            "estimator": type(head.estimator).__name__, "params": head.estimator.get_params(), "fitted": fitted,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in sorted(tensors.items())},
            "tensors_sha256": tensors_sha256(tensors)}
    head.meta = meta
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True, allow_nan=False)})
    return path


def _refuse_non_safetensors(path: Path) -> None:
    with open(path, "rb") as f:
        start = f.read(16)
    if start.startswith(_ZIP_MAGIC) or start.startswith(_PICKLE_MAGIC):
        raise HeadFileError(
            f"{path} is a pickle (torch.save/pickle file), not a clipadapt head; heads are safetensors files "
            "written by `clipadapt fit`, and clipadapt never unpickles a file (it can run arbitrary code)"
        )
    if len(start) < 9 or start[8:9] != b"{":
        raise HeadFileError(f"{path} is not a safetensors file (heads are written by `clipadapt fit`)")


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if not path.is_file():
        raise HeadFileError(f"head file {path} not found")
    _refuse_non_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise HeadFileError(f"{path} is not a readable safetensors file: {e}") from e
    if METADATA_KEY not in metadata:
        raise HeadFileError(f"{path} is a safetensors file but not a clipadapt head: it has no '{METADATA_KEY}' "
                            f"metadata (tensors: {', '.join(sorted(tensors)[:5]) or 'none'}); heads come from "
                            "`clipadapt fit`")
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise HeadFileError(f"{path}: metadata '{METADATA_KEY}' is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise HeadFileError(f"{path}: metadata format is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                            f"expected {HEAD_FORMAT!r}")
    if meta.get("version") != HEAD_VERSION:
        raise HeadFileError(f"{path}: head format version {meta.get('version')}; this clipadapt reads version "
                            f"{HEAD_VERSION}")
    return tensors, meta


def _check(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Tensor names, shapes (recorded and mutually consistent) and the content hash."""
    for key in ("method", "estimator", "classnames", "dim", "tensors", "tensors_sha256", "params"):
        if key not in meta:
            raise HeadFileError(f"{path}: metadata field '{key}' is missing")
    method, estimator = meta["method"], meta["estimator"]
    if method not in ESTIMATORS or ESTIMATORS[method][0].__name__ != estimator:
        raise HeadFileError(f"{path}: method {method!r} with estimator {estimator!r} is not a head clipadapt knows "
                            f"({', '.join(ESTIMATORS)})")
    recorded = meta["tensors"]
    if set(recorded) != set(tensors):
        missing, extra = sorted(set(recorded) - set(tensors)), sorted(set(tensors) - set(recorded))
        raise HeadFileError(f"{path}: tensors differ from the metadata's list (missing {missing}, unexpected {extra})")
    needed = [STATE_PREFIX + n for n in REQUIRED_STATE[estimator]]
    if ESTIMATORS[method][1]:
        needed.append(STATE_PREFIX + "adapted_keys_")
    absent = [n for n in needed if n not in tensors]
    if absent:
        raise HeadFileError(f"{path}: a {method} head needs tensors {absent}, which are missing")
    for name, t in tensors.items():
        want = recorded[name]["shape"]
        if list(t.shape) != want:
            raise HeadFileError(f"{path}: tensor '{name}' has shape {tuple(t.shape)} but the head was written with "
                                f"{tuple(want)}: the file was altered after `clipadapt fit`")
    sizes = {"C": len(meta["classnames"]), "D": int(meta["dim"])}
    for name, t in sorted(tensors.items()):
        if not name.startswith(STATE_PREFIX):
            continue
        symbols = STATE_SHAPES.get(name[len(STATE_PREFIX):])
        if symbols is None:
            raise HeadFileError(f"{path}: unknown state tensor '{name}'")
        if len(symbols) != t.ndim:
            raise HeadFileError(f"{path}: tensor '{name}' has shape {tuple(t.shape)}, expected {len(symbols)} dims "
                                f"({', '.join(symbols)})")
        for symbol, size in zip(symbols, t.shape):
            if sizes.setdefault(symbol, int(size)) != int(size):
                what = {"C": f"{sizes['C']} classes (metadata classnames)", "D": f"D={sizes['D']} (metadata dim)"}
                raise HeadFileError(
                    f"{path}: tensor '{name}' has shape {tuple(t.shape)}, but its {symbol} axis should be "
                    f"{what.get(symbol, f'{symbol}={sizes[symbol]} as in the other tensors')}: a class count or "
                    "dimension that does not match the rest of the head"
                )
    if tensors_sha256(tensors) != meta["tensors_sha256"]:
        raise HeadFileError(f"{path}: the tensors' sha256 differs from the one recorded at fit time: the file was "
                            "altered after `clipadapt fit`")


def load_head(path: str | Path) -> Head:
    """Read a head file written by `clipadapt fit` (or `save_head`); HeadFileError naming the file when it is not
    one, is a pickle, or was altered."""
    path = Path(path)
    tensors, meta = _read(path)
    _check(path, tensors, meta)
    cls = ESTIMATORS[meta["method"]][0]
    try:
        estimator = cls(**meta["params"])
    except TypeError as e:
        raise HeadFileError(f"{path}: hyper-parameters {sorted(meta['params'])} do not fit {cls.__name__}: {e}") from e
    state = {k[len(STATE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
    for name, value in {**meta.get("fitted", {}), **state}.items():  # fitted: e.g. adapted_keys_ None, best_epoch_
        setattr(estimator, name, value)
    adapter = {k[len(ADAPTER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)} or None
    if ESTIMATORS[meta["method"]][1] and adapter is not None and not meta.get("adapter"):
        raise HeadFileError(f"{path}: adapter tensors without the metadata 'adapter' structure")
    head = Head(estimator, meta, adapter)
    head.source = path
    return head

