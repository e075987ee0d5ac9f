"""Dataset specs built on disk in tmp_path: coop (split JSON, FGVC lists, ImageNet folders), imagefolder, csv,
torchvision (FakeData, offline), plus ImageDataset behaviour (fingerprint, subset, corrupt images, pickling)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from clipadapt.data import ImageDataset, build_dataset, from_torchvision
from clipadapt.data.catalog import imagenet_meta
from clipadapt.errors import DatasetError


def write_png(path: Path, value: int = 0, mode: str = "RGB") -> Path:
    """A tiny image whose first pixel encodes `value`, so a test can tell which file was decoded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (value, 7, 9) if mode == "RGB" else value
    Image.new(mode, (4, 3), color).save(path)
    return path


def first_red(image: Image.Image) -> int:
    return image.getpixel((0, 0))[0]


# ------------------------------------------------------------------------------------------------- coop split JSON
@pytest.fixture
def pets_root(tmp_path: Path) -> Path:
    """CoOp OxfordPets layout: <root>/images/*.png + split_zhou_OxfordPets.json (2 classes)."""
    root = tmp_path / "oxford_pets"
    names = ["abyssinian", "beagle"]
    split = {"train": [], "val": [], "test": []}
    for i in range(10):
        rel = f"img_{i}.png"
        write_png(root / "images" / rel, value=10 * i)
        key = "train" if i < 6 else ("val" if i < 8 else "test")
        split[key].append([rel, i % 2, names[i % 2]])
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return root


def test_coop_split_json_reads_paths_labels_classnames_and_template(pets_root: Path):
    ds = build_dataset(f"coop:oxford_pets:{pets_root}", "train")
    split = json.loads((pets_root / "split_zhou_OxfordPets.json").read_text())
    assert ds.name == "oxford_pets" and ds.split == "train" and ds.kind == "coop"
    assert ds.spec == f"coop:oxford_pets:{pets_root}" and ds.subset([0]).spec == ds.spec
    assert ds.paths == [str(pets_root / "images" / rel) for rel, _, _ in split["train"]]
    assert ds.labels == [label for _, label, _ in split["train"]]
    assert ds.classnames == ["abyssinian", "beagle"]
    assert ds.templates == ["a photo of a {}, a type of pet."]
    image, label = ds[3]
    assert image.mode == "RGB" and label == split["train"][3][1] and first_red(image) == 30


def test_coop_accepts_the_parent_data_folder(pets_root: Path):
    direct = build_dataset(f"coop:oxford_pets:{pets_root}", "test")
    via_parent = build_dataset(f"coop:oxford_pets:{pets_root.parent}", "test")
    assert via_parent.paths == direct.paths and via_parent.fingerprint() == direct.fingerprint()


def test_coop_image_dir_and_split_file_overrides(pets_root: Path, tmp_path: Path):
    (pets_root / "images").rename(pets_root / "pics")
    moved = tmp_path / "my_split.json"
    (pets_root / "split_zhou_OxfordPets.json").rename(moved)
    ds = build_dataset(f"coop:oxford_pets:{pets_root}?image_dir=pics&split_file={moved}", "val")
    assert ds.paths == [str(pets_root / "pics" / f"img_{i}.png") for i in (6, 7)]
    assert ds.labels == [0, 1]


def test_coop_templates_option_selects_a_template_set(pets_root: Path):
    ds = build_dataset(f"coop:oxford_pets:{pets_root}?templates=imagenet80", "train")
    assert len(ds.templates) == 80 and all("{}" in t for t in ds.templates)


def test_coop_missing_split_file_names_it(tmp_path: Path):
    (tmp_path / "dtd").mkdir()
    with pytest.raises(DatasetError, match="split_zhou_DescribableTextures.json"):
        build_dataset(f"coop:dtd:{tmp_path / 'dtd'}", "train")


def test_coop_missing_image_dir_suggests_override(pets_root: Path):
    (pets_root / "images").rename(pets_root / "other")
    with pytest.raises(DatasetError, match=r"images.*image_dir"):
        build_dataset(f"coop:oxford_pets:{pets_root}", "train")


def test_coop_unknown_name_lists_registry(tmp_path: Path):
    with pytest.raises(DatasetError, match="unknown CoOp dataset 'petz'.*oxford_pets"):
        build_dataset(f"coop:petz:{tmp_path}", "train")


@pytest.mark.parametrize(
    "entry, match",
    [
        (["a.png", "0", "cat"], r"\[relpath \(str\), label \(int >= 0\)"),
        (["a.png", -1, "cat"], "label"),
        (["a.png", 0], "classname"),
    ],
)
def test_coop_malformed_entry_names_file_and_field(tmp_path: Path, entry, match):
    root = tmp_path / "eurosat"
    write_png(root / "2750" / "a.png")
    (root / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": [entry], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=rf"split_zhou_EuroSAT.json.*'train'\[0\].*{match}"):
        build_dataset(f"coop:eurosat:{root}", "train")


def test_coop_label_gap_and_conflicting_names_are_errors(tmp_path: Path):
    root = tmp_path / "eurosat"
    write_png(root / "2750" / "a.png")
    split = root / "split_zhou_EuroSAT.json"
    split.write_text(json.dumps({"train": [["a.png", 0, "x"], ["a.png", 2, "z"]], "val": [], "test": []}))
    with pytest.raises(DatasetError, match=r"label\(s\) \[1\]"):
        build_dataset(f"coop:eurosat:{root}", "train")
    split.write_text(json.dumps({"train": [["a.png", 0, "x"]], "val": [], "test": [["a.png", 0, "y"]]}))
    with pytest.raises(DatasetError, match="'x'"):
        build_dataset(f"coop:eurosat:{root}", "train")


def test_coop_unknown_split_lists_available(pets_root: Path):
    with pytest.raises(DatasetError, match="no split 'unlabeled'"):
        build_dataset(f"coop:oxford_pets:{pets_root}", "unlabeled")


def test_unknown_spec_option_is_an_error(pets_root: Path):
    with pytest.raises(DatasetError, match=r"unknown option\(s\) \['imagedir'\]"):
        build_dataset(f"coop:oxford_pets:{pets_root}?imagedir=x", "train")


# ------------------------------------------------------------------------------------------------- coop FGVC lists
def test_coop_fgvc_aircraft_variant_lists(tmp_path: Path):
    root = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    root.mkdir()
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = [("1000001", "Cessna 172"), ("1000002", "707-320"), ("1000003", "Cessna 172")]
    for image_id, _ in lines:
        write_png(root / "images" / f"{image_id}.jpg")
    (root / "images_variant_test.txt").write_text("".join(f"{i} {v}\n" for i, v in lines))
    ds = build_dataset(f"coop:fgvc_aircraft:{root}", "test")
    assert ds.classnames == variants
    assert ds.labels == [2, 0, 2]
    assert ds.paths == [str(root / "images" / f"{i}.jpg") for i, _ in lines]
    assert ds.templates == ["a photo of a {}, a type of aircraft."]
    assert ds[1][1] == 0
    (root / "images_variant_val.txt").write_text("1000001 Boeing 999\n")
    with pytest.raises(DatasetError, match=r"images_variant_val.txt:1: variant 'Boeing 999'"):
        build_dataset(f"coop:fgvc_aircraft:{root}", "val")


# ------------------------------------------------------------------------------------------------- ImageNet family
def test_coop_imagenet_wnid_folders_use_imagenet_order_and_clip_names(tmp_path: Path):
    meta = imagenet_meta()
    wnids = [meta["wnids"][5], meta["wnids"][999]]
    for split in ("train", "val"):
        for k, w in enumerate(wnids):
            write_png(tmp_path / "imagenet" / "images" / split / w / f"{split}_{k}.png")
    train = build_dataset(f"coop:imagenet:{tmp_path}", "train")
    test = build_dataset(f"coop:imagenet:{tmp_path / 'imagenet'}", "test")
    assert train.labels == [5, 999] and test.labels == [5, 999]
    assert len(train.classnames) == 1000 and train.classnames[5] == meta["classnames"][5]
    assert test.paths[0].endswith(f"images/val/{wnids[0]}/val_0.png")
    assert len(train.templates) == 7 and train.templates[0] == "itap of a {}."


def test_coop_imagenet_rejects_non_wnid_folder(tmp_path: Path):
    write_png(tmp_path / "images" / "train" / "cats" / "a.png")
    with pytest.raises(DatasetError, match=r"cats is not a class folder"):
        build_dataset(f"coop:imagenet:{tmp_path}", "train")


def test_imagenet_v2_numeric_folders_are_class_indices_not_sorted_order(tmp_path: Path):
    base = tmp_path / "imagenetv2-matched-frequency-format-val"
    for folder in ("2", "10", "100"):
        write_png(base / folder / "x.png")
    ds = build_dataset(f"coop:imagenet_v2:{tmp_path}", "test")
    # sorted folder names are "10", "100", "2": labels must be the integers, not the sorted positions
    assert sorted(zip(ds.paths, ds.labels)) == sorted(
        [(str(base / "10" / "x.png"), 10), (str(base / "100" / "x.png"), 100), (str(base / "2" / "x.png"), 2)]
    )


def test_imagenet_a_uses_its_200_class_subset(tmp_path: Path):
    meta = imagenet_meta()
    subset = meta["imagenet_a_wnids"]
    base = tmp_path / "imagenet-a"
    write_png(base / subset[0] / "a.png")
    write_png(base / subset[199] / "b.png")
    ds = build_dataset(f"coop:imagenet_a:{tmp_path}", "test")
    full_index = {w: i for i, w in enumerate(meta["wnids"])}
    assert ds.labels == [0, 199] and len(ds.classnames) == 200
    assert ds.classnames[199] == meta["classnames"][full_index[subset[199]]]
    write_png(base / meta["wnids"][0] / "c.png")  # tench is not an ImageNet-A class
    with pytest.raises(DatasetError, match="not a class folder"):
        build_dataset(f"coop:imagenet_a:{tmp_path}", "test")


# ------------------------------------------------------------------------------------------------- imagefolder
def test_imagefolder_with_split_dirs_shares_one_label_space(tmp_path: Path):
    write_png(tmp_path / "train" / "red_fox" / "1.png", 1)
    write_png(tmp_path / "train" / "cat" / "2.png", 2)
    write_png(tmp_path / "test" / "dog" / "3.png", 3)
    write_png(tmp_path / "test" / "red_fox" / "sub" / "4.png", 4)
    train = build_dataset(f"imagefolder:{tmp_path}", "train")
    test = build_dataset(f"imagefolder:{tmp_path}", "test")
    assert train.classnames == test.classnames == ["cat", "dog", "red fox"]
    assert train.paths == [str(tmp_path / "train" / "cat" / "2.png"), str(tmp_path / "train" / "red_fox" / "1.png")]
    assert train.labels == [0, 2] and test.labels == [1, 2]
    assert first_red(test[1][0]) == 4
    assert train.name == tmp_path.name and train.templates == ["a photo of a {}."]
    with pytest.raises(DatasetError, match="split folders"):
        build_dataset(f"imagefolder:{tmp_path}", "val")


def test_imagefolder_without_split_dirs_serves_every_split(tmp_path: Path):
    write_png(tmp_path / "b" / "1.png")
    write_png(tmp_path / "a" / "2.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    for split in ("train", "test", "unlabeled"):
        ds = build_dataset(f"imagefolder:{tmp_path}?name=mine", split)
        assert ds.name == "mine" and ds.split == split
        assert ds.paths == [str(tmp_path / "a" / "2.png"), str(tmp_path / "b" / "1.png")] and ds.labels == [0, 1]


def test_imagefolder_errors(tmp_path: Path):
    with pytest.raises(DatasetError, match="is not a directory"):
        build_dataset(f"imagefolder:{tmp_path / 'nope'}", "train")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        build_dataset(f"imagefolder:{tmp_path}", "train")


def test_grey_image_is_returned_as_rgb(tmp_path: Path):
    write_png(tmp_path / "a" / "g.png", 200, mode="L")
    image, _ = build_dataset(f"imagefolder:{tmp_path}", "test")[0]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (200, 200, 200)


# ------------------------------------------------------------------------------------------------- csv
def test_csv_file_with_classname_column(tmp_path: Path):
    write_png(tmp_path / "imgs" / "a.png", 11)
    write_png(tmp_path / "imgs" / "b.png", 22)
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("path,label,classname\nimgs/b.png,1,zebra\nimgs/a.png,0,ant\n")
    ds = build_dataset(f"csv:{csv_file}", "test")
    assert ds.name == "list" and ds.classnames == ["ant", "zebra"]
    assert ds.paths == [str(tmp_path / "imgs" / "b.png"), str(tmp_path / "imgs" / "a.png")]
    assert ds.labels == [1, 0] and first_red(ds[0][0]) == 22


def test_csv_dir_reads_split_file_and_sidecar_classnames(tmp_path: Path):
    write_png(tmp_path / "a.png")
    (tmp_path / "classnames.txt").write_text("ant\nbee\ncow\n")
    (tmp_path / "train.csv").write_text("label,path\n2,a.png\n")
    (tmp_path / "test.csv").write_text("path,label\na.png,1\n")
    train, test = build_dataset(f"csv:{tmp_path}", "train"), build_dataset(f"csv:{tmp_path}", "test")
    assert train.classnames == test.classnames == ["ant", "bee", "cow"]
    assert train.labels == [2] and test.labels == [1] and train.paths == [str(tmp_path / "a.png")]


def test_csv_dir_classname_column_is_merged_across_split_files(tmp_path: Path):
    write_png(tmp_path / "a.png")
    (tmp_path / "train.csv").write_text("path,label,classname\na.png,0,ant\na.png,1,bee\n")
    (tmp_path / "test.csv").write_text("path,label,classname\na.png,1,bee\n")
    assert build_dataset(f"csv:{tmp_path}", "test").classnames == ["ant", "bee"]


@pytest.mark.parametrize(
    "text, match",
    [
        ("file,label\na.png,0\n", r"header must name columns 'path' and 'label'"),
        ("a.png,0\n", r"header must name columns 'path' and 'label'"),
        ("path,label,classname\na.png,zero,ant\n", r"x.csv:2: 'label' must be an integer"),
        ("path,label\na.png,0\n", r"no class name.*classnames.txt"),
        ("path,label,classname\na.png,1,ant\n", r"labels \[0\] have no class name"),
        ("path,label,classname\na.png,0,ant\na.png,0,bee\n", r"x.csv:3: label 0 is named 'bee'"),
    ],
)
def test_csv_bad_input_names_file_and_field(tmp_path: Path, text: str, match: str):
    write_png(tmp_path / "a.png")
    (tmp_path / "x.csv").write_text(text)
    with pytest.raises(DatasetError, match=match):
        build_dataset(f"csv:{tmp_path / 'x.csv'}", "train")


def test_csv_label_out_of_range_of_sidecar(tmp_path: Path):
    (tmp_path / "classnames.json").write_text(json.dumps(["ant", "bee"]))
    (tmp_path / "x.csv").write_text("path,label\na.png,2\n")
    with pytest.raises(DatasetError, match=r"x.csv:2: label 2 out of range.*classnames.json lists 2 classes"):
        build_dataset(f"csv:{tmp_path / 'x.csv'}", "train")


def test_csv_missing_split_file(tmp_path: Path):
    (tmp_path / "train.csv").write_text("path,label\n")
    with pytest.raises(DatasetError, match=r"val.csv not found.*train.csv"):
        build_dataset(f"csv:{tmp_path}", "val")


# ------------------------------------------------------------------------------------------------- torchvision
def test_torchvision_fakedata_builds_offline_with_labels_from_items():
    import torchvision

    ds = build_dataset("torchvision:fakedata:?size=12&classes=4&image_size=8", "val")
    reference = torchvision.datasets.FakeData(size=12, image_size=(3, 8, 8), num_classes=4, random_offset=10**6)
    assert ds.labels == [reference[i][1] for i in range(12)]
    assert ds.paths == [f"fakedata/val/{i}" for i in range(12)]
    assert ds.classnames == [f"class {i}" for i in range(4)]
    image, label = ds[5]
    assert image.size == (8, 8) and image.tobytes() == reference[5][0].tobytes() and label == reference[5][1]
    train = build_dataset("torchvision:fakedata:?size=12&classes=4&image_size=8", "train")
    assert train.fingerprint() != ds.fingerprint()


def test_from_torchvision_wraps_a_map_style_dataset():
    class Tiny:
        classes = ["big_cat", "dog"]
        targets = [1, 0, 1]

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return Image.new("L", (2, 2), 50 * i), self.targets[i]

    ds = from_torchvision(Tiny(), name="tiny", split="test")
    assert ds.classnames == ["big cat", "dog"] and ds.labels == [1, 0, 1]
    image, label = ds[2]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (100, 100, 100) and label == 1


def test_torchvision_absent_without_download_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DatasetError, match=r"torchvision:cifar10: cannot load from .*\?download=1 to the spec"):
        build_dataset(f"torchvision:cifar10:{tmp_path}", "train")


@pytest.mark.parametrize("option, expected", [("", False), ("?download=0", False), ("?download=1", True)])
def test_spec_download_option_reaches_torchvision(tmp_path: Path, monkeypatch, option, expected):
    """`?download=1` lets every command (extract, eval, fewshot, ...) fetch a torchvision dataset."""
    import torchvision.datasets as tvd

    seen = {}

    class Recorder:
        def __init__(self, root, download, **kwargs):
            seen["download"] = download
            raise RuntimeError("stop here")

    monkeypatch.setattr(tvd, "CIFAR10", Recorder)
    with pytest.raises(DatasetError):
        build_dataset(f"torchvision:cifar10:{tmp_path}{option}", "train")
    assert seen["download"] is expected


def test_torchvision_unknown_name_and_split(tmp_path: Path):
    with pytest.raises(DatasetError, match="unknown torchvision dataset 'imagenet21k'"):
        build_dataset(f"torchvision:imagenet21k:{tmp_path}", "train")
    with pytest.raises(DatasetError, match=r"torchvision:cifar10: no split 'val'"):
        build_dataset(f"torchvision:cifar10:{tmp_path}", "val")


# ------------------------------------------------------------------------------------------------- ImageDataset
def test_unknown_spec_kind_is_an_error():
    with pytest.raises(DatasetError, match="unknown kind 'parquet'"):
        build_dataset("parquet:foo", "train")
    with pytest.raises(DatasetError, match="expected KIND"):
        build_dataset("/data/pets", "train")


def test_corrupt_image_error_names_the_path(tmp_path: Path):
    write_png(tmp_path / "a" / "ok.png")
    bad = tmp_path / "a" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    ds = build_dataset(f"imagefolder:{tmp_path}", "test")
    with pytest.raises(DatasetError, match=str(bad)):
        ds[ds.paths.index(str(bad))]
    truncated = tmp_path / "a" / "trunc.png"
    truncated.write_bytes((tmp_path / "a" / "ok.png").read_bytes()[:40])
    ds = build_dataset(f"imagefolder:{tmp_path}", "test")
    with pytest.raises(DatasetError, match=str(truncated)):
        ds[ds.paths.index(str(truncated))]
    assert ds[ds.paths.index(str(tmp_path / "a" / "ok.png"))][0].mode == "RGB"


def test_missing_image_error_names_the_path(pets_root: Path):
    ds = build_dataset(f"coop:oxford_pets:{pets_root}", "train")
    Path(ds.paths[0]).unlink()
    with pytest.raises(DatasetError, match=f"{ds.paths[0]}: image file not found"):
        ds[0]


def test_fingerprint_is_sha256_of_the_listed_fields_and_subset_changes_it(pets_root: Path):
    import hashlib

    ds = build_dataset(f"coop:oxford_pets:{pets_root}", "train")
    payload = json.dumps(["coop", "oxford_pets", "train", ds.paths, ds.labels, ds.classnames], separators=(",", ":"))
    assert ds.fingerprint() == hashlib.sha256(payload.encode()).hexdigest()
    assert build_dataset(f"coop:oxford_pets:{pets_root}", "train").fingerprint() == ds.fingerprint()
    sub = ds.subset([4, 1])
    assert sub.fingerprint() != ds.fingerprint()
    assert sub.paths == [ds.paths[4], ds.paths[1]] and sub.labels == [ds.labels[4], ds.labels[1]]
    assert first_red(sub[0][0]) == first_red(ds[4][0]) and sub.classnames == ds.classnames
    subsub = sub.subset([1])
    assert subsub.paths == [ds.paths[1]] and first_red(subsub[0][0]) == first_red(ds[1][0])
    with pytest.raises(DatasetError, match="out of range"):
        ds.subset([len(ds)])


def test_dataset_subset_of_torchvision_reads_source_items():
    ds = build_dataset("torchvision:fakedata:?size=6", "test")
    sub = ds.subset([5, 0])
    assert sub[0][0].tobytes() == ds[5][0].tobytes() and sub.labels == [ds.labels[5], ds.labels[0]]


def test_datasets_pickle_for_dataloader_workers(pets_root: Path):
    for ds in (build_dataset(f"coop:oxford_pets:{pets_root}", "train").subset([2]), build_dataset("torchvision:fakedata:?size=3", "train")):
        copy = pickle.loads(pickle.dumps(ds))
        assert copy.paths == ds.paths and copy[0][0].tobytes() == ds[0][0].tobytes()


def test_label_out_of_range_is_rejected():
    with pytest.raises(DatasetError, match=r"label 3, expected 0..1"):
        ImageDataset(kind="csv", name="x", split="train", classnames=["a", "b"], templates=["{}"], paths=["p"], labels=[3])


def test_coop_imagenet_accepts_plain_train_val_folders(tmp_path: Path):
    wnid = imagenet_meta()["wnids"][42]
    write_png(tmp_path / "train" / wnid / "a.png")
    write_png(tmp_path / "val" / wnid / "b.png")
    assert build_dataset(f"coop:imagenet:{tmp_path}", "train").labels == [42]
    assert build_dataset(f"coop:imagenet:{tmp_path}", "test").paths == [str(tmp_path / "val" / wnid / "b.png")]


def test_torchvision_eurosat_uses_coop_class_names(tmp_path: Path):
    """EuroSAT is an ImageFolder under ROOT/eurosat/2750 in torchvision; build a tiny one offline."""
    from clipadapt.data._torchvision import EUROSAT_CLASSNAMES

    for k, folder in enumerate(sorted(EUROSAT_CLASSNAMES)):
        write_png(tmp_path / "eurosat" / "2750" / folder / f"{k}.png", k)
    ds = build_dataset(f"torchvision:eurosat:{tmp_path}", "all")
    assert ds.classnames == [EUROSAT_CLASSNAMES[f] for f in sorted(EUROSAT_CLASSNAMES)]
    assert ds.labels == list(range(10)) and first_red(ds[3][0]) == 3
    assert ds.templates == ["a centered satellite photo of {}."]


def test_templates_without_placeholder_are_rejected():
    with pytest.raises(DatasetError, match="templates must be"):
        ImageDataset(kind="csv", name="x", split="train", classnames=["a"], templates=["a photo"], paths=["p"], labels=[0])
