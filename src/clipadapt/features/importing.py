"""Build every input the CLI reads from arrays computed elsewhere (`clipadapt import-features`,
docs/import-features.md).

Array specs (`load_array`): `FILE.npy`, `FILE.npz:KEY`, `FILE.safetensors:KEY` (the key may be left out when the
file holds one array), each followed by any number of first-axis selections `[i]` or `[start:stop]`, applied left
to right: `features.npy[0][100:500]` is rows 100..499 of entry 0 of a stacked (2, N, D) file.

Label specs (`load_labels`): an array spec of integers, a text file (`.txt`/`.csv`/`.json` list: one label per
line, an integer or a class name), or `range` (row i has label i: one item per class, e.g. captions as classes).

Three outputs: a feature directory (`import_features`), a retrieval directory (`import_retrieval`) and a
caption-scoring embeddings file (`import_caption_embeddings`). Embeddings are stored raw, as given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file

from clipadapt.errors import FeatureDirError
from clipadapt.features.featureset import SPLIT_NAMES, FeatureSet, FeatureSplit
from clipadapt.features.io import atomic_save_tensors, load_feature_dir, load_npy, save_feature_dir
from clipadapt.features.retrieval_dir import RetrievalSet, load_retrieval_split, save_retrieval_split
from clipadapt.fileio import read_json, read_text

ARRAY_SUFFIXES = (".npy", ".npz", ".safetensors")
KEYED_SUFFIXES = (".npz", ".safetensors")
LABEL_TEXT_SUFFIXES = (".txt", ".csv", ".json")
RANGE = "range"
_SELECTION = re.compile(r"\[([^\[\]]*)\]$")


def read_classnames(path: Path) -> list[str]:
    """Class names from a JSON list or a text file with one name per line."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        names = read_json(path, what="class-name file")
        if isinstance(names, dict) and "classnames" in names:
            names = names["classnames"]
    else:
        names = [line.strip() for line in read_text(path, what="class-name file").splitlines() if line.strip()]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise FeatureDirError(f"{path}: expected a non-empty list of class names")
    return names


# ----------------------------------------------------------------------------------------- array specs
def split_spec_list(text: str) -> list[str]:
    """'a.npy[0][1:3]:b.npz:key:range' -> ['a.npy[0][1:3]', 'b.npz:key', 'range']: ':' separates specs outside
    brackets, except the ':KEY' that follows a .npz/.safetensors file."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    specs: list[str] = []
    for part in parts:
        if specs and _wants_key(specs[-1]) and not _names_a_source(part):
            specs[-1] = f"{specs[-1]}:{part}"
        else:
            specs.append(part)
    return specs


def _base(spec: str) -> str:
    """The spec without its trailing [..] selections."""
    return spec.split("[", 1)[0]


def _wants_key(spec: str) -> bool:
    base = _base(spec)
    return base.lower().endswith(KEYED_SUFFIXES) and "[" not in spec


def _names_a_source(part: str) -> bool:
    base = _base(part).lower()
    return part == RANGE or base.endswith(ARRAY_SUFFIXES + LABEL_TEXT_SUFFIXES)


def _parse_array_spec(spec: str) -> tuple[str, str | None, list[str]]:
    """'FILE[.npz:KEY][sel]...' -> (file, key | None, [sel, ...])."""
    selections = []
    rest = spec
    while (m := _SELECTION.search(rest)) is not None and not rest.lower().endswith(ARRAY_SUFFIXES):
        selections.insert(0, m.group(1))
        rest = rest[: m.start()]
    path, key = rest, None
    for suffix in KEYED_SUFFIXES:
        cut = rest.lower().find(suffix + ":")
        if cut >= 0:
            path, key = rest[: cut + len(suffix)], rest[cut + len(suffix) + 1 :]
    if not path.lower().endswith(ARRAY_SUFFIXES):
        raise FeatureDirError(f"'{spec}': expected FILE.npy, FILE.npz:KEY or FILE.safetensors:KEY, optionally "
                              "followed by [i] or [start:stop]")
    return path, key, selections


def _read_keyed(path: str, key: str | None, spec: str) -> np.ndarray:
    """One array of a .npz or .safetensors file; the key may be omitted when the file holds exactly one."""
    if not Path(path).is_file():
        raise FeatureDirError(f"{path}: array file not found")
    try:  # `chosen`: the key, or the file's only array
        if path.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                names, what = list(archive.files), "array"
                chosen = names[0] if key is None and len(names) == 1 else key
                array = archive[chosen] if chosen in names else None
        else:
            arrays = load_file(path)
            names, what = sorted(arrays), "tensor"
            chosen = names[0] if key is None and len(names) == 1 else key
            array = arrays.get(chosen)
    except Exception as e:  # zip/safetensors parse errors
        raise FeatureDirError(f"{path}: not a readable {Path(path).suffix} file ({e})") from e
    if array is None and key is not None:
        raise FeatureDirError(f"'{spec}': {path} has no {what} '{key}' (it has: {', '.join(names)})")
    if array is None:
        raise FeatureDirError(f"'{spec}': {path} holds {len(names)} arrays ({', '.join(sorted(names))}); "
                              f"name one as {path}:KEY")
    return array


def _select(array: np.ndarray, selection: str, spec: str) -> np.ndarray:
    """Apply one '[i]' or '[start:stop]' to the first axis."""
    if array.ndim == 0:
        raise FeatureDirError(f"'{spec}': [{selection}] cannot index a scalar")
    n = array.shape[0]
    if ":" in selection:
        try:
            bounds = [int(v) if v.strip() else None for v in selection.split(":")]
        except ValueError as e:
            raise FeatureDirError(f"'{spec}': [{selection}] must be [start:stop] with integers") from e
        if len(bounds) != 2:
            raise FeatureDirError(f"'{spec}': [{selection}] must be [start:stop] (no step)")
        start, stop, _ = slice(*bounds).indices(n)
        if start >= stop:
            raise FeatureDirError(f"'{spec}': rows [{selection}] of a first axis of {n} select nothing")
        return array[start:stop]
    try:
        index = int(selection)
    except ValueError as e:
        raise FeatureDirError(f"'{spec}': expected FILE.npy[i] with an integer i or FILE.npy[start:stop]") from e
    if not -n <= index < n:
        raise FeatureDirError(f"'{spec}': index {index} is outside the first axis (shape {array.shape})")
    return array[index]


def load_array(spec: str) -> np.ndarray:
    """The array named by `spec` (see the module docstring), errors naming the spec and the file."""
    path, key, selections = _parse_array_spec(spec)
    if path.lower().endswith(".npy"):
        if key is not None:
            raise FeatureDirError(f"'{spec}': a .npy file holds one array; ':{key}' is for .npz/.safetensors")
        array = load_npy(path, what="array")
    else:
        array = _read_keyed(path, key, spec)
    for selection in selections:
        array = _select(array, selection, spec)
    return np.asarray(array)


def _embeddings(spec: str) -> torch.Tensor:
    array = load_array(spec)
    if array.dtype.kind not in "fiu":
        raise FeatureDirError(f"'{spec}': embeddings must be numbers, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# ----------------------------------------------------------------------------------------- labels
def _integer_labels(array: np.ndarray, spec: str) -> torch.Tensor:
    """Integer labels; float arrays only when every value is a whole number (the feature-directory format
    rejects float labels, so truncating 1.7 to 1 here would be silent corruption)."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise FeatureDirError(f"'{spec}': labels must be integers, got non-integer values ({array.dtype})")
    elif array.dtype.kind not in "iub":
        raise FeatureDirError(f"'{spec}': labels must be integers, got dtype {array.dtype}")
    return torch.from_numpy(np.asarray(array).astype(np.int64))


def _text_labels(spec: str, classnames: list[str] | None) -> torch.Tensor:
    """One label per line (or a JSON list): integers, or class names looked up in `classnames`."""
    path = Path(spec)
    if path.suffix.lower() == ".json":
        values = read_json(path, what="label file")
        if not isinstance(values, list):
            raise FeatureDirError(f"{path}: expected a JSON list of labels")
        values = [str(v) for v in values]
    else:
        values = [line.strip() for line in read_text(path, what="label file").splitlines() if line.strip()]
    if all(re.fullmatch(r"-?\d+", v) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long)
    index = {name: i for i, name in enumerate(classnames or [])}
    unknown = sorted({v for v in values if v not in index})
    if unknown:
        raise FeatureDirError(f"{path}: labels {unknown[:5]} are neither integers nor class names"
                              + ("" if classnames else " (give --classnames to use names)"))
    return torch.tensor([index[v] for v in values], dtype=torch.long)


def load_labels(spec: str, n_rows: int, classnames: list[str] | None = None) -> torch.Tensor:
    """(n_rows,) int64 labels from an array spec, a text/JSON label file, or 'range' (row i -> label i)."""
    if spec == RANGE:
        return torch.arange(n_rows)
    if _base(spec).lower().endswith(LABEL_TEXT_SUFFIXES):
        labels = _text_labels(spec, classnames)
    else:
        labels = _integer_labels(load_array(spec), spec)
    if labels.ndim != 1 or labels.shape[0] != n_rows:
        raise FeatureDirError(f"'{spec}': {tuple(labels.shape)} labels for {n_rows} embedding rows")
    return labels


# ----------------------------------------------------------------------------------------- feature directories
def parse_split_spec(spec: str) -> tuple[str, str, str | None]:
    """'test=img.npy[:labels.npy]' -> ('test', 'img.npy', 'labels.npy' | None)."""
    if "=" not in spec:
        raise FeatureDirError(f"--split '{spec}': expected NAME=IMAGES[:LABELS]")
    name, files = spec.split("=", 1)
    if name not in SPLIT_NAMES:
        raise FeatureDirError(f"--split '{spec}': split name must be one of {', '.join(SPLIT_NAMES)}")
    parts = split_spec_list(files)
    if len(parts) > 2 or not parts[0]:
        raise FeatureDirError(f"--split '{spec}': expected NAME=IMAGES[:LABELS], got {len(parts)} parts {parts}")
    return name, parts[0], parts[1] if len(parts) > 1 and parts[1] else None


def import_features(
    out: Path,
    *,
    classnames: list[str] | None,
    text: str,
    splits: list[str],
    labels: str | None = None,
    meta: dict[str, Any] | None = None,
) -> FeatureSet:
    """Write a validated feature directory at `out`; returns it as loaded back.

    `classnames=None` names the classes 'class 0', 'class 1', ... (one per text row); `labels` is the label spec
    of splits that give none (e.g. 'range'); an 'unlabeled' split without labels stays unlabeled."""
    text_t = _embeddings(text)
    names = classnames or [f"class {i}" for i in range(text_t.shape[0])]
    feature_splits = {}
    for spec in splits:
        name, image_spec, label_spec = parse_split_spec(spec)
        image = _embeddings(image_spec)
        label_spec = label_spec or (labels if name != "unlabeled" else None)
        label = load_labels(label_spec, image.shape[0], names) if label_spec else None
        feature_splits[name] = FeatureSplit(image=image, label=label)
    fs = FeatureSet(classnames=names, text=text_t, splits=feature_splits,
                    meta={**(meta or {}), "imported_from": {"text": text, "splits": splits}})
    save_feature_dir(fs, out)
    return load_feature_dir(out)  # re-read: validates shapes, labels, NaNs with file-named errors


# ----------------------------------------------------------------------------------------- retrieval, captions
def import_retrieval(out: Path, *, splits: list[str], meta: dict[str, Any] | None = None) -> dict[str, RetrievalSet]:
    """A retrieval directory from `NAME=IMAGES:CAPTIONS[:MAP]` specs; MAP (caption j -> its image row) is an
    integer array spec or 'range' (caption j belongs to image j; the default). The 'unlabeled' pool needs no map."""
    written = []
    for spec in splits:
        if "=" not in spec:
            raise FeatureDirError(f"--split '{spec}': expected NAME=IMAGES:CAPTIONS[:MAP]")
        name, files = spec.split("=", 1)
        parts = split_spec_list(files)
        if name not in SPLIT_NAMES or not 2 <= len(parts) <= 3:
            raise FeatureDirError(f"--split '{spec}': expected NAME=IMAGES:CAPTIONS[:MAP] with NAME one of "
                                  f"{', '.join(SPLIT_NAMES)}")
        image, text = _embeddings(parts[0]), _embeddings(parts[1])
        t2i = None
        if name != "unlabeled" or len(parts) == 3:
            map_spec = parts[2] if len(parts) == 3 else RANGE
            t2i = load_labels(map_spec, text.shape[0])
        save_retrieval_split(out, name, RetrievalSet(image, text, t2i, meta=dict(meta or {})))
        written.append(name)
    return {name: load_retrieval_split(out, name) for name in written}  # re-read: validated, file-named errors


def import_caption_embeddings(out: Path, *, image: str, caption: str,
                              reference: str | None = None) -> dict[str, torch.Tensor]:
    """The `captions --embeddings` file: safetensors with 'image' (N, D), 'caption' (M, D)[, 'reference' (K, D)]."""
    specs = {"image": image, "caption": caption, **({"reference": reference} if reference else {})}
    tensors = {name: _embeddings(spec) for name, spec in specs.items()}
    if len({t.shape[-1] for t in tensors.values()}) != 1 or any(t.ndim != 2 for t in tensors.values()):
        raise FeatureDirError(f"{out}: image/caption/reference must be 2-D with one D, got "
                              + ", ".join(f"{k} {tuple(t.shape)} from '{specs[k]}'" for k, t in tensors.items()))
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise FeatureDirError(f"'{specs[name]}': {name} embeddings contain NaN/Inf values")
    atomic_save_tensors(Path(out), tensors)
    return tensors
