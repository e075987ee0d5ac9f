"""`torchvision:NAME:ROOT` — torchvision datasets wrapped as `ImageDataset` (download only when asked)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from PIL import Image

from clipadapt.data._spec import Spec
from clipadapt.data.catalog import DEFAULT_TEMPLATES, DatasetInfo, coop_registry, flowers102_classnames, get_templates
from clipadapt.data.dataset import ImageDataset, to_rgb
from clipadapt.errors import DatasetError

OPTIONS = ("templates", "size", "classes", "image_size")  # the last three: fakedata only


@dataclass(frozen=True)
class TorchvisionEntry:
    """How to build one torchvision dataset: class name, our split -> its keyword arguments, templates."""

    name: str
    cls: str  # attribute of torchvision.datasets
    splits: dict[str, dict[str, Any]]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    num_classes: int | None = None
    extra_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    spec_hint: str = ""

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name, kind="torchvision", num_classes=self.num_classes, templates=self.templates,
            layout=f"torchvision.datasets.{self.cls}", splits=tuple(self.splits), description=self.description,
            spec_hint=self.spec_hint,
        )


def _coop_template(name: str) -> tuple[str, ...]:
    return coop_registry()[name].templates


def _split_kwarg(*splits: str) -> dict[str, dict[str, Any]]:
    """Our split -> the dataset's `split=` argument of the same name."""
    return {s: {"split": s} for s in splits}


@cache
def torchvision_registry() -> dict[str, TorchvisionEntry]:
    train_test = {"train": {"train": True}, "test": {"train": False}}
    rows = [
        TorchvisionEntry("cifar10", "CIFAR10", train_test, num_classes=10, description="CIFAR-10"),
        TorchvisionEntry("cifar100", "CIFAR100", train_test, num_classes=100, description="CIFAR-100"),
        TorchvisionEntry("mnist", "MNIST", train_test, num_classes=10, description="MNIST digits (grey, as RGB)"),
        TorchvisionEntry("stl10", "STL10", _split_kwarg("train", "test"), num_classes=10,
                         description="STL-10 labelled splits"),
        TorchvisionEntry("svhn", "SVHN", _split_kwarg("train", "test"), num_classes=10,
                         description="SVHN cropped digits"),
        TorchvisionEntry("dtd", "DTD", _split_kwarg("train", "val", "test"), _coop_template("dtd"), 47,
                         {"partition": 1}, "DTD partition 1"),
        TorchvisionEntry("flowers102", "Flowers102", _split_kwarg("train", "val", "test"),
                         _coop_template("oxford_flowers"), 102, description="Oxford Flowers-102 (official splits)"),
        TorchvisionEntry("food101", "Food101", _split_kwarg("train", "test"), _coop_template("food101"), 101,
                         description="Food-101"),
        TorchvisionEntry(
            "oxford_pets", "OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}},
            _coop_template("oxford_pets"), 37, description="Oxford-IIIT Pets; train = official trainval",
        ),
        TorchvisionEntry("fgvc_aircraft", "FGVCAircraft", _split_kwarg("train", "val", "test"),
                         _coop_template("fgvc_aircraft"), 100, {"annotation_level": "variant"},
                         "FGVC-Aircraft variants"),
        TorchvisionEntry("stanford_cars", "StanfordCars", _split_kwarg("train", "test"),
                         _coop_template("stanford_cars"), 196, description="Stanford Cars (needs scipy)"),
        TorchvisionEntry(
            "eurosat", "EuroSAT", {"all": {}}, _coop_template("eurosat"), 10,
            description="EuroSAT RGB; no splits in torchvision (split 'all'; coop:eurosat has CoOp's); CoOp's "
                        "class names",
        ),
        TorchvisionEntry(
            "fakedata", "FakeData", {"train": {"random_offset": 0}, "val": {"random_offset": 10**6},
                                     "test": {"random_offset": 2 * 10**6}},
            description="random images, built offline; options ?size=N&classes=C&image_size=S",
            spec_hint="torchvision:fakedata:?size=24&classes=3&image_size=32",
        ),
    ]
    return {r.name: r for r in rows}


# ------------------------------------------------------------------------------------------------- wrapping
class TorchvisionLoader:
    """Item j of a wrapped dataset as an RGB PIL image (a class so that datasets pickle for DataLoader workers)."""

    def __init__(self, dataset: Any, ident: Callable[[int], str]):
        self.dataset, self.ident = dataset, ident

    @property
    def files(self) -> list[Any] | None:
        """The image file of each item when the wrapped dataset lists them (e.g. Flowers102), else None."""
        return getattr(self.ident, "files", None)

    def __call__(self, j: int) -> Image.Image:
        try:
            image = self.dataset[j][0]
        except (OSError, SyntaxError, ValueError) as e:
            raise DatasetError(f"{self.ident(j)}: cannot read image ({type(e).__name__}: {e})") from e
        if not isinstance(image, Image.Image):
            raise DatasetError(f"{self.ident(j)}: the dataset returned {type(image).__name__}, expected a PIL image")
        return to_rgb(image, self.ident(j))


class _Ident:
    def __init__(self, prefix: str, files: Sequence[Any] | None):
        self.prefix, self.files = prefix, files

    def __call__(self, j: int) -> str:
        return f"{self.prefix}/{j} ({self.files[j]})" if self.files is not None else f"{self.prefix}/{j}"


def _per_item(dataset: Any, attrs: tuple[str, ...], column: int) -> list[Any] | None:
    """The first of the dataset's `attrs` holding one value per item, else `column` of its (file, label) samples,
    else None: read without decoding any image."""
    for attr in attrs:
        value = getattr(dataset, attr, None)
        if value is not None and len(value) == len(dataset):
            return list(value)
    samples = getattr(dataset, "_samples", None) or getattr(dataset, "samples", None)
    if samples is not None and len(samples) == len(dataset):
        return [s[column] for s in samples]
    return None


def dataset_labels(dataset: Any) -> list[int]:
    """Integer labels without decoding images where the dataset exposes them, else by iterating it."""
    labels = _per_item(dataset, ("targets", "labels", "_labels"), 1)
    return [int(v) for v in labels] if labels is not None else [int(dataset[i][1]) for i in range(len(dataset))]


def from_torchvision(
    dataset: Any,
    *,
    name: str,
    split: str,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
) -> ImageDataset:
    """Wrap any map-style dataset whose items are `(PIL image, int label)` (e.g. a torchvision dataset).

    Items are identified as `name/split/index`; class names default to `dataset.classes` (underscores -> spaces).
    """
    if classnames is None:
        classes = getattr(dataset, "classes", None)
        if not classes:
            raise DatasetError(f"{name}: the dataset has no 'classes' attribute; pass classnames=[...]")
        classnames = [str(c).replace("_", " ") for c in classes]
    prefix = f"{name}/{split}"
    return ImageDataset(
        kind="torchvision",
        name=name,
        split=split,
        classnames=classnames,
        templates=list(templates) if templates is not None else list(DEFAULT_TEMPLATES),
        paths=[f"{prefix}/{i}" for i in range(len(dataset))],
        labels=dataset_labels(dataset),
        loader=TorchvisionLoader(dataset, _Ident(prefix, _per_item(dataset, ("_image_files", "_images"), 0))),
    )


# ------------------------------------------------------------------------------------------------- spec builder
def build_torchvision(spec: Spec, split: str, download: bool) -> ImageDataset:
    entry = torchvision_registry().get(spec.name)
    if entry is None:
        raise DatasetError(
            f"dataset spec {spec.text!r}: unknown torchvision dataset {spec.name!r}; "
            f"expected one of {', '.join(sorted(torchvision_registry()))}"
        )
    spec.check_options(OPTIONS if entry.name == "fakedata" else ("templates", "download"))
    download = download or spec.options.get("download", "").strip().lower() in ("1", "true", "yes")
    if split not in entry.splits:
        raise DatasetError(f"torchvision:{entry.name}: no split {split!r}; it has {list(entry.splits)} "
                           "(docs/datasets.md)")
    import torchvision.datasets as tvd

    cls = getattr(tvd, entry.cls, None)
    if cls is None:
        raise DatasetError(f"torchvision:{entry.name}: this torchvision has no datasets.{entry.cls}; upgrade "
                           "torchvision")
    kwargs = {**entry.extra_kwargs, **entry.splits[split]}
    templates = get_templates(spec.options["templates"]) if "templates" in spec.options else list(entry.templates)
    if entry.name == "fakedata":
        return _build_fakedata(spec, split, cls, kwargs, templates)
    if not spec.root:
        raise DatasetError(f"dataset spec {spec.text!r}: expected torchvision:{entry.name}:ROOT")
    root = spec.root_path()
    try:
        dataset = cls(root=str(root), download=download, **kwargs)
    except (RuntimeError, FileNotFoundError, OSError) as e:
        hint = "" if download else "; add ?download=1 to the spec (or pass download=True) to fetch it"
        raise DatasetError(f"torchvision:{entry.name}: cannot load from {root} ({e}){hint}") from e
    classnames = _classnames(entry, dataset)
    return from_torchvision(dataset, name=entry.name, split=split, classnames=classnames, templates=templates)


# CoOp's descriptive EuroSAT class names (the folder names are CamelCase codes)
EUROSAT_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}


def _classnames(entry: TorchvisionEntry, dataset: Any) -> list[str]:
    if entry.name in ("mnist", "svhn"):
        return [str(d) for d in range(10)]
    if entry.name == "eurosat":
        return [EUROSAT_CLASSNAMES.get(c, c) for c in dataset.classes]
    if entry.name == "flowers102":
        return flowers102_classnames()
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise DatasetError(f"torchvision:{entry.name}: dataset has no class names")
    return [str(c).replace("_", " ") for c in classes]


def _build_fakedata(spec: Spec, split: str, cls: Any, kwargs: dict[str, Any], templates: list[str]) -> ImageDataset:
    try:
        size = int(spec.options.get("size", 24))
        num_classes = int(spec.options.get("classes", 3))
        side = int(spec.options.get("image_size", 32))
    except ValueError as e:
        raise DatasetError(f"dataset spec {spec.text!r}: size, classes and image_size must be integers ({e})") from e
    if size < 1 or num_classes < 1 or side < 1:
        raise DatasetError(f"dataset spec {spec.text!r}: size, classes and image_size must be >= 1")
    dataset = cls(size=size, image_size=(3, side, side), num_classes=num_classes, **kwargs)
    return from_torchvision(
        dataset, name="fakedata", split=split, classnames=[f"class {i}" for i in range(num_classes)],
        templates=templates
    )
