"""Sharded cache entries (`get_sharded_feature_set`, `clipadapt extract --sharded`): a split stays as its shards
plus an index, row for row the embeddings of a per-image loop; it is never assembled in memory; the same cache
key serves both storages (in either direction) without the encoder; `--out` writes a sharded feature directory
that `search`, `ShardedSplit.open` and `load_feature_dir` read; skipped rows, resume and corrupt shards."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from _imagedata import CountingEncoder, corrupt, make_imagefolder, make_images

from clipadapt.cli import main
from clipadapt.encoders import load_encoder
from clipadapt.errors import DatasetError, FeatureDirError
from clipadapt.features.io import load_feature_dir
from clipadapt.features.pipeline import clear_encoder_memo, get_feature_set, get_sharded_feature_set
from clipadapt.features.shards import ShardedSplit

MODEL = "clipadapt-test-tiny-vit"
N, SHARD = 10, 4  # shards [0,4) [4,8) [8,10)


@pytest.fixture(scope="module")
def enc():
    return load_encoder(MODEL, device="cpu")


@pytest.fixture
def data(tmp_path):
    return {"test": make_images(tmp_path, N, split="test", seed=3)}


@pytest.fixture(autouse=True)
def fresh_encoder_memo():
    clear_encoder_memo()
    yield
    clear_encoder_memo()


@pytest.fixture
def never_assemble(monkeypatch):
    """Loading or assembling a whole split raises: the sharded path must never do either."""

    def refuse(*args, **kwargs):
        raise AssertionError("the whole split was assembled / loaded in memory")

    monkeypatch.setattr(ShardedSplit, "load", refuse)  # the one assembler
    monkeypatch.setattr("clipadapt.features.cache.load_split", refuse)


def _loop(enc, ds, rows):
    """The literal computation: each image preprocessed and encoded alone."""
    return torch.cat([enc.encode_images(enc.preprocess(ds[i][0]).unsqueeze(0)) for i in rows])


def _sharded(data, cache, **kw):
    return get_sharded_feature_set(MODEL, data, ["test"], cache_dir=cache, shard_size=SHARD, batch_size=3,
                                   progress=False, **kw)


def _rows(split: ShardedSplit):
    """Every row read back chunk by chunk (chunks of 3 cross the shard boundaries)."""
    chunks = list(split.iter_chunks(3))
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


# ----------------------------------------------------------------------------------------- equality
def test_sharded_split_equals_per_image_loop_and_assembled_path_row_for_row(tmp_path, data, enc, never_assemble):
    sfs = _sharded(data, tmp_path / "s", encoder=enc)
    split = sfs.split("test")
    image, label = _rows(split)
    ds = data["test"]
    assert split.n == N and len(split.shards) == 3 and split.dim == enc.embed_dim
    assert torch.allclose(image, _loop(enc, ds, range(N)), atol=1e-5)
    assert label.tolist() == ds.labels
    entry = tmp_path / "s" / "images"
    (entry,) = entry.iterdir()
    assert json.loads((entry / "test.paths.json").read_text()) == [str(p) for p in ds.paths]
    assert not (entry / "test.safetensors").exists()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["storage"] == "sharded" and manifest["n"] == N
    assert sorted(manifest["files"]) == sorted(
        ["shards/rows-000000000-000000004.safetensors", "shards/rows-000000004-000000008.safetensors",
         "shards/rows-000000008-000000010.safetensors", "test.shards.json", "test.paths.json", "test.skipped.json"])
    torch.testing.assert_close(sfs.text, enc.encode_texts(["a photo of a red.", "a red thing.", "a photo of a green.",
                                                           "a green thing.", "a photo of a blue.", "a blue thing."]
                                                          ).view(3, 2, -1), rtol=0, atol=1e-5)


def test_sharded_and_assembled_entries_hold_the_same_rows(tmp_path, data, enc):
    sharded = _sharded(data, tmp_path / "s", encoder=enc).split("test")
    assembled = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "a", encoder=enc, shard_size=SHARD,
                                batch_size=3, progress=False).split("test")  # same batches: bit-identical
    image, label = _rows(sharded)
    torch.testing.assert_close(image, assembled.image, rtol=0, atol=0)
    assert torch.equal(label, assembled.label)
    s_entry = next((tmp_path / "s" / "images").iterdir()).name
    a_entry = next((tmp_path / "a" / "images").iterdir()).name
    assert s_entry == a_entry  # storage is not content: one key


# ----------------------------------------------------------------------------------------- hits both ways
def test_sharded_entry_serves_get_feature_set_without_the_encoder(tmp_path, data, enc, no_encoder):
    first = _sharded(data, tmp_path / "c", encoder=enc)
    image, label = _rows(first.split("test"))
    no_encoder()
    fs = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert fs.meta["encoder_loaded"] is False
    assert torch.equal(fs.split("test").image, image) and torch.equal(fs.split("test").label, label)
    assert fs.split("test").paths == [str(p) for p in data["test"].paths]
    again = _sharded(data, tmp_path / "c")  # and the sharded hit itself
    assert again.meta["encoder_loaded"] is False and torch.equal(_rows(again.split("test"))[0], image)


# ----------------------------------------------------------------------------------------- skipped, resume, corrupt
def test_skipped_rows_are_absent_from_the_shards_and_recorded(tmp_path, data, enc, never_assemble):
    ds = data["test"]
    corrupt(ds.paths[5])
    sfs = _sharded(data, tmp_path / "c", encoder=enc, on_error="skip")
    split = sfs.split("test")
    kept = [i for i in range(N) if i != 5]
    image, label = _rows(split)
    assert split.n == N - 1 and sfs.meta["skipped"]["test"] == 1
    assert torch.allclose(image, _loop(enc, ds, kept), atol=1e-5)
    assert label.tolist() == [ds.labels[i] for i in kept]
    entry = next((tmp_path / "c" / "images").iterdir())
    assert json.loads((entry / "test.paths.json").read_text()) == [str(ds.paths[i]) for i in kept]
    assert [r["row"] for r in json.loads((entry / "test.skipped.json").read_text())] == [5]
    with pytest.raises(DatasetError, match=ds.paths[5].name):  # a strict run refuses the reduced cached split
        _sharded(data, tmp_path / "c", encoder=enc, on_error="fail")


def test_interrupted_sharded_extraction_resumes_with_the_missing_shards_only(tmp_path, data, enc):
    with pytest.raises(KeyboardInterrupt):
        _sharded(data, tmp_path / "c", encoder=CountingEncoder(enc, fail_after=2))  # batches of 3: shard 0 done
    counter = CountingEncoder(enc)
    split = _sharded(data, tmp_path / "c", encoder=counter).split("test")
    assert counter.images == N - SHARD
    assert torch.allclose(_rows(split)[0], _loop(enc, data["test"], range(N)), atol=1e-5)


def test_corrupt_shard_invalidates_the_entry_and_only_it_is_reencoded(tmp_path, data, enc, caplog):
    first = _rows(_sharded(data, tmp_path / "c", encoder=enc).split("test"))[0]
    shard = next((tmp_path / "c" / "images").glob("*/shards/rows-000000004-000000008.safetensors"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the embeddings: the file still parses, only its sha256 tells
    shard.write_bytes(bytes(raw))
    counter = CountingEncoder(enc)
    with caplog.at_level(logging.WARNING):
        again = _sharded(data, tmp_path / "c", encoder=counter).split("test")
    assert "rows-000000004-000000008.safetensors is corrupt" in caplog.text and "recomputing" in caplog.text
    assert counter.images == SHARD  # that shard's rows, nothing else
    assert torch.equal(_rows(again)[0], first)


def test_corrupt_shard_is_reencoded_for_an_in_memory_request_too_and_the_entry_stays_sharded(tmp_path, data, enc):
    """The repair keeps the sharded storage: a reader that opened the split before (another process, say) still
    finds every shard file, instead of losing them to an assembly that deletes `shards/`."""
    reader = _sharded(data, tmp_path / "c", encoder=enc).split("test")  # opened before the repair
    first = _rows(reader)[0]
    shard = next((tmp_path / "c" / "images").glob("*/shards/rows-000000000-000000004.safetensors"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    counter = CountingEncoder(enc)
    fs = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", encoder=counter, shard_size=SHARD,
                         batch_size=3, progress=False)  # the same batches: bit-identical embeddings
    assert counter.images == SHARD and torch.equal(fs.split("test").image, first)
    entry = next((tmp_path / "c" / "images").iterdir())
    assert (entry / "test.shards.json").is_file() and not (entry / "test.safetensors").exists()
    assert torch.equal(_rows(reader)[0], first)  # the earlier reader reads on, repaired shard included


# ----------------------------------------------------------------------------------------- CLI + --out
def test_cli_extract_sharded_out_dir_is_read_by_search_and_load_feature_dir(tmp_path, monkeypatch, capsys):
    root = make_imagefolder(tmp_path / "folder", splits=("test",), per_class=3)
    out = tmp_path / "out"

    def extract(cache: str, *extra: str) -> int:
        return main(["extract", "--model", MODEL, "--dataset", f"imagefolder:{root}", "--split", "test", "--device",
                     "cpu", "--cache-dir", str(tmp_path / cache), "--shard-size", "4", "--batch-size", "3", *extra])

    assert extract("a", "--out", str(tmp_path / "ref")) == 0  # the assembled reference, in its own cache
    reference = load_feature_dir(tmp_path / "ref").split("test")
    monkeypatch.setattr(ShardedSplit, "load", lambda *a, **k: pytest.fail("assembled"))
    assert extract("c2", "--sharded", "--out", str(out)) == 0
    assert "test: (9, 32) in 3 shards" in capsys.readouterr().out
    index = json.loads((out / "test.shards.json").read_text())
    assert [s["file"] for s in index["shards"]] == [f"test.shards/rows-{a:09d}-{b:09d}.safetensors"
                                                    for a, b in ((0, 4), (4, 8), (8, 9))]
    cached = next((tmp_path / "c2" / "images").glob("*/shards/rows-000000000-000000004.safetensors"))
    assert (out / index["shards"][0]["file"]).stat().st_ino == cached.stat().st_ino  # hard link, not a copy
    assert not (out / "test.safetensors").exists()
    opened = ShardedSplit.open(out, "test")
    image, label = _rows(opened)
    assert torch.equal(image, reference.image) and torch.equal(label, reference.label)
    monkeypatch.undo()
    loaded = load_feature_dir(out)  # into memory when asked
    assert torch.equal(loaded.split("test").image, reference.image) and loaded.split("test").paths == reference.paths
    assert json.loads((out / "test.skipped.json").read_text()) == []
    with pytest.raises(FeatureDirError, match="split 'train' not found"):
        load_feature_dir(out, ["train"])
    # search reads DIR:SPLIT memory-mapped; its top-k equals the literal sort of all cosine similarities
    assert main(["search", "--queries", f"{out}:test", "--gallery", f"{out}:test", "--k", "3",
                 "--save-topk", str(tmp_path / "topk.npz")]) == 0
    import numpy as np

    x = torch.nn.functional.normalize(reference.image, dim=-1)
    sims = (x @ x.T).tolist()
    expected = [sorted(range(9), key=lambda j: (-row[j], j))[:3] for row in sims]
    assert np.load(tmp_path / "topk.npz")["indices"].tolist() == expected


def test_cli_sharded_out_replaces_an_assembled_out_dir(tmp_path):
    root = make_imagefolder(tmp_path / "folder", splits=("test",), per_class=2)
    base = ["extract", "--model", MODEL, "--dataset", f"imagefolder:{root}", "--split", "test", "--device", "cpu",
            "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "out")]
    assert main(base) == 0 and (tmp_path / "out" / "test.safetensors").is_file()
    first = load_feature_dir(tmp_path / "out").split("test")
    assert main(base + ["--sharded"]) == 2  # an existing --out directory is replaced only with --overwrite
    assert main(base + ["--sharded", "--overwrite"]) == 0  # reuses the assembled entry as a one-shard split
    assert not (tmp_path / "out" / "test.safetensors").exists() and (tmp_path / "out" / "test.shards.json").is_file()
    assert torch.equal(load_feature_dir(tmp_path / "out").split("test").image, first.image)
    assert main(base + ["--overwrite"]) == 0  # and back: the assembled write drops the index readers would prefer
    assert not (tmp_path / "out" / "test.shards.json").exists()
    assert torch.equal(load_feature_dir(tmp_path / "out").split("test").image, first.image)


def test_shards_of_another_shard_size_are_not_published(tmp_path, data, enc):
    """--shard-size is not part of the key: a resumed run with another size leaves the old cut's files behind,
    which publishing removes (the manifest and index list exactly the new plan)."""
    with pytest.raises(KeyboardInterrupt):
        get_sharded_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", shard_size=3, batch_size=3,
                                encoder=CountingEncoder(enc, fail_after=1), progress=False)
    shard_dir = next((tmp_path / "c" / "images").glob("*/shards"))
    assert [p.name for p in shard_dir.glob("rows-*")] == ["rows-000000000-000000003.safetensors"]
    split = _sharded(data, tmp_path / "c", encoder=enc).split("test")
    assert sorted(p.name for p in shard_dir.glob("rows-*")) == [
        "rows-000000000-000000004.safetensors", "rows-000000004-000000008.safetensors",
        "rows-000000008-000000010.safetensors"]
    assert torch.allclose(_rows(split)[0], _loop(enc, data["test"], range(N)), atol=1e-5)


def test_cli_out_link_race_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """--out links the cache's shards after the entry's lock is released; if another process repairs the entry
    meanwhile, a shard can vanish: the user gets an error saying so, not a bare FileNotFoundError."""
    import clipadapt.features.shards as shards_module

    root = make_imagefolder(tmp_path / "folder", splits=("test",), per_class=2)

    def vanished(fs, out):
        raise FileNotFoundError(2, "No such file or directory", "/cache/images/x/shards/rows-0-4.safetensors")

    monkeypatch.setattr(shards_module, "save_sharded_feature_dir", vanished)
    code = main(["extract", "--model", MODEL, "--dataset", f"imagefolder:{root}", "--split", "test", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "c"), "--sharded", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "vanished while it was linked" in err and "rows-0-4.safetensors" in err and "again" in err
