"""The cache's one storage form and its faults: an entry written by cache version 1 (one assembled
`<split>.safetensors`, or shards) is migrated once into shards without the encoder; a read-only cache serves its
complete entries and names the path for writes; a full disk during extraction is a named error, publishes
nothing half-written and resumes afterwards."""

from __future__ import annotations

import errno
import json
import logging
import os

import pytest
import torch
from _imagedata import CountingEncoder, make_imagefolder, make_images

import clipadapt.features.cache as cache_module
import clipadapt.features.extract as extract_module
import clipadapt.fileio as fileio
from clipadapt.cli import main
from clipadapt.encoders import encoder_fingerprint, load_encoder
from clipadapt.errors import CacheError
from clipadapt.features import FeatureSplit
from clipadapt.features.cache import FeatureCache, cache_writes, dataset_fingerprint, image_key, text_key
from clipadapt.features.io import atomic_save_tensors, save_split
from clipadapt.features.pipeline import clear_encoder_memo, get_feature_set, get_sharded_feature_set
from clipadapt.features.shards import ShardedSplit, write_shard, write_shard_index
from clipadapt.fileio import atomic_write_json

MODEL = "clipadapt-test-tiny-vit"
N, SHARD = 10, 4


@pytest.fixture(autouse=True)
def fresh_encoder_memo():
    clear_encoder_memo()
    yield
    clear_encoder_memo()


@pytest.fixture(scope="module")
def enc():
    return load_encoder(MODEL, device="cpu")


def _loop(enc, ds, rows):
    """The literal computation: each image preprocessed and encoded alone."""
    return torch.cat([enc.encode_images(enc.preprocess(ds[i][0]).unsqueeze(0)) for i in rows])


# ----------------------------------------------------------------------------------------- version 1 -> 2
def _write_v1_entries(cache: FeatureCache, ds, form: str, image: torch.Tensor, skipped_row: int) -> None:
    """The image and text entries an older clipadapt (cache version 1) left for `ds`, written file by file as it
    wrote them: key.json, the split assembled in one file or as shards + index, paths, skipped rows, the text
    link, meta.json, and the manifest (last) with its "storage"; the text entry with the model's logit scale and
    bias in its manifest."""
    fp = encoder_fingerprint(MODEL, device="cpu")
    key = {**image_key(fp, dataset_fingerprint(ds), views=1, seed=0), "version": 1}
    entry = cache.image_entry(key)
    entry.path.mkdir(parents=True)
    atomic_write_json(entry.path / "key.json", key)
    kept = [r for r in range(N) if r != skipped_row]
    labels = torch.tensor([ds.labels[r] for r in kept])
    skipped = [{"row": skipped_row, "path": str(ds.paths[skipped_row]), "error": "cannot read image"}]
    if form == "assembled":
        save_split(entry.path, "test", FeatureSplit(image, labels, [str(ds.paths[r]) for r in kept]))
        files = ["test.safetensors", "test.paths.json"]
    else:
        shards = [write_shard(entry.path / "shards", 0, image[:3], labels[:3], stop=4, rows=kept[:3], skipped=skipped),
                  write_shard(entry.path / "shards", 4, image[3:], labels[3:], stop=N, rows=kept[3:])]
        write_shard_index(entry.path, "test", shards)
        atomic_write_json(entry.path / "test.paths.json", [str(ds.paths[r]) for r in kept])
        files = [f"shards/{p.name}" for p in shards] + ["test.shards.json", "test.paths.json"]
    atomic_write_json(entry.path / "test.skipped.json", skipped)
    entry.commit([*files, "test.skipped.json"], extra={"split": "test", "n": N - 1, "dim": image.shape[1],
                                                        "views": 1, "storage": form})
    tkey = {**text_key(fp, ds.classnames, ds.templates), "version": 1}
    text_entry = cache.text_entry(tkey)
    text_entry.path.mkdir(parents=True)
    atomic_write_json(text_entry.path / "key.json", tkey)
    atomic_save_tensors(text_entry.path / "text.safetensors", {"text": torch.ones(3, 2, image.shape[1])})
    text_entry.commit(["text.safetensors"], extra={"logit": {"logit_scale": 42.0, "logit_bias": -1.0}})


@pytest.mark.parametrize("form", ["assembled", "sharded"])
def test_version_1_entry_is_migrated_once_into_shards_without_the_encoder(tmp_path, no_encoder, caplog, form):
    ds = make_images(tmp_path / "img", N)
    image = torch.randn(N - 1, 32, generator=torch.Generator().manual_seed(1))  # row 2 was skipped
    cache = FeatureCache(tmp_path / "c")
    _write_v1_entries(cache, ds, form, image, skipped_row=2)
    no_encoder()
    with caplog.at_level(logging.WARNING):
        fs = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", device="cpu", on_error="skip",
                             shard_size=SHARD, progress=False)
    assert fs.meta["encoder_loaded"] is False and fs.meta["skipped"] == {"test": 1}
    assert caplog.text.count("cache version 1") == 2  # the image entry and the text entry, each logged
    split = fs.split("test")
    assert torch.equal(split.image, image) and split.label.tolist() == [ds.labels[r] for r in range(N) if r != 2]
    assert split.paths == [str(ds.paths[r]) for r in range(N) if r != 2]
    assert torch.equal(fs.text, torch.ones(3, 2, 32))
    assert (fs.meta["logit_scale"], fs.meta["logit_bias"]) == (42.0, -1.0)  # carried over, not re-encoded
    (entry,) = (tmp_path / "c" / "images").iterdir()  # the old entry is gone: one way
    assert len(list((tmp_path / "c" / "text").iterdir())) == 1
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["key"]["version"] == 2 and manifest["storage"] == "sharded"
    assert not (entry / "test.safetensors").exists()
    shards = [ShardedSplit([p]) for p in sorted((entry / "shards").glob("rows-*.safetensors"))]
    assert [s.rows() for s in shards] == [[0, 1, 3], [4, 5, 6, 7], [8, 9]]  # the dataset rows, row 2 skipped
    assert json.loads((entry / "test.skipped.json").read_text())[0]["row"] == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = get_sharded_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", device="cpu",
                                        on_error="skip", progress=False)
    assert "cache version 1" not in caplog.text  # once
    image_again = torch.cat([chunk for chunk, _ in again.split("test").iter_chunks(4)])
    assert torch.equal(image_again, image)


def test_corrupt_version_1_entry_is_not_migrated_but_reencoded(tmp_path, enc, caplog):
    ds = make_images(tmp_path / "img", N)
    cache = FeatureCache(tmp_path / "c")
    _write_v1_entries(cache, ds, "assembled", torch.zeros(N - 1, 32), skipped_row=2)
    old = next((tmp_path / "c" / "images").iterdir())
    (old / "test.safetensors").write_bytes(b"damaged")
    counter = CountingEncoder(enc)
    with caplog.at_level(logging.WARNING):
        fs = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", encoder=counter, progress=False)
    assert "test.safetensors" in caplog.text and counter.images == N
    assert torch.allclose(fs.split("test").image, _loop(enc, ds, range(N)), atol=1e-5)


# ----------------------------------------------------------------------------------------- read-only cache
def _read_only(monkeypatch, root) -> None:
    """Simulate a read-only file system under `root` (chmod cannot: the tests may run as root): creating the lock
    file, a directory that does not exist yet, or any temp file for an atomic write fails with EROFS."""
    root = str(root)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    class ReadOnlyLock:
        def __init__(self, path):
            self.path = path

        def acquire(self, timeout=None):
            refuse(self.path)

    real_mkdir, real_mkstemp = cache_module.Path.mkdir, fileio.tempfile.mkstemp

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(root) and not self.is_dir():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        if str(dir).startswith(root):
            refuse(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(cache_module, "FileLock", ReadOnlyLock)
    monkeypatch.setattr(cache_module, "_LOCKS", {})
    monkeypatch.setattr(cache_module.Path, "mkdir", mkdir)
    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)


def test_read_only_cache_serves_complete_entries_and_names_the_path_for_writes(tmp_path, enc, monkeypatch,
                                                                               no_encoder):
    data = {"test": make_images(tmp_path / "img", 5), "train": make_images(tmp_path / "img", 4, split="train")}
    first = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", encoder=enc, progress=False)
    _read_only(monkeypatch, tmp_path / "c")
    no_encoder()
    hit = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert hit.meta["encoder_loaded"] is False and torch.equal(hit.split("test").image, first.split("test").image)
    sharded = get_sharded_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(sharded.split("test").read_rows(0, 5)[0], first.split("test").image)
    with pytest.raises(CacheError, match=r"locks/images/.*train.*\.lock: cannot write \(Read-only file system\); "
                                         r"the feature cache is not writable"):
        get_feature_set(MODEL, data, ["train"], cache_dir=tmp_path / "c", progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="chmod does not stop root from writing")
def test_read_only_cache_directory_by_permissions(tmp_path, enc):
    data = {"test": make_images(tmp_path / "img", 3), "train": make_images(tmp_path / "img", 3, split="train")}
    first = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", encoder=enc, progress=False)
    dirs = [tmp_path / "c", *[p for p in (tmp_path / "c").rglob("*") if p.is_dir()]]
    for p in (tmp_path / "c").rglob("*"):  # as another user's shared cache: nothing writable, lock files included
        p.chmod(0o555 if p.is_dir() else 0o444)
    (tmp_path / "c").chmod(0o555)
    try:
        hit = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", encoder=enc, progress=False)
        assert torch.equal(hit.split("test").image, first.split("test").image)
        with pytest.raises(CacheError, match="the feature cache is not writable"):
            get_feature_set(MODEL, data, ["train"], cache_dir=tmp_path / "c", encoder=enc, progress=False)
    finally:
        for d in dirs:
            d.chmod(0o755)


# ----------------------------------------------------------------------------------------- disk full
def _disk_full_after(monkeypatch, shards_written: int) -> None:
    """The shard writer fails with ENOSPC once `shards_written` shards are on disk (as a full disk would)."""
    real, count = extract_module.write_shard, {"n": 0}

    def write_shard(directory, start, *args, **kwargs):
        if count["n"] == shards_written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / f"rows-{start:09d}.tmp"))
        count["n"] += 1
        return real(directory, start, *args, **kwargs)

    monkeypatch.setattr(extract_module, "write_shard", write_shard)


def test_disk_full_during_extraction_is_named_publishes_nothing_and_resumes(tmp_path, enc, monkeypatch):
    ds = make_images(tmp_path / "img", N)
    _disk_full_after(monkeypatch, shards_written=1)
    with pytest.raises(CacheError, match=r"shards/rows-000000004.tmp: cannot write \(No space left on device\); "
                                         r"the disk is full.*run the command again to resume"):
        get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", encoder=enc, shard_size=SHARD,
                        progress=False)
    (entry,) = (tmp_path / "c" / "images").iterdir()
    assert not (entry / "manifest.json").exists() and not (entry / "test.shards.json").exists()  # nothing published
    assert [p.name for p in (entry / "shards").glob("rows-*")] == ["rows-000000000-000000004.safetensors"]
    monkeypatch.undo()
    counter = CountingEncoder(enc)
    fs = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", encoder=counter, shard_size=SHARD,
                         progress=False)
    assert counter.images == N - SHARD  # resumed after the finished shard
    assert torch.allclose(fs.split("test").image, _loop(enc, ds, range(N)), atol=1e-5)


def test_disk_full_in_the_cli_is_exit_2_with_the_path(tmp_path, monkeypatch, capsys):
    root = make_imagefolder(tmp_path / "folder", splits=("test",), per_class=1)
    _disk_full_after(monkeypatch, shards_written=0)
    code = main(["extract", "--model", MODEL, "--dataset", f"imagefolder:{root}", "--split", "test", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "No space left on device" in err and "rows-000000000.tmp" in err and "Traceback" not in err


def test_safetensors_disk_full_message_is_recognised(tmp_path):
    """safetensors reports the OS error only inside its message; it is named like any ENOSPC."""
    from safetensors import SafetensorError

    with pytest.raises(CacheError, match=r"x\.safetensors: cannot write \(No space left on device\)"):
        with cache_writes(tmp_path / "x.safetensors"):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
    with pytest.raises(ValueError):  # any other error passes unchanged
        with cache_writes(tmp_path):
            raise ValueError("not an I/O error")


def test_a_text_entry_is_its_key_text_and_manifest_only(tmp_path):
    """Only image entries have shards: the one begin-entry function leaves a text entry without a shards/ folder."""
    cache = FeatureCache(tmp_path)
    key = text_key({"model_id": "m", "arch": "a", "weights": {"kind": "tag", "tag": "t"}}, ["a", "b"], ["{}"])
    cache.save_text(key, torch.randn(2, 1, 4))
    assert sorted(p.name for p in cache.text_entry(key).path.iterdir()) == ["key.json", "manifest.json",
                                                                              "text.safetensors"]
