"""Retrieval directories: image and caption embeddings with the caption→image map (docs/dn.md).

    DIR/<split>.safetensors     tensors 'image' (N, D) [or (N, V, D)], 'text' (M, D), 'text_to_image' (M,) int64
    DIR/unlabeled.safetensors   optional held-out pool for DN's means: 'image' and/or 'text' (no map needed)
    DIR/meta.json               optional: {"model": ..., "dataset": ...}, shared by the splits (merged on save)
    DIR/<split>.skipped.json    optional: images of that split dropped as unreadable, [{row, path, error}]
                                (loaded as the split's meta['skipped'])

Embeddings are raw (unnormalised), as in feature directories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from clipadapt.errors import FeatureDirError
from clipadapt.builtin import resolve_dir
from clipadapt.features.checksums import check_checksums, write_checksums
from clipadapt.features.io import atomic_save_tensors, check_finite, load_tensors
from clipadapt.fileio import atomic_write_json, read_json


@dataclass
class RetrievalSet:
    """Raw image (N, D) / (N, V, D) and caption (M, D) embeddings; `text_to_image[j]` is caption j's image."""

    image: Tensor
    text: Tensor
    text_to_image: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def subset_images(self, index: Tensor) -> RetrievalSet:
        """The images `index` and all their captions, with the map re-indexed."""
        index = torch.as_tensor(index, dtype=torch.long)
        new_id = torch.full((self.image.shape[0],), -1, dtype=torch.long)
        new_id[index] = torch.arange(index.numel())
        keep = new_id[self.text_to_image] >= 0
        return RetrievalSet(self.image[index], self.text[keep], new_id[self.text_to_image[keep]], dict(self.meta))


def _validate(tensors: dict[str, Tensor], path: Path, need_map: bool) -> RetrievalSet:
    image, text, t2i = tensors.get("image"), tensors.get("text"), tensors.get("text_to_image")
    if need_map and (image is None or text is None or t2i is None):
        missing = [k for k in ("image", "text", "text_to_image") if k not in tensors]
        raise FeatureDirError(f"{path.name}: tensors {missing} are missing (found: {sorted(tensors)})")
    if image is None and text is None:
        raise FeatureDirError(f"{path.name}: needs tensor 'image' and/or 'text' (found: {sorted(tensors)})")
    for name, t in (("image", image), ("text", text)):
        if t is not None:
            check_finite(t, name, path)
    if image is not None and image.ndim not in (2, 3):
        raise FeatureDirError(f"{path.name}: tensor 'image' must be (N, D) or (N, V, D), got {tuple(image.shape)}")
    if text is not None and text.ndim != 2:
        raise FeatureDirError(f"{path.name}: tensor 'text' must be (M, D), got {tuple(text.shape)}")
    if image is not None and text is not None and image.shape[-1] != text.shape[-1]:
        raise FeatureDirError(
            f"{path.name}: 'image' has D={image.shape[-1]} but 'text' has D={text.shape[-1]} — "
            "were they computed with the same model?"
        )
    if t2i is not None:
        if t2i.dtype.is_floating_point or t2i.ndim != 1 or (text is not None and t2i.shape[0] != text.shape[0]):
            raise FeatureDirError(
                f"{path.name}: 'text_to_image' must be (M,) int64 with M = {None if text is None else text.shape[0]} "
                f"captions, got {tuple(t2i.shape)} {t2i.dtype}"
            )
        t2i = t2i.long()
        n = image.shape[0] if image is not None else 0
        if t2i.numel() and (int(t2i.min()) < 0 or int(t2i.max()) >= n):
            raise FeatureDirError(
                f"{path.name}: 'text_to_image' values lie in [{int(t2i.min())}, {int(t2i.max())}] but there are {n} images"
            )
    as_float = lambda t: None if t is None else t.float()  # noqa: E731
    return RetrievalSet(as_float(image), as_float(text), t2i)


def load_retrieval_split(directory: str | Path, split: str = "test") -> RetrievalSet:
    """Read `DIR/<split>.safetensors` (the 'unlabeled' pool needs no caption→image map); DIR may be a built-in set
    ('builtin:coco500'). A feature directory's 'classnames' in meta.json are not retrieval metadata and are dropped."""
    directory = resolve_dir(directory)
    if not directory.is_dir():
        raise FeatureDirError(f"{directory}: retrieval directory not found")
    check_checksums(directory)
    path = directory / f"{split}.safetensors"
    rs = _validate(load_tensors(path), path, need_map=split != "unlabeled")
    meta_path = directory / "meta.json"
    meta = read_json(meta_path, what="meta.json") if meta_path.is_file() else {}
    rs.meta = {k: v for k, v in meta.items() if k != "classnames"} if isinstance(meta, dict) else meta
    skipped_file = _skipped_path(directory, split)
    if skipped_file.is_file():
        rs.meta = {**rs.meta, "skipped": read_json(skipped_file, what="skipped-images list")}
    return rs


def has_retrieval_split(directory: str | Path, split: str) -> bool:
    return (resolve_dir(directory) / f"{split}.safetensors").is_file()


def save_retrieval_split(directory: str | Path, split: str, rs: RetrievalSet) -> Path:
    """Write one split (atomically), its skipped images (`<split>.skipped.json`) and meta.json.

    meta.json is shared by every split of the directory, so this split's fields are merged into it (saving the
    pool after the test split must not drop the test's 'dataset'); the per-split 'skipped' list goes to the
    split's own file, never to meta.json, where the next split's save would replace it."""
    directory = Path(directory)
    tensors = {k: v for k, v in (("image", rs.image), ("text", rs.text), ("text_to_image", rs.text_to_image)) if v is not None}
    atomic_save_tensors(directory / f"{split}.safetensors", tensors)
    skipped_file = _skipped_path(directory, split)
    if rs.meta.get("skipped"):
        atomic_write_json(skipped_file, rs.meta["skipped"])
    else:
        skipped_file.unlink(missing_ok=True)  # an earlier save's list no longer describes this split
    meta = {k: v for k, v in rs.meta.items() if k != "skipped"}
    if meta:
        meta_path = directory / "meta.json"
        old = read_json(meta_path, what="meta.json") if meta_path.is_file() else {}
        atomic_write_json(meta_path, {**(old if isinstance(old, dict) else {}), **meta})
    write_checksums(directory)  # over every split written so far
    return directory


def _skipped_path(directory: Path, split: str) -> Path:
    return Path(directory) / f"{split}.skipped.json"


def holdout_split(rs: RetrievalSet, n_holdout: int, seed: int = 0) -> tuple[RetrievalSet, RetrievalSet]:
    """(evaluated, held out): `n_holdout` random images with all their captions leave the evaluation."""
    n = rs.image.shape[0]
    if not 0 < n_holdout < n:
        raise FeatureDirError(f"the holdout must be between 1 and {n - 1} images for {n} images, got {n_holdout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return rs.subset_images(perm[n_holdout:].sort().values), rs.subset_images(perm[:n_holdout].sort().values)
