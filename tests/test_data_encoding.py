"""Every text file the data readers open must be UTF-8; anything else is a DatasetError naming the file, the byte
offset of the first bad byte and "expected UTF-8" (was a bare UnicodeDecodeError)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from clipadapt.data import build_dataset
from clipadapt.errors import DatasetError, FeatureDirError

LATIN1_NAME = "café crème".encode("latin-1")  # b"caf\xe9 cr\xe8me": 0xE9 is not valid UTF-8 here


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3)).save(path)


def _csv_classnames(tmp: Path):
    (tmp / "test.csv").write_text("path,label\na.png,0\n")
    bad = tmp / "classnames.txt"
    bad.write_bytes(b"dog\n" + LATIN1_NAME + b"\n")
    return bad, lambda: build_dataset(f"csv:{tmp}", "test")


def _csv_rows(tmp: Path):
    bad = tmp / "test.csv"
    bad.write_bytes(b"path,label,classname\na.png,0,dog\nb.png,1," + LATIN1_NAME + b"\n")
    return bad, lambda: build_dataset(f"csv:{bad}", "test")


def _split_json(tmp: Path):
    root = tmp / "oxford_pets"
    (root / "images").mkdir(parents=True)
    bad = root / "split_zhou_OxfordPets.json"
    bad.write_bytes(b'{"train": [["a.png", 0, "' + LATIN1_NAME + b'"]], "val": [], "test": []}')
    return bad, lambda: build_dataset(f"coop:oxford_pets:{root}", "train")


def _fgvc_variants(tmp: Path):
    root = tmp / "fgvc_aircraft"
    root.mkdir()
    bad = root / "variants.txt"
    bad.write_bytes(b"707-320\n" + LATIN1_NAME + b"\n")
    (root / "images_variant_test.txt").write_text("1000001 707-320\n")
    return bad, lambda: build_dataset(f"coop:fgvc_aircraft:{root}", "test")


def _fgvc_listing(tmp: Path):
    root = tmp / "fgvc_aircraft"
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("707-320\n")
    bad = root / "images_variant_test.txt"
    bad.write_bytes(b"1000001 707-320\n1000002 " + LATIN1_NAME + b"\n")
    return bad, lambda: build_dataset(f"coop:fgvc_aircraft:{root}", "test")


def _caption_json(tmp: Path):
    from clipadapt.features.caption_data import read_karpathy_json

    bad = tmp / "captions.json"
    bad.write_bytes(b'{"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "' + LATIN1_NAME
                    + b'"}]}]}')
    return bad, lambda: read_karpathy_json(bad, ["test"])


def _judgments_csv(tmp: Path):
    from clipadapt.cli.captions import read_judgments

    bad = tmp / "judgments.csv"
    bad.write_bytes(b"image,caption,human\n0,0,3\n1,1," + LATIN1_NAME + b"\n")
    return bad, lambda: read_judgments(bad)


READERS = {
    "csv classnames.txt": (_csv_classnames, DatasetError),
    "csv rows": (_csv_rows, DatasetError),
    "coop split JSON": (_split_json, DatasetError),
    "fgvc variants.txt": (_fgvc_variants, DatasetError),
    "fgvc images_variant list": (_fgvc_listing, DatasetError),
    "karpathy caption JSON": (_caption_json, DatasetError),
    "captions judgments CSV": (_judgments_csv, DatasetError),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_non_utf8_text_file_names_file_offset_and_expected_encoding(tmp_path: Path, reader: str):
    make, error = READERS[reader]
    bad, read = make(tmp_path)
    data = bad.read_bytes()
    offset = data.index(b"\xe9")  # the first byte no UTF-8 decoder accepts, found by hand
    line = data[:offset].count(b"\n") + 1
    with pytest.raises(error) as info:
        read()
    message = str(info.value)
    assert str(bad) in message and "expected UTF-8" in message
    assert f"byte offset {offset} (line {line})" in message and "0xe9" in message


def test_import_features_classname_file_must_be_utf8(tmp_path: Path):
    from clipadapt.features.importing import read_classnames

    bad = tmp_path / "names.txt"
    bad.write_bytes(b"dog\n" + LATIN1_NAME + b"\n")
    with pytest.raises(FeatureDirError, match=r"names\.txt: class-name file is not UTF-8 .*byte offset 7 \(line 2\)"):
        read_classnames(bad)


def test_utf8_byte_order_mark_is_not_part_of_the_first_class_name(tmp_path: Path):
    """Editors on Windows write a BOM; it must not become a character of the first class name."""
    (tmp_path / "test.csv").write_text("path,label\na.png,0\nb.png,1\n")
    (tmp_path / "classnames.txt").write_bytes(b"\xef\xbb\xbf" + "café\nthé\n".encode())
    for name in ("a.png", "b.png"):
        _png(tmp_path / name)
    assert build_dataset(f"csv:{tmp_path}", "test").classnames == ["café", "thé"]


def test_utf8_split_json_with_accents_still_reads(tmp_path: Path):
    root = tmp_path / "oxford_pets"
    _png(root / "images" / "a.png")
    split = {"train": [["a.png", 0, "crème brûlée"]], "val": [], "test": []}
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(split, ensure_ascii=False), encoding="utf-8")
    assert build_dataset(f"coop:oxford_pets:{root}", "train").classnames == ["crème brûlée"]


def test_offset_counts_the_byte_order_mark_as_file_bytes(tmp_path: Path):
    """The offset is a position in the file as stored (an editor's "go to byte"), BOM included."""
    from clipadapt.fileio import read_text

    bad = tmp_path / "x.txt"
    bad.write_bytes(b"\xef\xbb\xbfab\n\xff")
    with pytest.raises(DatasetError, match=r"x\.txt: list is not UTF-8 text: byte 0xff at byte offset 6 \(line 2\)"):
        read_text(bad, what="list", error=DatasetError)
