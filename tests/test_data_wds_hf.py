"""`wds:PATTERN` (WebDataset tar shards, written here with `webdataset.TarWriter`) and `hf:PATH[:SPLIT]` (a Hugging
Face dataset made with `Dataset.from_dict` + `save_to_disk`): the same images as a CSV dataset give the same
embeddings row for row — with DataLoader workers and split across 2 ranks as `features.distributed` splits them —
the cache key follows the data's content, and bad input is a named DatasetError."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt.data import build_dataset
from clipadapt.encoders import load_encoder
from clipadapt.errors import DatasetError
from clipadapt.features.cache import dataset_fingerprint
from clipadapt.features.distributed import assign_shards
from clipadapt.features.extract import encode_shards, extract_split, read_skipped
from clipadapt.features.pipeline import get_feature_set
from clipadapt.features.shards import plan_shards

MODEL = "clipadapt-test-tiny-vit"
N, CLASSES = 11, ("red", "green", "blue")
SHARD_ROWS = (4, 4, 3)  # three tar shards of 4, 4 and 3 samples
PLAN = 3  # extraction shards of 3 rows: they straddle the tar shards


def _png(i: int, shift: int = 0) -> bytes:
    rng = np.random.default_rng(i + 100 * shift)
    pixels = rng.integers(0, 120, (30 + i, 34, 3))
    pixels[..., i % 3] += 120
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _write_shards(folder: Path, images: list[bytes], labels: list, *, image_ext="png", label_ext="cls") -> None:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    i = 0
    for s, rows in enumerate(SHARD_ROWS):
        with wds.TarWriter(str(folder / f"shard-{s:03d}.tar")) as sink:
            for _ in range(rows):
                sink.write({"__key__": f"sample{i:05d}", image_ext: images[i], label_ext: labels[i],
                            "txt": "\n".join(_captions(i))})
                i += 1


def _captions(i: int) -> list[str]:
    return [f"a picture number {i}", f"something {CLASSES[i % 3]}"][: 1 + i % 2]  # one or two captions


def _save_hf(folder: Path, images: list[bytes], labels: list[int], names=CLASSES) -> None:
    import datasets

    features = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=list(names)),
                                  "note": datasets.Value("string"), "sentences": [datasets.Value("string")]})
    test = datasets.Dataset.from_dict(
        {"img": [{"bytes": b, "path": None} for b in images], "fine_label": labels, "note": ["x"] * len(images),
         "sentences": [_captions(i) for i in range(len(images))]},
        features=features)
    datasets.DatasetDict({"test": test, "train": test.select(range(3))}).save_to_disk(str(folder))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The same 11 images as PNG files + a CSV, as 3 WebDataset shards, and as an HF DatasetDict on disk."""
    root = tmp_path_factory.mktemp("data")
    images, labels = [_png(i) for i in range(N)], [i % 3 for i in range(N)]
    (root / "files").mkdir()
    rows = ["path,label"]
    for i, blob in enumerate(images):
        (root / "files" / f"{i:02d}.png").write_bytes(blob)
        rows.append(f"{i:02d}.png,{labels[i]}")
    (root / "files" / "test.csv").write_text("\n".join(rows) + "\n")
    (root / "files" / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    _write_shards(root / "wds" / "test", images, labels)
    (root / "wds" / "classnames.txt").write_text("\n".join(CLASSES) + "\n")  # one folder up, as CLIP_benchmark's
    _save_hf(root / "hf", images, labels)
    return root


def _specs(root: Path) -> dict[str, str]:
    return {"csv": f"csv:{root / 'files'}", "wds": f"wds:{root / 'wds'}/{{split}}/shard-{{000..002}}.tar",
            "hf": f"hf:{root / 'hf'}"}


@pytest.fixture(scope="module")
def enc():
    return load_encoder(MODEL, device="cpu")


@pytest.fixture(scope="module")
def reference(enc, data, tmp_path_factory):
    """The CSV dataset's embeddings (one process, no workers)."""
    ds = build_dataset(_specs(data)["csv"], "test")
    return ds, extract_split(enc, ds, shard_dir=tmp_path_factory.mktemp("ref"), batch_size=4, shard_size=PLAN,
                             progress=False)


# ------------------------------------------------------------------------------------------------- the datasets
@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_source_lists_the_csv_items_in_order_with_their_pixels(data, reference, kind):
    ds, csv = build_dataset(_specs(data)[kind], "test"), reference[0]
    assert (ds.kind, len(ds), ds.labels, ds.classnames) == (kind, N, csv.labels, list(CLASSES))
    for i in range(N):
        assert np.array_equal(np.asarray(ds[i][0]), np.asarray(csv[i][0])), i
    if kind == "wds":
        assert ds.paths[5] == f"{data / 'wds' / 'test' / 'shard-001.tar'}#sample00005.png"
        assert ds.source_files() == [str(data / "wds" / "test" / f"shard-{s:03d}.tar")
                                     for s, rows in enumerate(SHARD_ROWS) for _ in range(rows)]
    else:
        assert ds.paths[5] == f"{data / 'hf'}/test/5"
        assert set(ds.source_files()) == {str(data / "hf" / "test" / "data-00000-of-00001.arrow")}


@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_extraction_with_workers_equals_the_csv_source(enc, data, reference, kind, tmp_path):
    ds = build_dataset(_specs(data)[kind], "test")
    got = extract_split(enc, ds, shard_dir=tmp_path, batch_size=4, shard_size=PLAN, num_workers=2, progress=False)
    torch.testing.assert_close(got.image, reference[1].image, rtol=0, atol=1e-6)
    assert torch.equal(got.label, reference[1].label) and got.paths == ds.paths


@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_two_ranks_each_encode_their_block_and_together_every_row_once(enc, data, reference, kind, tmp_path):
    """What `extract_distributed` does per rank: each rank builds the dataset itself, encodes its block of the
    shard plan (with DataLoader workers); rank 0's assembly equals the single-process CSV features."""
    plan = plan_shards(N, PLAN)
    seen = []
    for rank in (0, 1):
        ds = build_dataset(_specs(data)[kind], "test")  # every rank indexes the source on its own
        block = assign_shards(plan, rank, 2)
        seen += [r for a, b in block for r in range(a, b)]
        encode_shards(enc, ds, block, tmp_path, batch_size=2, num_workers=2 if rank else 0, progress=False)
    assert seen == list(range(N))  # no duplicate, no gap
    split = extract_split(enc, ds, shard_dir=tmp_path, shard_size=PLAN, progress=False)  # every shard done: loaded
    assert not read_skipped(tmp_path)
    torch.testing.assert_close(split.image, reference[1].image, rtol=0, atol=1e-6)
    assert torch.equal(split.label, reference[1].label)


def test_get_feature_set_on_wds_and_hf_specs_matches_csv_and_is_cached(data, reference, tmp_path):
    specs = _specs(data)
    sets = {k: get_feature_set(MODEL, specs[k], ["test"], cache_dir=tmp_path, device="cpu", progress=False)
            for k in ("csv", "wds", "hf")}
    for kind in ("wds", "hf"):
        torch.testing.assert_close(sets[kind].split("test").image, sets["csv"].split("test").image, rtol=0, atol=1e-6)
        assert sets[kind].classnames == sets["csv"].classnames
        torch.testing.assert_close(sets[kind].text, sets["csv"].text)
        again = get_feature_set(MODEL, specs[kind], ["test"], cache_dir=tmp_path, device="cpu", progress=False)
        assert not again.meta["encoder_loaded"]  # a hit, not re-encoded
    assert len({s.meta["cache"]["test"] for s in sets.values()}) == 3  # three sources, three entries


# ------------------------------------------------------------------------------------------------- cache keys
def _keys(spec: str) -> dict[str, str]:
    ds = build_dataset(spec, "test")
    return {check: json_key(dataset_fingerprint(ds, file_check=check)) for check in ("stat", "sha256")}


def json_key(fp: dict) -> str:
    import json

    return json.dumps(fp, sort_keys=True)


def test_wds_cache_key_follows_shard_content(data, tmp_path):
    images, labels = [_png(i) for i in range(N)], [i % 3 for i in range(N)]
    _write_shards(tmp_path / "test", images, labels)
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    spec = f"wds:{tmp_path}/test/shard-{{000..002}}.tar"
    before = _keys(spec)
    shard = tmp_path / "test" / "shard-001.tar"
    st = shard.stat()
    shard.write_bytes(shard.read_bytes())  # the same bytes rewritten later: sha256 sees no change, stat does
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = _keys(spec)
    assert touched["sha256"] == before["sha256"] and touched["stat"] != before["stat"]
    images[5] = _png(5, shift=1)  # one image in the middle shard changes, keys and labels do not
    _write_shards(tmp_path / "test", images, labels)
    after = _keys(spec)
    assert after["sha256"] != before["sha256"]
    assert after["stat"] != before["stat"]  # the shard's size differs (a same-size edit needs file_check='sha256')
    assert build_dataset(spec, "test").fingerprint() == build_dataset(spec, "test").fingerprint()


def test_hf_cache_key_follows_arrow_content(tmp_path):
    images, labels = [_png(i) for i in range(N)], [i % 3 for i in range(N)]
    _save_hf(tmp_path / "a", images, labels)
    before = _keys(f"hf:{tmp_path / 'a'}")
    _save_hf(tmp_path / "a", images, labels)
    assert _keys(f"hf:{tmp_path / 'a'}")["sha256"] == before["sha256"]  # same content, same hash
    images[2] = _png(2, shift=1)
    _save_hf(tmp_path / "a", images, labels)
    after = _keys(f"hf:{tmp_path / 'a'}")
    assert after["sha256"] != before["sha256"] and after["stat"] != before["stat"]


def test_rows_sharing_a_file_are_digested_once_but_each_row_counts(tmp_path, monkeypatch):
    from clipadapt.features import cache

    calls = []
    original = cache._file_record
    monkeypatch.setattr(cache, "_file_record", lambda p, c: calls.append(p) or original(p, c))
    f = tmp_path / "shard.tar"
    f.write_bytes(b"x" * 10)
    three = cache.files_digest([str(f)] * 3, "sha256")
    assert len(calls) == 1
    assert three["digest"] != cache.files_digest([str(f)] * 2, "sha256")["digest"]


# ------------------------------------------------------------------------------------------------- options, names
def test_wds_options_pick_members_and_string_labels_name_classes(tmp_path):
    images = [_png(i) for i in range(N)]
    _write_shards(tmp_path / "s", images, [CLASSES[i % 3] for i in range(N)], image_ext="jpeg", label_ext="name.txt")
    ds = build_dataset(f"wds:{tmp_path}/s/shard-{{000..002}}.tar?image=webp;jpeg&label=name.txt&name=mine", "val")
    assert ds.classnames == sorted(CLASSES) and ds.name == "mine" and ds.split == "val"
    assert [ds.classnames[v] for v in ds.labels] == [CLASSES[i % 3] for i in range(N)]
    (tmp_path / "order.txt").write_text("blue\nred\ngreen\n")
    ds = build_dataset(f"wds:{tmp_path}/s/shard-{{000..002}}.tar?image=jpeg&label=name.txt&classnames=../order.txt",
                       "test")
    assert ds.classnames == ["blue", "red", "green"] and ds.labels[:3] == [1, 2, 0]


def test_hf_columns_classlabel_names_and_pinned_split(tmp_path):
    import datasets

    images = [_png(i) for i in range(4)]
    features = datasets.Features({"picture": datasets.Image(), "y": datasets.ClassLabel(names=["sea_lion", "cat"]),
                                  "kind": datasets.Value("string")})
    datasets.Dataset.from_dict({"picture": [{"bytes": b, "path": None} for b in images], "y": [1, 0, 1, 1],
                                "kind": ["a", "b", "a", "c"]}, features=features).save_to_disk(str(tmp_path / "one"))
    ds = build_dataset(f"hf:{tmp_path / 'one'}", "train")  # a single Dataset serves any split
    assert ds.classnames == ["sea lion", "cat"] and ds.labels == [1, 0, 1, 1] and ds.name == "one"
    by_kind = build_dataset(f"hf:{tmp_path / 'one'}?label=kind", "test")
    assert by_kind.classnames == ["a", "b", "c"] and by_kind.labels == [0, 1, 0, 2]
    pinned = build_dataset(f"hf:{tmp_path / 'one'}:train", "test")
    assert pinned.paths[0] == f"{tmp_path / 'one'}/train/0" and pinned.split == "test"


def test_hf_dataset_dict_split_and_pin(data):
    assert len(build_dataset(_specs(data)["hf"], "train")) == 3
    assert len(build_dataset(_specs(data)["hf"] + ":train", "test")) == 3


# ------------------------------------------------------------------------------------------------- errors
def test_wds_errors_are_named(data, tmp_path):
    spec = _specs(data)["wds"]
    with pytest.raises(DatasetError, match=r"sample00000' has no image key \(one of jpg\).*'png'.*\?image="):
        build_dataset(spec + "?image=jpg", "test")
    with pytest.raises(DatasetError, match=r"has no label key 'label'.*\?label="):
        build_dataset(spec + "?label=label", "test")
    with pytest.raises(DatasetError, match="bad shard pattern"):
        build_dataset(f"wds:{data}/wds/test/shard-{{000..002.tar", "test")
    with pytest.raises(DatasetError, match=r"1 of 4 shard file\(s\) not found.*shard-003.tar"):
        build_dataset(f"wds:{data}/wds/test/shard-{{000..003}}.tar", "test")
    with pytest.raises(DatasetError, match="shard file"):
        build_dataset(spec, "train")  # {split} -> train: no such shards
    with pytest.raises(DatasetError, match="URLs are not supported"):
        build_dataset("wds:https://example.com/shard-{000..009}.tar", "test")
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    with pytest.raises(DatasetError, match=r"1 shard\(s\) of split 'test' hold no samples"):
        build_dataset(f"wds:{tmp_path}/empty.tar", "test")
    (tmp_path / "z.tar").write_bytes(b"\x1f\x8b" + b"\0" * 100)
    with pytest.raises(DatasetError, match="gzip-compressed shard"):
        build_dataset(f"wds:{tmp_path}/z.tar", "test")
    with pytest.raises(DatasetError, match="unknown option"):
        build_dataset(spec + "?split_file=x", "test")
    _write_shards(tmp_path / "n", [_png(i) for i in range(N)], [i % 3 for i in range(N)])
    with pytest.raises(DatasetError, match="integer labels need class names.*classnames"):
        build_dataset(f"wds:{tmp_path}/n/shard-{{000..002}}.tar", "test")
    (tmp_path / "n" / "classnames.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match=r"label 2 out of range.*lists 2 classes"):
        build_dataset(f"wds:{tmp_path}/n/shard-{{000..002}}.tar", "test")


def test_wds_unreadable_member_is_a_row_error_extraction_can_skip(enc, tmp_path):
    images = [_png(i) for i in range(N)]
    images[4] = b"not a png"
    _write_shards(tmp_path, images, [i % 3 for i in range(N)])
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    ds = build_dataset(f"wds:{tmp_path}/shard-{{000..002}}.tar", "test")
    with pytest.raises(DatasetError, match=r"shard-001.tar#sample00004.png: cannot read image"):
        ds[4]
    split = extract_split(enc, ds, shard_dir=tmp_path / "x", batch_size=4, on_error="skip", progress=False)
    assert split.n == N - 1 and ds.paths[4] not in split.paths


def test_hf_errors_are_named(data, tmp_path):
    spec = _specs(data)["hf"]
    with pytest.raises(DatasetError, match=r"no column 'pixels' \(\?image=\); columns: \['img', 'fine_label', 'note"):
        build_dataset(spec + "?image=pixels", "test")
    with pytest.raises(DatasetError, match=r"no column 'cls' \(\?label=\)"):
        build_dataset(spec + "?label=cls", "test")
    with pytest.raises(DatasetError, match=r"has no split 'val'; it has \['test', 'train'\]"):
        build_dataset(spec, "val")
    with pytest.raises(DatasetError, match="not found"):
        build_dataset(f"hf:{tmp_path}/missing", "test")
    with pytest.raises(DatasetError, match="holds 'str', expected an image|cannot read image|expected an image"):
        build_dataset(spec + "?image=note", "test")[0]


@pytest.mark.parametrize("module, spec, extra", [("webdataset", "wds:/x/s-{0..1}.tar", "wds"),
                                                 ("datasets", "hf:/x/y", "hf-datasets")])
def test_missing_package_names_the_pip_extra(monkeypatch, module, spec, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(DatasetError, match=rf"needs the '{module}' package.*pip install 'clipadapt\[{extra}\]'"):
        build_dataset(spec, "test")



# ------------------------------------------------------------------------------------------------- captions
@pytest.mark.parametrize("kind", ["wds", "hf"])
def test_caption_sets_give_the_karpathy_json_retrieval_embeddings(enc, data, kind, tmp_path):
    """The same images + captions from a Karpathy JSON over the PNG files and from a wds:/hf: spec: identical
    image and caption embeddings and caption -> image map."""
    import json

    from clipadapt.data import build_caption_dataset
    from clipadapt.features.caption_data import (
        read_karpathy_json,
        retrieval_set_from_dataset,
        retrieval_set_from_entries,
    )

    karpathy = {"images": [{"filename": f"{i:02d}.png", "split": "test",
                            "sentences": [{"raw": c} for c in _captions(i)]} for i in range(N)]}
    (tmp_path / "k.json").write_text(json.dumps(karpathy))
    ref = retrieval_set_from_entries(enc, read_karpathy_json(tmp_path / "k.json", ["test"]), data / "files", 4)
    spec = _specs(data)[kind] + ("?caption=sentences" if kind == "hf" else "")
    ds = build_caption_dataset(spec, "test")
    assert ds.captions == [_captions(i) for i in range(N)] and ds[3][1] is None
    got = retrieval_set_from_dataset(enc, ds, 4, num_workers=1)
    torch.testing.assert_close(got.image, ref.image, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.text, ref.text, rtol=0, atol=1e-6)
    assert torch.equal(got.text_to_image, ref.text_to_image)


def test_retrieval_cli_reads_a_wds_caption_set(data, tmp_path):
    import json

    from clipadapt.cli import main

    spec = _specs(data)["wds"]
    assert main(["retrieval", "--dataset", spec, "--model", MODEL, "--device", "cpu", "--dn-source", "test",
                 "--batch-size", "4", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["n_images"] == N and results["n_captions"] == sum(len(_captions(i)) for i in range(N))
    assert results["provenance"]["data"] == spec
    assert results["provenance"]["data_fingerprint"].startswith("dataset-sha256:")


def test_caption_errors_are_named(data):
    from clipadapt.data import build_caption_dataset

    with pytest.raises(DatasetError, match=r"has no caption key 'json'.*\?caption=EXT"):
        build_caption_dataset(_specs(data)["wds"] + "?caption=json", "test")
    assert build_caption_dataset(_specs(data)["hf"], "test").captions[1] == _captions(1)  # 'sentences' found
    with pytest.raises(DatasetError, match=r"no column 'nope' \(\?caption=\); columns: \['img', 'fine_label'"):
        build_caption_dataset(_specs(data)["hf"] + "?caption=nope", "test")
    with pytest.raises(DatasetError, match=r"column 'fine_label' holds int, expected a string or a list"):
        build_caption_dataset(_specs(data)["hf"] + "?caption=fine_label", "test")
    with pytest.raises(DatasetError, match="captions come from wds: or hf: specs"):
        build_caption_dataset(_specs(data)["csv"], "test")


# ------------------------------------------------------------------------------------------------- tar headers
@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_header_reader_lists_what_tarfile_lists(tmp_path, fmt):
    """The offset index's own tar header reader against Python's tarfile: the same regular members, data
    offsets and sizes, for long names (pax records, GNU long-name members, ustar prefixes), directories,
    an empty member and a pax-only unicode name."""
    from clipadapt.data._wds import tar_members

    path = tmp_path / "x.tar"
    names = ["a.png", "d" * 60 + "/" + "n" * 80 + ".txt", "sub/", "sub/empty.cls", "big.bin"]
    if fmt != tarfile.USTAR_FORMAT:
        names += ["ü-" + "long" * 40 + ".jpg"]  # longer than any ustar field: pax path / GNU ././@LongLink
    with tarfile.open(path, "w", format=fmt) as tar:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            blob = b"" if "empty" in name else bytes(range(256)) * (40 if name == "big.bin" else i + 1)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with tarfile.open(path) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar.getmembers() if m.isreg()]
    with open(path, "rb") as f:
        assert list(tar_members(f, path)) == expected
    assert len(expected) == len(names) - 1
    path.write_bytes(path.read_bytes()[:700] + b"garbage" * 100)  # the second header is now corrupt
    with open(path, "rb") as f, pytest.raises(DatasetError, match="corrupt|checksum|truncated"):
        list(tar_members(f, path))


def test_datasets_help_and_listing_name_both_sources_and_their_extras(capsys):
    from clipadapt.cli import main

    with pytest.raises(SystemExit):
        main(["datasets", "--help"])
    shown = capsys.readouterr().out
    assert "wds:PATTERN" in shown and "pip install 'clipadapt[wds]'" in shown
    assert "hf:NAME_OR_PATH[:SPLIT]" in shown and "pip install 'clipadapt[hf-datasets]'" in shown
    assert main(["datasets", "--kind", "coop"]) == 0
    assert "wds:PATTERN" in capsys.readouterr().out


def test_hf_dataset_name_that_cannot_load_offline_says_where_the_cache_is(monkeypatch):
    import datasets

    def offline(name, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetError, match=r"hf:someone/cars: cannot load it .*OfflineModeIsEnabled.*HF_HOME.*"
                                           r"HF_HUB_OFFLINE=1.*save_to_disk"):
        build_dataset("hf:someone/cars:test", "test")
