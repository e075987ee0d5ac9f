"""The dataset registry as data: CoOp's 11 datasets and the ImageNet variants, class names, prompt templates.

Each entry is one `DatasetInfo` row (CoOp folder names, split file, image sub-directory, templates); adding a
dataset that follows an existing layout is adding a row. ImageNet class names (CLIP's cleaned names), WordNet ids
and the template sets are package data (`imagenet.json`, `templates.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from clipadapt.errors import DatasetError

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

# layouts understood by the coop builder
SPLIT_JSON = "split-json"  # split_zhou_<Name>.json: {"train": [[relpath, label, classname], ...], "val", "test"}
FGVC_VARIANTS = "fgvc-variants"  # FGVC-Aircraft: variants.txt + images_variant_<split>.txt
IMAGENET_FOLDERS = "imagenet-folders"  # <image_dir>/{train,val}/<wnid>/*
IMAGENET_VARIANT = "imagenet-variant"  # test-only ImageFolder: <image_dir>/<wnid or index>/*


@dataclass(frozen=True)
class DatasetInfo:
    """One registry row. `kind` is the spec prefix; `layout` says how `coop:` reads it."""

    name: str
    kind: str
    num_classes: int | None
    templates: tuple[str, ...]
    layout: str = ""
    dataset_dir: str = ""  # CoOp's folder name under DATA root (accepted as a child of the given root)
    image_dir: str = ""  # images relative to the dataset root ("" = the root itself)
    split_file: str = ""
    splits: tuple[str, ...] = ("train", "val", "test")
    label_space: str = ""  # imagenet variants: "wnid" folders, "index" folders (0..999), subset key
    description: str = ""
    spec_hint: str = ""  # how to write the spec when it is not KIND:NAME:<root>

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    def summary(self) -> dict[str, Any]:
        """A JSON-able row for `clipadapt datasets`."""
        return {
            "spec": self.spec_hint or f"{self.kind}:{self.name}:<root>",
            "kind": self.kind,
            "name": self.name,
            "classes": self.num_classes,
            "splits": ",".join(self.splits),
            "split_file": self.split_file or self.layout,
            "templates": len(self.templates),
            "template": self.templates[0] if self.templates else "",
            "description": self.description,
        }


def _coop(name, dataset_dir, image_dir, split_name, num_classes, template, description):
    return DatasetInfo(
        name=name,
        kind="coop",
        num_classes=num_classes,
        templates=(template,),
        layout=SPLIT_JSON,
        dataset_dir=dataset_dir,
        image_dir=image_dir,
        split_file=f"split_zhou_{split_name}.json",
        description=description,
    )


@cache
def _package_json(filename: str) -> dict[str, Any]:
    return json.loads(resources.files("clipadapt.data").joinpath(filename).read_text(encoding="utf-8"))


def template_sets() -> dict[str, tuple[str, ...]]:
    """Named template sets: imagenet7 (CLIP's selected 7), imagenet80 (CLIP's 80), default."""
    data = _package_json("templates.json")
    return {"default": DEFAULT_TEMPLATES, "imagenet7": tuple(data["imagenet7"]),
            "imagenet80": tuple(data["imagenet80"])}


def imagenet_meta() -> dict[str, Any]:
    """ImageNet-1k classnames (CLIP's cleaned names) and WordNet ids in the standard order, A/R subsets."""
    return _package_json("imagenet.json")


def _imagenet_rows() -> list[DatasetInfo]:
    seven = template_sets()["imagenet7"]
    variants = [  # test-only ImageFolders: name, CoOp folder, image folder, label space, classes, description
        ("imagenet_v2", "imagenetv2", "imagenetv2-matched-frequency-format-val", "index", 1000,
         "ImageNet-V2 matched-frequency; folders 0..999 are class indices"),
        ("imagenet_sketch", "imagenet-sketch", "images", "wnid", 1000, "ImageNet-Sketch; wnid folders"),
        ("imagenet_a", "imagenet-adversarial", "imagenet-a", "imagenet_a_wnids", 200,
         "ImageNet-A; 200-class subset, wnid folders"),
        ("imagenet_r", "imagenet-rendition", "imagenet-r", "imagenet_r_wnids", 200,
         "ImageNet-R; 200-class subset, wnid folders"),
    ]
    return [
        DatasetInfo(
            name="imagenet", kind="coop", num_classes=1000, templates=seven, layout=IMAGENET_FOLDERS,
            dataset_dir="imagenet", image_dir="images", label_space="wnid",
            description="ImageNet-1k; <image_dir>/train and <image_dir>/val (val is the test split)",
        ),
        *(DatasetInfo(name=name, kind="coop", num_classes=classes, templates=seven, layout=IMAGENET_VARIANT,
                      dataset_dir=folder, image_dir=images, splits=("test",), label_space=labels,
                      description=description)
          for name, folder, images, labels, classes, description in variants),
    ]


@cache
def coop_registry() -> dict[str, DatasetInfo]:
    """CoOp's 11 few-shot datasets plus the ImageNet variants, by name."""
    rows = [
        _coop("caltech101", "caltech-101", "101_ObjectCategories", "Caltech101", 100, "a photo of a {}.",
              "Caltech-101 (no background class)"),
        _coop("oxford_pets", "oxford_pets", "images", "OxfordPets", 37, "a photo of a {}, a type of pet.",
              "Oxford-IIIT Pets"),
        _coop("stanford_cars", "stanford_cars", "", "StanfordCars", 196, "a photo of a {}.",
              "Stanford Cars; split paths start with cars_train/ or cars_test/"),
        _coop("oxford_flowers", "oxford_flowers", "jpg", "OxfordFlowers", 102, "a photo of a {}, a type of flower.",
              "Oxford Flowers-102"),
        _coop("food101", "food-101", "images", "Food101", 101, "a photo of {}, a type of food.", "Food-101"),
        DatasetInfo(
            name="fgvc_aircraft", kind="coop", num_classes=100, templates=("a photo of a {}, a type of aircraft.",),
            layout=FGVC_VARIANTS, dataset_dir="fgvc_aircraft", image_dir="images",
            split_file="images_variant_<split>.txt", description="FGVC-Aircraft variants (fgvc-aircraft-2013b/data)",
        ),
        _coop("sun397", "sun397", "SUN397", "SUN397", 397, "a photo of a {}.", "SUN397"),
        _coop("dtd", "dtd", "images", "DescribableTextures", 47, "{} texture.", "Describable Textures"),
        _coop("eurosat", "eurosat", "2750", "EuroSAT", 10, "a centered satellite photo of {}.", "EuroSAT RGB"),
        _coop("ucf101", "ucf101", "UCF-101-midframes", "UCF101", 101, "a photo of a person doing {}.",
              "UCF101 middle frames"),
        *_imagenet_rows(),
    ]
    return {r.name: r for r in rows}


COOP_DATASETS: tuple[str, ...] = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
    "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101",
)  # the 11 datasets of the CoOp few-shot protocol


def shipped_classnames(name: str) -> list[str] | None:
    """Class names shipped with the package for registry dataset `name` (ImageNet and variants), else None."""
    info = coop_registry().get(name)
    if info is None or not info.layout.startswith("imagenet"):
        return None
    meta = imagenet_meta()
    names = meta["classnames"]
    if info.label_space in ("wnid", "index"):
        return list(names)
    index = {w: i for i, w in enumerate(meta["wnids"])}
    return [names[index[w]] for w in meta[info.label_space]]


def get_templates(name: str | None = None) -> list[str]:
    """Prompt templates ("{}" = class name) for a registry dataset or a named set; None -> the generic default.

    Names: any CoOp registry name (its CoOp template; ImageNet and variants: CLIP's 7-template ensemble), a torchvision
    registry name, or a template set: `default`, `imagenet7`, `imagenet80`.
    """
    if name is None:
        return list(DEFAULT_TEMPLATES)
    sets = template_sets()
    if name in sets:
        return list(sets[name])
    if name in coop_registry():
        return list(coop_registry()[name].templates)
    from clipadapt.data._torchvision import torchvision_registry

    if name in torchvision_registry():
        return list(torchvision_registry()[name].templates)
    raise DatasetError(
        f"unknown template set or dataset {name!r}; expected one of {sorted(sets)} or a registry dataset "
        f"({', '.join(sorted(coop_registry()))})"
    )


def flowers102_classnames() -> list[str]:
    """Oxford Flowers-102 class names in label order (torchvision's Flowers102 has no `classes`)."""
    names = _package_json("flowers102.json").get("classnames")
    return list(names)
