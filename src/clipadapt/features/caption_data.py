"""Image–caption data through the encoders: Karpathy-style caption JSON (Flickr30k / MSCOCO) -> RetrievalSet.

Karpathy JSON: {"images": [{"filename", "filepath"?, "split", "sentences": [{"raw": ...}, ...]}, ...]}; the image
file is IMAGE_ROOT/filepath/filename (or IMAGE_ROOT/filename without 'filepath'). Encoding uses
`clipadapt.encoders.load_encoder` (`encode_images`, `encode_texts`, `preprocess`) and keeps raw embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm import tqdm

from clipadapt.errors import DatasetError
from clipadapt.features.io import read_json
from clipadapt.features.retrieval_dir import RetrievalSet


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
            raise DatasetError(f"{path}: images[{i}] ({entry['filename']}): every sentence object needs a 'raw' caption")
        captions = [s["raw"] if isinstance(s, dict) else str(s) for s in entry["sentences"]]
        if not captions:
            raise DatasetError(f"{path}: images[{i}] ({entry['filename']}) has no sentences")
        rel = Path(entry.get("filepath", "")) / entry["filename"]
        out.append({"path": str(rel), "captions": captions})
    if not out:
        found = sorted({str(e.get("split")) for e in data["images"]})
        raise DatasetError(f"{path}: no images in split(s) {list(splits)}; splits present: {found}")
    return out


def encode_image_files(encoder, paths: Sequence[str | Path], batch_size: int = 64) -> Tensor:
    """(N, D) raw image embeddings of image files, batched, with a progress bar."""
    from PIL import Image

    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="images", leave=False):
        batch = []
        for p in paths[start : start + batch_size]:
            try:
                with Image.open(p) as im:
                    batch.append(encoder.preprocess(im.convert("RGB")))
            except (OSError, ValueError) as e:
                raise DatasetError(f"{p}: cannot read image ({e})") from e
        with torch.no_grad():
            chunks.append(encoder.encode_images(torch.stack(batch)).float().cpu())
    return torch.cat(chunks)


def encode_captions(encoder, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """(M, D) raw text embeddings, batched, with a progress bar."""
    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc="captions", leave=False):
        with torch.no_grad():
            chunks.append(encoder.encode_texts(list(texts[start : start + batch_size])).float().cpu())
    return torch.cat(chunks)


def retrieval_set_from_entries(encoder, entries: Sequence[dict], image_root: str | Path, batch_size: int = 64) -> RetrievalSet:
    """Encode the images and every caption of `entries` (from read_karpathy_json)."""
    root = Path(image_root)
    image = encode_image_files(encoder, [root / e["path"] for e in entries], batch_size)
    captions = [c for e in entries for c in e["captions"]]
    t2i = torch.tensor([i for i, e in enumerate(entries) for _ in e["captions"]], dtype=torch.long)
    text = encode_captions(encoder, captions, batch_size)
    return RetrievalSet(image=image, text=text, text_to_image=t2i, meta={"model": getattr(encoder, "model_id", None)})
