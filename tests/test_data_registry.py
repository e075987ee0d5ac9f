"""The dataset registry as data: every CoOp entry, ImageNet variant and torchvision entry, class names, templates."""

from __future__ import annotations

import pytest

from clipadapt.data import COOP_DATASETS, get_classnames, get_templates, list_datasets
from clipadapt.data._torchvision import torchvision_registry
from clipadapt.data.catalog import coop_registry, flowers102_classnames, imagenet_meta
from clipadapt.errors import DatasetError

# CoOp's split-file names and image folders, written out independently of the registry
COOP_SPLIT_FILES = {
    "caltech101": ("split_zhou_Caltech101.json", "101_ObjectCategories", 100),
    "oxford_pets": ("split_zhou_OxfordPets.json", "images", 37),
    "stanford_cars": ("split_zhou_StanfordCars.json", "", 196),
    "oxford_flowers": ("split_zhou_OxfordFlowers.json", "jpg", 102),
    "food101": ("split_zhou_Food101.json", "images", 101),
    "fgvc_aircraft": ("images_variant_<split>.txt", "images", 100),
    "sun397": ("split_zhou_SUN397.json", "SUN397", 397),
    "dtd": ("split_zhou_DescribableTextures.json", "images", 47),
    "eurosat": ("split_zhou_EuroSAT.json", "2750", 10),
    "ucf101": ("split_zhou_UCF101.json", "UCF-101-midframes", 101),
    "imagenet": ("", "images", 1000),
}


def test_registry_has_the_eleven_coop_datasets():
    assert sorted(COOP_DATASETS) == sorted(COOP_SPLIT_FILES)
    assert set(COOP_DATASETS) <= set(coop_registry())


@pytest.mark.parametrize("name", sorted(COOP_SPLIT_FILES))
def test_coop_entry(name: str):
    info = coop_registry()[name]
    split_file, image_dir, num_classes = COOP_SPLIT_FILES[name]
    assert info.kind == "coop" and info.num_classes == num_classes and info.image_dir == image_dir
    if split_file:
        assert info.split_file == split_file
    assert info.splits == ("train", "val", "test")
    templates = get_templates(name)
    assert templates and all(t.count("{}") == 1 for t in templates)
    if name == "imagenet":
        assert get_classnames(name) == imagenet_meta()["classnames"] and len(templates) == 7
    else:
        with pytest.raises(DatasetError, match="come from its split file"):
            get_classnames(name)


def test_coop_per_dataset_templates_match_coop():
    expected = {
        "oxford_pets": "a photo of a {}, a type of pet.",
        "oxford_flowers": "a photo of a {}, a type of flower.",
        "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
        "dtd": "{} texture.",
        "eurosat": "a centered satellite photo of {}.",
        "food101": "a photo of {}, a type of food.",
        "ucf101": "a photo of a person doing {}.",
        "caltech101": "a photo of a {}.",
        "sun397": "a photo of a {}.",
        "stanford_cars": "a photo of a {}.",
    }
    for name, template in expected.items():
        assert get_templates(name) == [template]


@pytest.mark.parametrize("name, count", [("imagenet_v2", 1000), ("imagenet_sketch", 1000), ("imagenet_a", 200),
                                         ("imagenet_r", 200)])
def test_imagenet_variants_are_test_only_with_shipped_names(name: str, count: int):
    info = coop_registry()[name]
    assert info.splits == ("test",) and info.num_classes == count
    names = get_classnames(name)
    assert len(names) == count and set(names) <= set(imagenet_meta()["classnames"])


def test_shipped_imagenet_metadata_is_consistent():
    meta = imagenet_meta()
    assert len(meta["classnames"]) == 1000 and len(meta["wnids"]) == 1000
    assert meta["wnids"] == sorted(meta["wnids"]) and len(set(meta["wnids"])) == 1000
    assert meta["classnames"][:3] == ["tench", "goldfish", "great white shark"] and meta["wnids"][0] == "n01440764"
    for key in ("imagenet_a_wnids", "imagenet_r_wnids"):
        assert len(meta[key]) == 200 and set(meta[key]) <= set(meta["wnids"]) and meta[key] == sorted(meta[key])


def test_template_sets():
    assert get_templates() == ["a photo of a {}."] == get_templates("default")
    assert len(get_templates("imagenet80")) == 80 and len(set(get_templates("imagenet80"))) == 80
    assert get_templates("imagenet7")[0] == "itap of a {}."
    assert all(t.count("{}") == 1 for t in get_templates("imagenet80"))
    with pytest.raises(DatasetError, match="unknown template set or dataset 'imagenet81'"):
        get_templates("imagenet81")


@pytest.mark.parametrize("name", sorted(torchvision_registry()))
def test_torchvision_entry(name: str):
    import torchvision.datasets

    entry = torchvision_registry()[name]
    assert hasattr(torchvision.datasets, entry.cls)
    assert entry.splits and all(t.count("{}") == 1 for t in get_templates(name))
    assert any(r.kind == "torchvision" and r.name == name for r in list_datasets("torchvision"))


def test_flowers102_names():
    names = flowers102_classnames()
    assert len(names) == 102 and len(set(names)) == 102
    assert names[0] == "pink primrose" and names[101] == "blackberry lily"


def test_list_datasets_kinds():
    kinds = {r.kind for r in list_datasets()}
    assert kinds == {"coop", "torchvision"}
    assert [r.name for r in list_datasets("coop")] == list(coop_registry())


def test_get_classnames_of_unknown_name():
    with pytest.raises(DatasetError, match="no shipped class names for 'mystuff'"):
        get_classnames("mystuff")


def test_get_classnames_of_a_spec_uses_any_existing_split(tmp_path):
    from PIL import Image

    for cls in ("b_b", "a"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (2, 2)).save(tmp_path / "train" / cls / "x.png")
    assert get_classnames(f"imagefolder:{tmp_path}") == ["a", "b b"]
    with pytest.raises(DatasetError, match="test not found"):
        get_classnames(f"imagefolder:{tmp_path}", split="test")
