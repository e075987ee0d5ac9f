"""Datasets: CoOp split JSON, ImageFolder, CSV, torchvision, WebDataset shards, HF datasets; class names, prompt
templates, few-shot sampling.

    ds = build_dataset("coop:oxford_pets:/data/oxford_pets", "train")
    ds.classnames, ds.templates, ds.paths, ds.labels, ds[i] -> (PIL RGB image, label), ds.fingerprint()
"""

from typing import TYPE_CHECKING

from clipadapt._lazy import lazy_exports

if TYPE_CHECKING:
    from clipadapt.data._files import path_under
    from clipadapt.data._torchvision import from_torchvision
    from clipadapt.data.catalog import COOP_DATASETS, DatasetInfo, get_templates
    from clipadapt.data.dataset import CaptionedImages, ImageDataset
    from clipadapt.data.fewshot import load_indices, sample_disjoint, sample_few_shot, save_indices
    from clipadapt.data.registry import build_caption_dataset, build_dataset, get_classnames, list_datasets

__all__ = [
    "COOP_DATASETS",
    "CaptionedImages",
    "DatasetInfo",
    "ImageDataset",
    "build_caption_dataset",
    "build_dataset",
    "from_torchvision",
    "get_classnames",
    "get_templates",
    "list_datasets",
    "load_indices",
    "path_under",
    "sample_disjoint",
    "sample_few_shot",
    "save_indices",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    "clipadapt.data._files": ["path_under"],
    "clipadapt.data._torchvision": ["from_torchvision"],
    "clipadapt.data.catalog": ["COOP_DATASETS", "DatasetInfo", "get_templates"],
    "clipadapt.data.dataset": ["CaptionedImages", "ImageDataset"],
    "clipadapt.data.fewshot": ["load_indices", "sample_disjoint", "sample_few_shot", "save_indices"],
    "clipadapt.data.registry": ["build_caption_dataset", "build_dataset", "get_classnames", "list_datasets"],
})
