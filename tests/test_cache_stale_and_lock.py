"""Cache correctness: an image rewritten in place is re-encoded (the key carries each file's size + mtime, or
sha256 on request) while an untouched dataset is a hit; two processes filling one entry encode it once."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from _cache_lock_worker import fill_cache
from _imagedata import TinyImageDataset, make_imagefolder, make_images
from PIL import Image

import clipadapt.encoders
from clipadapt.data import build_dataset
from clipadapt.encoders import load_encoder
from clipadapt.errors import ConfigError
from clipadapt.features.cache import FeatureCache, dataset_fingerprint, image_key
from clipadapt.features.io import load_tensors
from clipadapt.features.pipeline import clear_encoder_memo, get_feature_set

MODEL = "clipadapt-test-tiny-vit"


@pytest.fixture(autouse=True)
def fresh_encoder_memo():
    clear_encoder_memo()
    yield
    clear_encoder_memo()


@pytest.fixture
def loads(monkeypatch):
    """Counts encoder loads (0 after a call = it was served from the cache)."""
    real, count = clipadapt.encoders.load_encoder, {"n": 0}

    def counting(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(clipadapt.encoders, "load_encoder", counting)
    return count


def _rewrite(path: Path, seed: int, fmt: str | None = None) -> None:
    """New random pixels at the same path and size (dimensions), as an in-place edit would."""
    with Image.open(path) as im:
        w, h = im.size
    pixels = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def _direct(enc, path: Path) -> torch.Tensor:
    """The embedding of one image file, encoded directly (the reference for what the cache must return)."""
    with Image.open(path) as im:
        return enc.encode_images(enc.preprocess(im.convert("RGB")).unsqueeze(0))[0]


# ----------------------------------------------------------------------------------------- stale files
def test_image_rewritten_in_place_is_reencoded_and_untouched_is_a_hit(tmp_path, loads):
    ds = make_images(tmp_path / "img", 5)
    cache = tmp_path / "c"
    first = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, device="cpu", progress=False)
    assert loads["n"] == 1
    clear_encoder_memo()
    again = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, device="cpu", progress=False)
    assert loads["n"] == 1 and again.meta["encoder_loaded"] is False  # untouched: a hit, encoder never loaded
    assert torch.equal(again.split("test").image, first.split("test").image)

    edited = ds.paths[2]
    before = os.stat(edited)
    _rewrite(edited, seed=99)
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # an edit one second later
    clear_encoder_memo()
    fresh = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, device="cpu", progress=False)
    assert loads["n"] == 2 and fresh.meta["encoder_loaded"] is True  # re-encoded, not served stale
    enc = load_encoder(MODEL, device="cpu")
    new = fresh.split("test").image
    assert torch.allclose(new[2], _direct(enc, edited), atol=1e-4)
    assert not torch.allclose(new[2], first.split("test").image[2], atol=1e-3)
    keep = [0, 1, 3, 4]
    assert torch.allclose(new[keep], first.split("test").image[keep], atol=1e-5)


def test_same_size_same_mtime_edit_is_caught_only_by_sha256(tmp_path, loads):
    """The documented limit of 'stat': an edit keeping size and mtime; file_check='sha256' sees it."""
    src = make_images(tmp_path / "img", 3)
    bmp = []
    for p in src.paths:  # BMP: the byte size depends only on the dimensions
        with Image.open(p) as im:
            im.save(p.with_suffix(".bmp"))
        bmp.append(p.with_suffix(".bmp"))
    ds = TinyImageDataset(bmp, src.labels)
    cache = tmp_path / "c"
    for check in ("stat", "sha256"):
        get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, device="cpu", progress=False, file_check=check)
    before = os.stat(bmp[1])
    _rewrite(bmp[1], seed=5, fmt="BMP")
    os.utime(bmp[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(bmp[1]).st_size == before.st_size
    clear_encoder_memo()
    n = loads["n"]
    stale = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, device="cpu", progress=False)
    assert loads["n"] == n and stale.meta["encoder_loaded"] is False
    exact = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, device="cpu", progress=False, file_check="sha256")
    assert loads["n"] == n + 1
    assert torch.allclose(exact.split("test").image[1], _direct(load_encoder(MODEL, device="cpu"), bmp[1]), atol=1e-4)


def test_files_part_of_the_key_written_out(tmp_path):
    ds = make_images(tmp_path / "img", 4)
    ds.paths[3].unlink()  # a missing file counts as '-', it does not fail the key
    fp = dataset_fingerprint(ds)
    lines = []
    for p in ds.paths:
        lines.append(f"{p.stat().st_size}:{p.stat().st_mtime_ns}\n" if p.exists() else "-\n")
    assert fp["files"] == {"check": "stat", "missing": 1, "digest": hashlib.sha256("".join(lines).encode()).hexdigest()}
    hashed = dataset_fingerprint(ds, file_check="sha256")["files"]
    lines = [hashlib.sha256(p.read_bytes()).hexdigest() + "\n" if p.exists() else "-\n" for p in ds.paths]
    assert hashed["digest"] == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert "files" not in dataset_fingerprint(ds, file_check="none")
    with pytest.raises(ConfigError, match="file_check"):
        dataset_fingerprint(ds, file_check="mtime")


def test_dataset_fingerprint_stays_portable_while_the_cache_key_sees_the_edit(tmp_path):
    """ImageDataset.fingerprint() (recorded by few-shot index lists) ignores mtimes; the cache key does not."""
    root = make_imagefolder(tmp_path / "folder")
    ds = build_dataset(f"imagefolder:{root}", "test")
    assert ds.source_files() == ds.paths
    sub = ds.subset([4, 1])
    assert sub.source_files() == [ds.paths[4], ds.paths[1]]
    fingerprint, key = ds.fingerprint(), dataset_fingerprint(ds)
    st = os.stat(ds.paths[0])
    os.utime(ds.paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert build_dataset(f"imagefolder:{root}", "test").fingerprint() == fingerprint
    assert dataset_fingerprint(ds)["files"]["digest"] != key["files"]["digest"]


def test_in_memory_dataset_has_no_files_part_and_still_caches(tmp_path, loads):
    ds = build_dataset("torchvision:fakedata:?size=4&classes=2&image_size=24", "test")
    assert ds.source_files() is None and "files" not in dataset_fingerprint(ds)
    first = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", device="cpu", progress=False)
    clear_encoder_memo()
    again = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", device="cpu", progress=False)
    assert loads["n"] == 1 and torch.equal(first.split("test").image, again.split("test").image)


# ----------------------------------------------------------------------------------------- lock
def test_lock_is_reentrant_in_one_thread(tmp_path):
    """The torchrun path holds an entry's lock while its rank 0 assembles through get_feature_set."""
    cache = FeatureCache(tmp_path)
    entry = cache.image_entry(image_key({"model_id": "m"}, {"name": "d", "split": "test"}, views=1, seed=0))
    with cache.lock(entry), cache.lock(entry):
        pass
    assert (tmp_path / "locks" / "images" / f"{entry.path.name}.lock").exists()


@pytest.mark.slow  # two spawned processes, each importing torch and loading the encoder
def test_two_processes_filling_one_entry_encode_it_once(tmp_path):
    ds = make_images(tmp_path / "img", 6)
    cache, marker = tmp_path / "c", tmp_path / "encoded.txt"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    outs = [tmp_path / f"out{i}.safetensors" for i in range(2)]
    procs = [ctx.Process(target=fill_cache, args=(str(cache), [str(p) for p in ds.paths], str(marker), str(out), start))
             for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = (load_tensors(out) for out in outs)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["text"], b["text"])
    records = [line.split() for line in marker.read_text().splitlines()]
    images = [(pid, int(n)) for pid, what, n in records if what == "images"]
    texts = [(pid, int(n)) for pid, what, n in records if what == "texts"]
    assert sum(n for _, n in images) == 6 and len({pid for pid, _ in images}) == 1  # every image encoded once
    assert sum(n for _, n in texts) == 3 * 2 and len({pid for pid, _ in texts}) == 1  # 3 classes x 2 templates
    left = [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
    assert left == []
    enc = load_encoder(MODEL, device="cpu")
    assert torch.allclose(a["image"][0], _direct(enc, ds.paths[0]), atol=1e-4)


def test_temp_files_left_in_an_entry_by_a_dead_writer_are_removed_when_it_is_refilled(tmp_path):
    ds = make_images(tmp_path / "img", 4)
    get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", progress=False)
    split_file = next((tmp_path / "c" / "images").glob("*/shards/rows-*.safetensors"))
    entry = split_file.parent.parent
    ours, safetensors_own = entry / ".test.safetensors.k3j2.tmp", entry / ".tmpab12cd"  # both temp-name styles
    ours.write_bytes(b"half a split")
    safetensors_own.write_bytes(b"half a split")
    split_file.unlink()  # the entry must be refilled (its writer "died" before publishing)
    clear_encoder_memo()
    fs = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert fs.meta["encoder_loaded"] is True
    assert not ours.exists() and not safetensors_own.exists() and split_file.is_file()
