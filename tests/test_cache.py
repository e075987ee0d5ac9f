"""The feature cache: every key component changes the key, hits never load the encoder, corrupt entries are
recomputed, entries are feature directories, and `extract` / `eval --model --dataset` run through it."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch
from _imagedata import corrupt, make_imagefolder, make_images

import clipadapt.encoders
from clipadapt.cli import main
from clipadapt.encoders import encoder_fingerprint, load_encoder
from clipadapt.errors import DatasetError
from clipadapt.features.cache import FeatureCache, dataset_fingerprint, image_key, key_digest, text_key
from clipadapt.features.io import load_feature_dir
from clipadapt.features.pipeline import clear_encoder_memo, get_feature_set

MODEL = "clipadapt-test-tiny-vit"


@pytest.fixture(scope="module")
def enc():
    return load_encoder(MODEL, device="cpu")


@pytest.fixture
def data(tmp_path):
    return {"train": make_images(tmp_path, 6, split="train"), "test": make_images(tmp_path, 5, split="test", seed=1)}


@pytest.fixture(autouse=True)
def fresh_encoder_memo():
    """Each test starts without encoders kept from earlier calls (get_feature_set reuses recent ones)."""
    clear_encoder_memo()
    yield
    clear_encoder_memo()


class LoadCounter:
    def __init__(self, monkeypatch):
        self.count, self._load = 0, clipadapt.encoders.load_encoder
        monkeypatch.setattr(clipadapt.encoders, "load_encoder", self)

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self._load(*args, **kwargs)


# ----------------------------------------------------------------------------------------- keys
def test_every_key_component_changes_the_key(tmp_path, data):
    vit = encoder_fingerprint(MODEL, device="cpu")
    ds = dataset_fingerprint(data["test"])
    base = key_digest(image_key(vit, ds, views=1, seed=0))
    adapter = tmp_path / "adapter.safetensors"
    adapter.write_bytes(b"adapter weights")
    with_adapter = encoder_fingerprint(MODEL, device="cpu", adapter=adapter)
    assert with_adapter["adapter"] == hashlib.sha256(b"adapter weights").hexdigest()
    resized = json.loads(json.dumps(vit))
    resized["preprocessing"]["size"] = [64, 64]
    changed = {
        "model": image_key(encoder_fingerprint("clipadapt-test-tiny-rn", device="cpu"), ds, views=1, seed=0),
        "weights": image_key({**vit, "weights": {"kind": "checkpoint", "sha256": "ab"}}, ds, views=1, seed=0),
        "adapter": image_key(with_adapter, ds, views=1, seed=0),
        "preprocessing": image_key(resized, ds, views=1, seed=0),
        "views": image_key(vit, ds, views=4, seed=0),
        "split": image_key(vit, dataset_fingerprint(data["train"]), views=1, seed=0),
        "subset": image_key(vit, dataset_fingerprint(data["test"].subset([0, 1])), views=1, seed=0),
        "dataset": image_key(vit, {**ds, "name": "other"}, views=1, seed=0),
    }
    digests = {name: key_digest(k) for name, k in changed.items()}
    assert base not in digests.values() and len(set(digests.values())) == len(digests)
    assert key_digest(image_key(vit, ds, views=4, seed=1)) != digests["views"]  # the seed counts with views > 1
    assert key_digest(image_key(vit, ds, views=1, seed=1)) == base  # ... and not for the deterministic eval view
    t = key_digest(text_key(vit, ["a", "b"], ["{}"]))
    assert t != key_digest(text_key(vit, ["a", "b"], ["a {}"])) and t != key_digest(text_key(vit, ["b", "a"], ["{}"]))


# ----------------------------------------------------------------------------------------- hits and misses
def test_second_run_is_served_without_the_encoder(tmp_path, data, no_encoder):
    first = get_feature_set(MODEL, data, ["train", "test"], views={"train": 2}, cache_dir=tmp_path / "c", progress=False)
    assert first.meta["encoder_loaded"] is True
    no_encoder()
    second = get_feature_set(MODEL, data, ["train", "test"], views={"train": 2}, cache_dir=tmp_path / "c", progress=False)
    assert second.meta["encoder_loaded"] is False
    for name in ("train", "test"):
        assert torch.equal(first.split(name).image, second.split(name).image)
        assert torch.equal(first.split(name).label, second.split(name).label)
    assert first.split("train").image.shape == (6, 2, 32) and torch.equal(first.text, second.text)


def test_cache_entry_is_a_feature_directory(tmp_path, data, enc):
    fs = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", encoder=enc, progress=False)
    loaded = load_feature_dir(fs.meta["cache"]["test"])
    assert loaded.classnames == data["test"].classnames and loaded.meta["model"] == MODEL
    assert torch.equal(loaded.split("test").image, fs.split("test").image)
    assert torch.equal(loaded.text, fs.text) and loaded.text.shape == (3, 2, 32)


def test_corrupt_cache_file_is_recomputed(tmp_path, data, monkeypatch, caplog):
    first = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    split_file = next((tmp_path / "c" / "images").glob("*/shards/rows-*.safetensors"))  # the entry's one shard
    raw = bytearray(split_file.read_bytes())
    raw[-5] ^= 0xFF  # flip a bit inside the tensor data: the file still parses
    split_file.write_bytes(bytes(raw))
    clear_encoder_memo()
    counter = LoadCounter(monkeypatch)
    with caplog.at_level(logging.WARNING):
        again = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert counter.count == 1 and "corrupt" in caplog.text and "recomputing" in caplog.text
    assert torch.allclose(first.split("test").image, again.split("test").image, atol=1e-6)


def test_changed_dataset_is_not_served_stale(tmp_path, data, monkeypatch):
    get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", progress=False)
    subset = {"test": data["test"].subset([0, 2, 4])}
    fs = get_feature_set(MODEL, subset, ["test"], cache_dir=tmp_path / "c", progress=False)
    assert fs.meta["encoder_loaded"] is True and fs.split("test").n == 3  # re-encoded, not served stale


def test_recent_encoder_is_reused_across_calls(tmp_path, data, monkeypatch):
    counter = LoadCounter(monkeypatch)
    for rows in ([0, 1], [2, 3], [1, 4]):  # three cache misses, e.g. few-shot samples of three seeds
        fs = get_feature_set(MODEL, data, ["train"], indices={"train": rows}, cache_dir=tmp_path / "c", progress=False)
        assert fs.meta["encoder_loaded"] is True
    assert counter.count == 1


def test_indices_select_rows(tmp_path, data, enc):
    full = get_feature_set(MODEL, data, ["train"], cache_dir=tmp_path / "c", encoder=enc, progress=False)
    part = get_feature_set(MODEL, data, ["train"], indices={"train": [1, 4]}, cache_dir=tmp_path / "c", encoder=enc, progress=False)
    assert torch.allclose(part.split("train").image, full.split("train").image[[1, 4]], atol=1e-6)


def test_skipped_images_are_recorded_and_fail_refuses_a_skipped_cache(tmp_path, data, enc):
    corrupt(data["test"].paths[3])
    fs = get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", encoder=enc, on_error="skip", progress=False)
    assert fs.split("test").n == 4 and fs.meta["skipped"]["test"] == 1
    recorded = json.loads((tmp_path / "c" / "images").glob("*/test.skipped.json").__next__().read_text())
    assert [r["path"] for r in recorded] == [str(data["test"].paths[3])]
    with pytest.raises(DatasetError, match=data["test"].paths[3].name):
        get_feature_set(MODEL, data, ["test"], cache_dir=tmp_path / "c", encoder=enc, on_error="fail", progress=False)


def test_text_cache_roundtrip(tmp_path):
    cache = FeatureCache(tmp_path)
    key = text_key({"model_id": "m", "arch": "a", "weights": {"kind": "tag", "tag": "t"}}, ["a", "b"], ["{}"])
    assert cache.load_text(key) is None
    text = torch.randn(2, 1, 4)
    cache.save_text(key, text)
    assert torch.equal(cache.load_text(key), text)
    (cache.text_entry(key).path / "text.safetensors").write_bytes(b"junk")
    assert cache.load_text(key) is None  # corrupt: recompute


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture
def dataset_spec(tmp_path):
    """An `imagefolder:ROOT` spec with train and test splits of 6 generated images each."""
    return f"imagefolder:{make_imagefolder(tmp_path / 'folder')}"


def test_cli_extract_writes_cache_and_feature_dir(tmp_path, dataset_spec, capsys):
    out = tmp_path / "fd"
    code = main(["extract", "--model", MODEL, "--dataset", dataset_spec, "--split", "test", "--split", "train",
                 "--views", "2", "--cache-dir", str(tmp_path / "c"), "--out", str(out), "--batch-size", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test: (6, 2, 32)" in printed and str(tmp_path / "c") in printed
    fs = load_feature_dir(out)
    assert fs.split("train").image.shape == (6, 2, 32) and fs.meta["model"] == MODEL
    assert json.loads((out / "test.skipped.json").read_text()) == []


def test_cli_eval_second_run_does_not_touch_the_encoder(tmp_path, dataset_spec, no_encoder):
    args = ["eval", "--model", MODEL, "--dataset", dataset_spec, "--method", "zeroshot", "--cache-dir", str(tmp_path / "c")]
    assert main(args + ["--out", str(tmp_path / "r1.json")]) == 0
    no_encoder()
    assert main(args + ["--out", str(tmp_path / "r2.json")]) == 0
    r1, r2 = (json.loads((tmp_path / f"r{i}.json").read_text()) for i in (1, 2))
    assert r1["top1"] == r2["top1"] and r1["n"] == 6


def test_cli_models_lists_tags(capsys, tmp_path):
    assert main(["models", "RN50*", "--out", str(tmp_path / "m.json")]) == 0
    printed = capsys.readouterr().out
    assert "RN50@openai" in printed
    rows = json.loads((tmp_path / "m.json").read_text())
    assert any(r["arch"] == "RN50" and "openai" in r["tags"] for r in rows)


def test_cli_models_pattern_is_a_glob_or_else_a_substring(tmp_path):
    import open_clip

    main(["models", "vit-b-1", "--out", str(tmp_path / "sub.json")])
    main(["models", "ViT-B-1*", "--out", str(tmp_path / "glob.json")])
    main(["models", "clipadapt", "--out", str(tmp_path / "ours.json")])
    substring = {r["arch"] for r in json.loads((tmp_path / "sub.json").read_text())}
    glob = {r["arch"] for r in json.loads((tmp_path / "glob.json").read_text())}
    assert substring == {a for a in open_clip.list_models() if "vit-b-1" in a.lower()} and "ViT-B-16" in substring
    assert glob == {a for a in open_clip.list_models() if a.lower().startswith("vit-b-1")}
    assert {r["arch"] for r in json.loads((tmp_path / "ours.json").read_text())} == {
        "clipadapt-test-tiny-rn", "clipadapt-test-tiny-vit", "clipadapt-test-tiny-siglip"}


def test_cli_with_a_real_imagefolder_spec(tmp_path, no_encoder):
    root = make_imagefolder(tmp_path / "folder")
    spec = f"imagefolder:{root}"
    args = ["eval", "--model", MODEL, "--dataset", spec, "--method", "zeroshot", "--cache-dir", str(tmp_path / "c")]
    assert main(["extract", "--model", MODEL, "--dataset", spec, "--cache-dir", str(tmp_path / "c")]) == 0
    no_encoder()  # extract filled the cache: eval must not load the encoder
    assert main(args + ["--out", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n"] == 6 and result["features"]["model"] == MODEL


def test_feature_set_from_args_fetches_the_splits_the_method_reads(monkeypatch):
    import argparse

    import clipadapt.eval.registry as registry
    from clipadapt.cli import _common
    from clipadapt.features import pipeline

    method = registry.EvalMethod(name="needs-train", run=None, add_arguments=None, help="", splits=("train", "val"))
    monkeypatch.setattr(registry, "get_eval_method", lambda name: method)
    seen = {}
    monkeypatch.setattr(pipeline, "get_feature_set",
                        lambda model, dataset, splits, options, **kw: seen.update(splits=splits, options=options, **kw))
    args = argparse.Namespace(model=MODEL, dataset="x", method="needs-train", split="test", cache_dir=None, device=None,
                              batch_size=8, train_views=4)
    _common.feature_set_from_args(args, splits=None)
    assert seen["splits"] == ["test", "train", "val"]
    options = seen["options"]  # one ExtractOptions, built from the arguments (the library never sees the Namespace)
    assert options.views == {"test": 1, "train": 4, "val": 1} and options.batch_size == 8 and options.on_error == "fail"
