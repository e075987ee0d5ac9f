"""Image–caption data through the encoders: Karpathy-style caption JSON (Flickr30k / MSCOCO) -> RetrievalSet.

Karpathy JSON: {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw": ...}, ...]}, ...]}; the image
file is IMAGE_ROOT/filepath/filename (or IMAGE_ROOT/filename without 'filepath'). Encoding uses
`clipadapt.encoders.load_encoder` (`encode_images`, `encode_texts`, `preprocess`) and keeps raw embeddings.
Image files are encoded by the dataset pipeline's own loop (`features.extract.extract_split`: background
decoding, batched normalisation, on_error='skip' for unreadable files), not a second one.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from clipadapt.constants import DEFAULT_BATCH_SIZE
from clipadapt.data import path_under
from clipadapt.data.dataset import open_rgb
from clipadapt.errors import DatasetError
from clipadapt.features.extract import extract_split, read_skipped
from clipadapt.features.retrieval_dir import RetrievalSet
from clipadapt.fileio import read_json

log = logging.getLogger(__name__)


def read_karpathy_json(path: str | Path, splits: Sequence[str]) -> list[dict[str, Any]]:
    """The image entries of `splits` (in file order), each with 'path' (relative) and 'captions'."""
    path = Path(path)
    data = read_json(path, what="caption JSON", error=DatasetError)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: expected a Karpathy-style JSON object with a list 'images'")
    out = []
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: images[{i}] must be an object, got {type(entry).__name__}")
        if entry.get("split") not in splits:
            continue
        if "filename" not in entry or not isinstance(entry.get("sentences"), list):
            raise DatasetError(f"{path}: images[{i}] needs 'filename' and a list 'sentences'")
        if any(isinstance(s, dict) and "raw" not in s for s in entry["sentences"]):
            raise DatasetError(f"{path}: images[{i}] ({entry['filename']}): every sentence object needs a "
                               "'raw' caption")
        captions = [s["raw"] if isinstance(s, dict) else str(s) for s in entry["sentences"]]
        if not captions:
            raise DatasetError(f"{path}: images[{i}] ({entry['filename']}) has no sentences")
        rel = Path(entry.get("filepath", "")) / entry["filename"]
        out.append({"path": str(rel), "captions": captions, "source": f"{path}: images[{i}]"})
    if not out:
        found = sorted({str(e.get("split")) for e in data["images"]})
        raise DatasetError(f"{path}: no images in split(s) {list(splits)}; splits present: {found}")
    return out


class ImageFiles:
    """Image files as an unlabelled dataset for `extract_split`: row i -> (RGB image of paths[i], None)."""

    def __init__(self, paths: Sequence[str | Path], name: str = "images", split: str = "files"):
        self.paths = [str(p) for p in paths]
        self.name, self.split, self.classnames = name, split, []

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Image.Image, None]:
        return open_rgb(self.paths[i]), None


@dataclass
class EncodedImages:
    """Embeddings of the readable files: `image[k]` belongs to `paths[rows[k]]`; `skipped` lists the others."""

    image: Tensor  # (K, D) raw float32
    rows: list[int]
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {row, path, error}


def encode_image_files(encoder, paths: Sequence[str | Path], batch_size: int = DEFAULT_BATCH_SIZE, *,
                       on_error: str = "fail",
                       num_workers: int = 0, progress: bool = True) -> EncodedImages:
    """Raw image embeddings of image files through `extract_split` (shards in a temporary directory).

    on_error='fail' raises DatasetError naming the first unreadable file; 'skip' drops it (logged, listed in
    `skipped`) and `rows` says which file each embedding is."""
    return encode_dataset_images(encoder, ImageFiles(paths), batch_size, on_error=on_error, num_workers=num_workers,
                                 progress=progress)


def encode_dataset_images(encoder, dataset, batch_size: int = DEFAULT_BATCH_SIZE, *, on_error: str = "fail",
                          num_workers: int = 0,
                          progress: bool = True) -> EncodedImages:
    """`encode_image_files` for any dataset whose rows are `(image, label or None)` (e.g. a `CaptionedImages`
    from a wds:/hf: spec): `extract_split` into a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="clipadapt-images-") as tmp:
        split = extract_split(encoder, dataset, batch_size=batch_size, num_workers=num_workers, on_error=on_error,
                              shard_dir=Path(tmp), progress=progress)
        skipped = read_skipped(Path(tmp))
    dropped = {int(r["row"]) for r in skipped}
    rows = [i for i in range(len(dataset)) if i not in dropped]
    if skipped:
        log.warning("%d of %d images unreadable and skipped (first: %s)", len(skipped), len(dataset),
                    skipped[0]["path"])
    return EncodedImages(image=split.image, rows=rows, skipped=skipped)


def encode_captions(encoder, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """(M, D) raw text embeddings, batched, with a progress bar."""
    starts = tqdm(range(0, len(texts), batch_size), desc="captions", leave=False)
    with torch.no_grad():
        return torch.cat([encoder.encode_texts(list(texts[s : s + batch_size])).float().cpu() for s in starts])


def retrieval_set_from_entries(encoder, entries: Sequence[dict], image_root: str | Path,
                               batch_size: int = DEFAULT_BATCH_SIZE, *,
                               on_error: str = "fail", num_workers: int = 0) -> RetrievalSet:
    """Encode the images and every caption of `entries` (from read_karpathy_json).

    With on_error='skip' an unreadable image is dropped together with its captions; the dropped files are in
    `meta['skipped']` ({row, path, error}, row = index in `entries`)."""
    root = Path(image_root)
    files = [path_under(root, e["path"], e.get("source", f"caption entry {i}")) for i, e in enumerate(entries)]
    encoded = encode_image_files(encoder, files, batch_size, on_error=on_error, num_workers=num_workers)
    return _retrieval_set(encoder, encoded, [e["captions"] for e in entries], batch_size)


def retrieval_set_from_dataset(encoder, dataset, batch_size: int = DEFAULT_BATCH_SIZE, *, on_error: str = "fail",
                               num_workers: int = 0) -> RetrievalSet:
    """Encode the images and captions of a `CaptionedImages` (`clipadapt.data.build_caption_dataset`: wds:/hf:
    specs); unreadable images are dropped with their captions under on_error='skip', as above."""
    encoded = encode_dataset_images(encoder, dataset, batch_size, on_error=on_error, num_workers=num_workers)
    return _retrieval_set(encoder, encoded, dataset.captions, batch_size)


def _retrieval_set(encoder, encoded: EncodedImages, captions: Sequence[Sequence[str]], batch_size: int) -> RetrievalSet:
    """The kept images' embeddings, every caption of theirs encoded, and text_to_image (kept-image index)."""
    kept = [captions[r] for r in encoded.rows]
    t2i = torch.tensor([i for i, caps in enumerate(kept) for _ in caps], dtype=torch.long)
    text = encode_captions(encoder, [c for caps in kept for c in caps], batch_size)
    meta = {"model": getattr(encoder, "model_id", None)}
    if encoded.skipped:
        meta["skipped"] = encoded.skipped
    return RetrievalSet(image=encoded.image, text=text, text_to_image=t2i, meta=meta)
