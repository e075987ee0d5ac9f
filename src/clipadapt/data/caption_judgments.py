"""Readers for the original files of the caption-scoring benchmarks the DN paper uses (docs/methods.md §2).

- Flickr8k-Expert (Hodosh et al. 2013): `ExpertAnnotations.txt`, tab-separated
  `image<TAB>caption_id<TAB>s1<TAB>s2<TAB>s3`, caption_id = `<image>.jpg#<k>` of `Flickr8k.token.txt`
  (`<image>.jpg#<k><TAB>caption`), three expert scores 1–4. One judgment row per expert score.
- Flickr8k-CF: `CrowdFlowerAnnotations.txt`, `image<TAB>caption_id<TAB>percent_yes<TAB>n_yes<TAB>n_no`;
  the human score is the fraction of "yes, the caption describes the image" answers.
- Pascal-50S (Vedantam et al. 2015): `pair_pascal.mat` (`new_input`: 4000 × (image file, candidate A, candidate B);
  `category`: 1 HC, 2 HI, 3 HM, 4 MM) and `consensus_pascal.mat` (`triplets`: 48 per pair, in pair order, each
  (reference, A, B, vote ±1)). The human winner of a pair is the majority of its votes; this reader takes
  +1 as a vote for A (the consensus files' convention as we read it; `positive_is_a=False` flips it) and
  records ties as 'tie'. References: the pair's distinct reference sentences (or `n_references` of them, seeded).

Rows for the Flickr8k sets have the `clipadapt captions` CSV columns (image, caption, human, references joined
by '||'); `write_judgments_csv` writes them.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clipadapt.errors import DatasetError
from clipadapt.fileio import atomic_write_bytes

REF_SEP = "||"
PASCAL_CATEGORIES = {1: "HC", 2: "HI", 3: "HM", 4: "MM"}
PAIRS_PER_TRIPLET_BLOCK = 48


def _lines(path: str | Path) -> list[list[str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    return [line.rstrip("\r").split("\t") for line in text.split("\n") if line.strip()]


def read_flickr8k_tokens(path: str | Path) -> dict[str, str]:
    """{'<image>.jpg#<k>': caption} from Flickr8k.token.txt."""
    out = {}
    for i, parts in enumerate(_lines(path), 1):
        if len(parts) < 2:
            raise DatasetError(f"{path}: line {i}: expected '<image>.jpg#<k><TAB>caption', got {parts!r}")
        out[parts[0].strip()] = parts[1].strip()
    return out


def _references(tokens: dict[str, str], image: str, exclude: str) -> list[str]:
    """The image's own captions, without the judged caption (it may be one of them)."""
    return [c for k, c in sorted(tokens.items()) if k.split("#")[0] == image and k != exclude]


def _judged(path: str | Path, tokens: dict[str, str], n_scores: int) -> list[tuple[int, str, str, list[str]]]:
    rows = []
    for i, parts in enumerate(_lines(path), 1):
        if len(parts) < 2 + n_scores:
            raise DatasetError(f"{path}: line {i}: expected image, caption id and {n_scores} score column(s), got "
                               f"{parts!r}")
        image, cap_id = parts[0].strip(), parts[1].strip()
        if cap_id not in tokens:
            raise DatasetError(f"{path}: line {i}: caption id {cap_id} is not in the token file")
        rows.append((i, image, cap_id, parts[2:2 + n_scores]))
    return rows


def read_flickr8k_expert(annotations: str | Path, tokens_file: str | Path) -> list[dict[str, Any]]:
    """One row per expert judgment: image, caption, human (1–4), references ('||'-joined)."""
    tokens = read_flickr8k_tokens(tokens_file)
    out = []
    for line, image, cap_id, scores in _judged(annotations, tokens, 3):
        refs = REF_SEP.join(_references(tokens, image, cap_id))
        for s in scores:
            out.append({"image": image, "caption": tokens[cap_id], "human": _float(s, annotations, line),
                        "references": refs})
    return out


def read_flickr8k_cf(annotations: str | Path, tokens_file: str | Path) -> list[dict[str, Any]]:
    """One row per judged pair: image, caption, human (fraction of crowd 'yes'), references."""
    tokens = read_flickr8k_tokens(tokens_file)
    return [{"image": image, "caption": tokens[cap_id], "human": _float(scores[0], annotations, line),
             "references": REF_SEP.join(_references(tokens, image, cap_id))}
            for line, image, cap_id, scores in _judged(annotations, tokens, 3)]


def _float(value: str, path: str | Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise DatasetError(f"{path}: line {line}: score {value!r} is not a number") from None


def write_judgments_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The `clipadapt captions --judgments` CSV (image, caption, human, references), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["image", "caption", "human", "references"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(Path(path), buffer.getvalue().encode("utf-8"))
    return Path(path)


# ------------------------------------------------------------------------------------------------ Pascal-50S
def _text(value: Any) -> str:
    """Unwrap loadmat's nested object/char arrays down to one string."""
    while not isinstance(value, str):
        try:
            if hasattr(value, "dtype") and value.dtype.kind == "U" and value.size == 1:
                return str(value.item()) if value.ndim else str(value.reshape(-1)[0])
            value = value[0] if len(value) else ""
        except (TypeError, IndexError, KeyError):
            return str(value)
    return value


def _number(value: Any) -> float:
    while hasattr(value, "__len__") and not isinstance(value, str):
        value = value[0]
    return float(value)


def _fields(entry: Any) -> list[Any]:
    """The positional fields of one loadmat cell / struct element (cell rows come back nested in (1, k) arrays)."""
    names = getattr(getattr(entry, "dtype", None), "names", None)
    if names:
        return [entry[n] for n in names]
    if hasattr(entry, "reshape") and getattr(entry, "dtype", None) is not None and entry.dtype.kind == "O":
        flat = entry.reshape(-1)
        return _fields(flat[0]) if flat.size == 1 else list(flat)
    return list(entry)


def _load_mat(path: str | Path, key: str):
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read as a MATLAB file ({e})") from e
    if key not in mat:
        raise DatasetError(
            f"{path}: no variable '{key}' (found: {', '.join(k for k in mat if not k.startswith('__'))})")
    return mat


def read_pascal50s(pairs_mat: str | Path, consensus_mat: str | Path, *, n_references: int | None = None,
                   seed: int = 0, positive_is_a: bool = True) -> list[dict[str, Any]]:
    """One row per candidate pair: image, a, b, category (HC/HI/HM/MM), winner ('a'/'b'/'tie'), references, votes."""
    pairs = _load_mat(pairs_mat, "new_input")
    entries, categories = pairs["new_input"].reshape(-1), pairs["category"].reshape(-1)
    triplets = _load_mat(consensus_mat, "triplets")["triplets"].reshape(-1)
    if len(triplets) != PAIRS_PER_TRIPLET_BLOCK * len(entries):
        raise DatasetError(f"{consensus_mat}: {len(triplets)} triplets for {len(entries)} pairs in {pairs_mat} "
                           f"(expected {PAIRS_PER_TRIPLET_BLOCK} per pair)")
    rng = random.Random(seed)
    rows = []
    for i, (entry, category) in enumerate(zip(entries, categories)):
        block = triplets[i * PAIRS_PER_TRIPLET_BLOCK:(i + 1) * PAIRS_PER_TRIPLET_BLOCK]
        block = [_fields(t) for t in block]
        entry = _fields(entry)
        votes = [_number(t[3]) for t in block]
        for_a = sum(v > 0 for v in votes) if positive_is_a else sum(v < 0 for v in votes)
        for_b = len(votes) - for_a
        refs = list(dict.fromkeys(_text(t[0]) for t in block))
        if n_references is not None and len(refs) > n_references:
            refs = rng.sample(refs, n_references)
        code = int(_number(category))
        if code not in PASCAL_CATEGORIES:
            raise DatasetError(f"{pairs_mat}: pair {i}: category {code} is not 1-4 (HC, HI, HM, MM)")
        rows.append({"image": _text(entry[0]), "a": _text(entry[1]), "b": _text(entry[2]),
                     "category": PASCAL_CATEGORIES[code], "votes_a": for_a, "votes_b": for_b,
                     "winner": "a" if for_a > for_b else "b" if for_b > for_a else "tie", "references": refs})
    return rows
