"""Dataset files cannot point clipadapt outside their root (issue 12, item 8), and an empty class folder is
reported (item 10)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipadapt.data import build_dataset, path_under
from clipadapt.errors import DatasetError


def _png(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def eurosat(tmp_path):
    root = tmp_path / "data" / "eurosat"
    _png(root / "2750" / "a.png")
    _png(tmp_path / "secret.png", 7)  # a file outside the dataset root
    return root


@pytest.mark.parametrize("rel", ["../../secret.png", "sub/../../../secret.png", "/etc/passwd", "~/x.png",
                                 "C:\\x.png"])
def test_coop_split_entry_escaping_root_is_refused_naming_the_entry(eurosat, rel):
    split = {"train": [["a.png", 0, "a"]], "val": [], "test": [["a.png", 0, "a"], [rel, 0, "a"]]}
    (eurosat / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    for requested in ("train", "test"):  # a bad entry anywhere in the file is refused, whichever split is read
        with pytest.raises(DatasetError, match=r"split_zhou_EuroSAT.json: 'test'\[1\]: image path .*(absolute|leaves)"):
            build_dataset(f"coop:eurosat:{eurosat}", requested)


def test_coop_paths_inside_root_still_work(eurosat):
    _png(eurosat / "2750" / "sub" / "b.png")
    split = {"train": [["a.png", 0, "a"], ["sub/../sub/b.png", 0, "a"], ["./sub/b.png", 0, "a"]], "val": [], "test": []}
    (eurosat / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    ds = build_dataset(f"coop:eurosat:{eurosat}", "train")
    assert len(ds) == 3 and ds[1][0].size == (8, 8)


def test_path_under_rules(tmp_path):
    assert path_under(tmp_path, "a/b.png", "x") == tmp_path / "a/b.png"
    assert path_under(tmp_path, "a/../b.png", "x") == tmp_path / "a/../b.png"
    for bad in ("..", "../b.png", "a/../../b.png", "/abs.png", "\\\\server\\share\\x.png"):
        with pytest.raises(DatasetError, match="where-it-came-from"):
            path_under(tmp_path, bad, "where-it-came-from")


def test_caption_json_entries_escaping_image_root_are_refused(tmp_path):
    from clipadapt.features.caption_data import read_karpathy_json, retrieval_set_from_entries

    cap = tmp_path / "captions.json"
    cap.write_text(json.dumps({"images": [
        {"split": "test", "filename": "ok.png", "sentences": [{"raw": "a"}]},
        {"split": "test", "filepath": "../..", "filename": "secret.png", "sentences": [{"raw": "b"}]},
    ]}))
    entries = read_karpathy_json(cap, ["test"])
    with pytest.raises(DatasetError, match=r"captions.json: images\[1\]: image path .* leaves"):
        retrieval_set_from_entries(object(), entries, tmp_path / "imgs")


def test_captions_csv_image_escaping_image_root_is_refused(tmp_path, capsys):
    from clipadapt.cli import main

    _png(tmp_path / "imgs" / "a.png")
    csv = tmp_path / "judgments.csv"
    csv.write_text("image,caption,human\na.png,a cat,3\n../secret.png,a dog,2\n")
    code = main(["captions", "--judgments", str(csv), "--image-root", str(tmp_path / "imgs"),
                 "--model", "clipadapt-test-tiny-vit", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "judgments.csv: image '../secret.png'" in err and "leaves" in err


# ------------------------------------------------------------------------------------------------ empty classes
def test_empty_class_folder_is_warned_by_name(tmp_path, caplog):
    root = tmp_path / "pets"
    _png(root / "cat" / "1.png")
    (root / "dog").mkdir()  # an empty class folder
    with caplog.at_level(logging.WARNING, logger="clipadapt"):
        ds = build_dataset(f"imagefolder:{root}", "test")
    assert ds.classnames == ["cat", "dog"] and len(ds) == 1
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(root / "dog") in warned[0] and "no image files" in warned[0]


def test_class_missing_from_one_split_is_warned(tmp_path, caplog):
    root = tmp_path / "pets"
    _png(root / "train" / "cat" / "1.png")
    _png(root / "train" / "dog" / "1.png")
    _png(root / "test" / "cat" / "1.png")
    with caplog.at_level(logging.WARNING, logger="clipadapt"):
        build_dataset(f"imagefolder:{root}", "train")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    with caplog.at_level(logging.WARNING, logger="clipadapt"):
        build_dataset(f"imagefolder:{root}", "test")
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and str(root / "test" / "dog") + " (no folder)" in warned[0]


def test_csv_class_without_rows_is_warned_by_name(tmp_path, caplog):
    _png(tmp_path / "a.png")
    (tmp_path / "classnames.txt").write_text("cat\ndog\nbird\n")
    (tmp_path / "test.csv").write_text("path,label\na.png,0\na.png,2\n")
    with caplog.at_level(logging.WARNING, logger="clipadapt"):
        ds = build_dataset(f"csv:{tmp_path}", "test")
    assert ds.classnames == ["cat", "dog", "bird"]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "1 (dog)" in warned[0] and "test.csv" in warned[0]
