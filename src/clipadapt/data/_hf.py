"""`hf:NAME_OR_PATH[:SPLIT]` — Hugging Face `datasets`: a `save_to_disk` folder, a folder of data files, or a
dataset already in the local cache (nothing is downloaded unless `datasets` itself is allowed to go online).

The split asked for (`train`, `test`, ...) picks that split of a `DatasetDict`; `:SPLIT` in the spec reads that
HF split whatever clipadapt asks for (e.g. `hf:/data/cars:validation`); a single saved `Dataset` serves every
split. The image column (default: the first `Image` feature) and the label column (default: the first
`ClassLabel` feature, else `label`) are options; class names come from the `ClassLabel` feature (underscores as
spaces), else a class-name file, else the sorted set of a string label column.

Rows are read through the `datasets` table (memory-mapped arrow files), one row's image at a time, so nothing is
materialised; the dataset is map-style, so extraction's row ranges split it across ranks and workers. Row
identity (`ds.paths[i]`) is `ROOT/SPLIT/INDEX`; the feature cache's files digest stats (or hashes) the arrow file
holding each row, so changing the data changes the cache key.
"""

from __future__ import annotations

import bisect
import itertools
from pathlib import Path
from typing import Any

from PIL import Image

from clipadapt.data._extras import require
from clipadapt.data._folder import spec_classnames
from clipadapt.data._spec import Spec
from clipadapt.data.catalog import get_templates
from clipadapt.data.dataset import CaptionedImages, ImageDataset, decode_rgb, open_rgb
from clipadapt.errors import DatasetError

OPTIONS = ("image", "label", "classnames", "templates", "name")
CAPTION_OPTIONS = ("image", "caption", "name")
DEFAULT_CAPTION_COLUMNS = ("captions", "caption", "sentences", "text")
DEFAULT_LABEL_COLUMNS = ("label", "labels", "cls")
DEFAULT_IMAGE_COLUMNS = ("image", "img", "jpg", "png", "webp")


def split_target(root: str) -> tuple[str, str | None]:
    """`NAME_OR_PATH[:SPLIT]` -> (name or path, HF split or None); a colon inside a path (C:\\...) is kept."""
    head, sep, tail = root.rpartition(":")
    if sep and head and tail and not any(c in tail for c in "/\\"):
        return head, tail.strip()
    return root, None


class HfLoader:
    """Item j: row j's image cell of a `datasets.Dataset` (decoded by its `Image` feature) as an RGB PIL image.
    `datasets.Dataset` pickles by its arrow files, so DataLoader workers reopen them memory-mapped."""

    def __init__(self, dataset: Any, column: str, where: str, row_files: tuple[list[str], list[int], list[int]] | None):
        self.dataset, self.column, self.where, self._row_files = dataset, column, where, row_files

    @property
    def files(self) -> list[str] | None:
        """The arrow file holding each row (None for an in-memory dataset)."""
        if self._row_files is None:
            return None
        files, bounds, physical = self._row_files
        return [files[bisect.bisect_right(bounds, p)] for p in physical]

    def __call__(self, j: int) -> Image.Image:
        where = f"{self.where}/{j}"
        try:
            value = self.dataset[int(j)][self.column]
            if isinstance(value, Image.Image):
                return value.convert("RGB")
        except (OSError, ValueError, SyntaxError) as e:  # PIL's errors, raised while `datasets` decodes the cell
            raise DatasetError(f"{where}: cannot read image ({type(e).__name__}: {e})") from e
        if isinstance(value, dict) and value.get("bytes"):
            return decode_rgb(value["bytes"], where)
        if isinstance(value, dict) and value.get("path"):
            return open_rgb(value["path"])
        raise DatasetError(f"{where}: column {self.column!r} holds {type(value).__name__}, expected an image")


# ------------------------------------------------------------------------------------------------- loading
def _load(target: str, datasets) -> tuple[Any, str]:
    """(Dataset or DatasetDict, identity root): a local folder (save_to_disk output, or data files), else a
    dataset name resolved by `datasets.load_dataset` (from its cache when offline)."""
    path = Path(target).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DatasetError(f"hf: {path} is not a directory (expected a save_to_disk folder or a dataset name)")
        root = str(path.resolve())
        saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
        try:
            return (datasets.load_from_disk(root) if saved else datasets.load_dataset(root)), root
        except Exception as e:  # datasets raises FileNotFoundError, ValueError, its own DatasetNotFoundError, ...
            raise DatasetError(f"hf: cannot load {root} ({type(e).__name__}: {e})") from e
    if target.startswith(("/", "./", "../", "~")):
        raise DatasetError(f"hf: {path} not found (expected a save_to_disk folder or a dataset name)")
    try:
        return datasets.load_dataset(target), target
    except Exception as e:
        raise DatasetError(
            f"hf:{target}: cannot load it ({type(e).__name__}: {e}). Offline, a dataset name works only when it is "
            "already in the Hugging Face cache (HF_HOME / HF_DATASETS_CACHE; set HF_HUB_OFFLINE=1 and "
            "HF_DATASETS_OFFLINE=1 to read it without network); or save it with ds.save_to_disk(DIR) and use "
            "hf:DIR"
        ) from e


def _pick_split(obj: Any, spec: Spec, root: str, want: str, datasets) -> tuple[Any, str]:
    if isinstance(obj, datasets.DatasetDict):
        if want not in obj:
            raise DatasetError(f"dataset spec {spec.text!r}: {root} has no split {want!r}; it has {sorted(obj)}"
                               + ("" if ":" in spec.root else f" (or pin one: hf:{root}:SPLIT)"))
        return obj[want], want
    if isinstance(obj, datasets.Dataset):
        return obj, want
    raise DatasetError(f"hf: {root} loaded as {type(obj).__name__}; expected a Dataset or DatasetDict")


def _column(spec: Spec, option: str, features: dict, prefer: type, fallbacks: tuple[str, ...], where: str) -> str:
    if option in spec.options:
        name = spec.options[option]
        if name not in features:
            raise DatasetError(f"{where}: no column {name!r} (?{option}=); columns: {list(features)}")
        return name
    for name, feature in features.items():
        if isinstance(feature, prefer):
            return name
    for name in fallbacks:
        if name in features:
            return name
    feature = "" if prefer is type(None) else f"no {prefer.__name__} feature, "
    raise DatasetError(f"{where}: no {option} column found ({feature}none of {list(fallbacks)}); "
                       f"columns: {list(features)}; choose one with ?{option}=COLUMN")


def _row_files(hfds: Any) -> tuple[list[str], list[int], list[int]] | None:
    """(arrow files, cumulative row bounds, physical row of each row) of a memory-mapped dataset, else None.
    Datasets loaded from disk or the cache are row-wise concatenations of memory-mapped arrow files."""
    table = hfds._data
    blocks = [row[0] for row in table.blocks] if hasattr(table, "blocks") else [table]
    files = [getattr(b, "path", None) for b in blocks]
    if not files or any(f is None for f in files):
        return None
    bounds = list(itertools.accumulate(b.num_rows for b in blocks))
    physical = list(range(len(hfds))) if hfds._indices is None else hfds._indices.column(0).to_pylist()
    return [str(f) for f in files], bounds, [int(p) for p in physical]


def _classnames(spec: Spec, root: str, feature: Any, values: list[Any], where: str,
                datasets) -> tuple[list[int], list[str]]:
    """(labels, class names): ?classnames=FILE or classnames.txt/.json in the folder, else the ClassLabel names,
    else (string labels) their sorted set."""
    folder = Path(root) if Path(root).is_dir() else None
    found = spec_classnames(spec, folder, [folder] if folder is not None else [])
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        if found is not None:
            return values, [str(c) for c in found[1]]
        if isinstance(feature, datasets.ClassLabel):
            return values, [str(c).replace("_", " ").strip() for c in feature.names]
        raise DatasetError(f"{where}: label column holds integers but is not a ClassLabel feature; give the class "
                           "names with ?classnames=FILE (one per line)")
    if all(isinstance(v, str) for v in values):
        names = [str(c) for c in found[1]] if found is not None else sorted(set(values))
        index = {n: i for i, n in enumerate(names)}
        missing = next((v for v in values if v not in index), None)
        if missing is not None:
            raise DatasetError(f"{where}: class {missing!r} is not listed in {found[0]}")
        return [index[v] for v in values], names
    bad = next(v for v in values if not isinstance(v, (int, str)) or isinstance(v, bool))
    raise DatasetError(f"{where}: labels must be integers (ClassLabel) or class-name strings, found {bad!r}")


def _open(spec: Spec, split: str) -> tuple[Any, Any, str, str, str, dict]:
    """(datasets module, the HF split's Dataset, root, HF split name, where, features)."""
    datasets = require("datasets", f"dataset spec {spec.text!r}")
    target, pinned = split_target(spec.root.strip())
    if not target:
        raise DatasetError(f"dataset spec {spec.text!r}: expected hf:NAME_OR_PATH[:SPLIT]")
    obj, root = _load(target, datasets)
    hfds, hf_split = _pick_split(obj, spec, root, pinned or split, datasets)
    return datasets, hfds, root, hf_split, f"hf:{root}/{hf_split}", dict(hfds.features)


def build_hf_captions(spec: Spec, split: str) -> CaptionedImages:
    """Images and captions: `?caption=COLUMN` (default: the first of captions, caption, sentences, text) holding
    a string or a list of strings per row."""
    spec.check_options(CAPTION_OPTIONS)
    datasets, hfds, root, hf_split, where, features = _open(spec, split)
    image_col = _column(spec, "image", features, datasets.Image, DEFAULT_IMAGE_COLUMNS, where)
    caption_col = _column(spec, "caption", features, type(None), DEFAULT_CAPTION_COLUMNS, where)
    captions = []
    for i, value in enumerate(hfds[caption_col]):
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise DatasetError(f"{where}/{i}: column {caption_col!r} holds {type(value).__name__}, expected a "
                               "string or a list of strings")
        captions.append(value)
    return CaptionedImages(kind="hf", name=spec.options.get("name", Path(root).name or root), split=split,
                           paths=[f"{root}/{hf_split}/{i}" for i in range(len(hfds))], captions=captions,
                           loader=HfLoader(hfds.select_columns([image_col]), image_col, where, _row_files(hfds)))


def build_hf(spec: Spec, split: str) -> ImageDataset:
    spec.check_options(OPTIONS)
    datasets, hfds, root, hf_split, where, features = _open(spec, split)
    image_col = _column(spec, "image", features, datasets.Image, DEFAULT_IMAGE_COLUMNS, where)
    label_col = _column(spec, "label", features, datasets.ClassLabel, DEFAULT_LABEL_COLUMNS, where)
    if image_col == label_col:
        raise DatasetError(f"{where}: the image and label columns are both {image_col!r}")
    if len(hfds) == 0:
        raise DatasetError(f"{where}: no rows")
    values = list(hfds[label_col])  # one column read: no image is decoded
    labels, classnames = _classnames(spec, root, features[label_col], values, where, datasets)
    return ImageDataset(
        kind="hf",
        name=spec.options.get("name", Path(root).name or root),
        split=split,
        classnames=classnames,
        templates=get_templates(spec.options.get("templates")),
        paths=[f"{root}/{hf_split}/{i}" for i in range(len(hfds))],
        labels=labels,
        loader=HfLoader(hfds.select_columns([image_col]), image_col, where, _row_files(hfds)),
    )
