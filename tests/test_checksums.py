"""Feature and retrieval directories clipadapt writes carry checksums.json (issue 12, item 9): readers check the
sizes always and the sha256s with --verify / `clipadapt verify DIR`, so a flipped byte is caught — including in a
hard-linked sharded --out copy."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from tests._imagedata import make_imagefolder
from tests.conftest import make_clustered_features

from clipadapt.cli import main
from clipadapt.errors import FeatureDirError
from clipadapt.features import FeatureSet, FeatureSplit, load_feature_dir, save_feature_dir
from clipadapt.features.checksums import CHECKSUMS_FILE, check_checksums, verifying

MODEL = "clipadapt-test-tiny-vit"


@pytest.fixture
def featdir(tmp_path):
    protos, image, labels = make_clustered_features(num_classes=3, per_class=5, dim=8)
    fs = FeatureSet(classnames=["a", "b", "c"], text=protos, splits={"test": FeatureSplit(image, labels)},
                    meta={"model": "synthetic"})
    return save_feature_dir(fs, tmp_path / "feats")


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # same size: only a hash check can see it
    path.write_bytes(bytes(data))


def test_writer_records_size_and_sha256_of_every_file(featdir):
    record = json.loads((featdir / CHECKSUMS_FILE).read_text())
    files = sorted(p.name for p in featdir.iterdir() if p.name != CHECKSUMS_FILE)
    assert sorted(record["files"]) == files == ["meta.json", "test.safetensors", "text.safetensors"]
    for name, r in record["files"].items():
        data = (featdir / name).read_bytes()
        assert r == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_flipped_byte_is_caught_by_verify_not_by_the_fast_path(featdir, capsys):
    _flip_last_byte(featdir / "test.safetensors")
    load_feature_dir(featdir)  # sizes only: unchanged (the happy path stays one stat per file)
    with verifying(), pytest.raises(FeatureDirError, match=r"test.safetensors: sha256 differs"):
        load_feature_dir(featdir)
    assert main(["verify", str(featdir)]) == 2
    out = capsys.readouterr()
    assert "FAILED" in out.out and "test.safetensors" in out.out
    assert main(["eval", "--features", str(featdir), "--verify"]) == 2
    assert "sha256 differs" in capsys.readouterr().err
    assert main(["eval", "--features", str(featdir)]) == 0  # without --verify the sizes agree


def test_a_truncated_file_is_caught_on_every_read(featdir, capsys):
    path = featdir / "text.safetensors"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(FeatureDirError, match=r"text.safetensors has \d+ bytes, checksums.json records"):
        load_feature_dir(featdir)
    (featdir / "test.safetensors").unlink()
    with pytest.raises(FeatureDirError, match="test.safetensors is missing"):
        check_checksums(featdir)


def test_verify_passes_on_an_intact_directory_and_needs_a_manifest(featdir, tmp_path, capsys):
    assert main(["verify", str(featdir)]) == 0
    assert "OK: 3 files" in capsys.readouterr().out
    (featdir / CHECKSUMS_FILE).unlink()
    load_feature_dir(featdir)  # a directory without checksums.json is read as before
    assert main(["verify", str(featdir)]) == 2
    assert "no checksums.json" in capsys.readouterr().out


def test_manifest_entries_cannot_point_outside(featdir):
    record = json.loads((featdir / CHECKSUMS_FILE).read_text())
    record["files"]["../outside"] = {"bytes": 1, "sha256": "0" * 64}
    (featdir / CHECKSUMS_FILE).write_text(json.dumps(record))
    with pytest.raises(FeatureDirError, match="relative path inside"):
        load_feature_dir(featdir)


def test_hard_linked_sharded_out_with_corrupted_bytes_is_detected(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "folder", splits=("test",), per_class=3)
    out = tmp_path / "out"
    assert main(["extract", "--model", MODEL, "--dataset", f"imagefolder:{root}", "--split", "test", "--device",
                 "cpu", "--cache-dir", str(tmp_path / "c"), "--shard-size", "4", "--sharded", "--out", str(out)]) == 0
    record = json.loads((out / CHECKSUMS_FILE).read_text())["files"]
    assert "test.shards.json" in record and "test.skipped.json" in record
    shard = next(out.glob("test.shards/*.safetensors"))
    assert shard.stat().st_nlink > 1  # shared with the cache entry
    assert main(["verify", str(out)]) == 0
    _flip_last_byte(shard)
    assert main(["verify", str(out)]) == 2
    assert f"test.shards/{shard.name}: sha256 differs" in capsys.readouterr().out
    assert main(["search", "--queries", f"{out}:test", "--gallery", f"{out}:test", "--k", "2", "--verify"]) == 2


def test_retrieval_directories_carry_checksums(tmp_path, capsys):
    from clipadapt.features.retrieval_dir import RetrievalSet, load_retrieval_split, save_retrieval_split

    g = torch.Generator().manual_seed(0)
    rs = RetrievalSet(torch.randn(4, 8, generator=g), torch.randn(8, 8, generator=g),
                      torch.arange(4).repeat_interleave(2), meta={"model": "m"})
    d = save_retrieval_split(tmp_path / "ret", "test", rs)
    save_retrieval_split(d, "unlabeled", RetrievalSet(rs.image, rs.text, None, meta={}))
    assert main(["verify", str(d)]) == 0
    path = d / "test.safetensors"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(FeatureDirError, match="test.safetensors has"):
        load_retrieval_split(d, "test")
