"""Extraction: features equal a per-image loop, views are seeded per row, shards resume, unreadable images
are skipped-and-recorded or fail naming the path, text is (C, T, D)."""

from __future__ import annotations

import json

import pytest
import torch
from _imagedata import CountingEncoder, corrupt, make_images

from clipadapt.encoders import load_encoder
from clipadapt.encoders.augment import row_generator
from clipadapt.errors import DatasetError
from clipadapt.features.extract import extract_split, extract_text, read_skipped
from clipadapt.features.shards import ShardedSplit, plan_shards, shard_path


@pytest.fixture(scope="module")
def enc():
    return load_encoder("clipadapt-test-tiny-vit", device="cpu")


def _loop_features(enc, ds):
    """The literal computation: preprocess and encode each image alone."""
    return torch.cat([enc.encode_images(enc.preprocess(ds[i][0]).unsqueeze(0)) for i in range(len(ds))])


def test_plan_shards_covers_rows_exactly():
    assert plan_shards(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_shards(8, 4) == [(0, 4), (4, 8)]


def test_extract_split_equals_per_image_loop(enc, tmp_path):
    ds = make_images(tmp_path, 7)
    split = extract_split(enc, ds, shard_dir=tmp_path / "shards", batch_size=3, shard_size=4, progress=False)
    assert split.image.shape == (7, enc.embed_dim)
    assert torch.allclose(split.image, _loop_features(enc, ds), atol=1e-5)
    assert split.label.tolist() == ds.labels
    assert split.paths == [str(p) for p in ds.paths]


def test_views_are_seeded_per_row(enc, tmp_path):
    ds = make_images(tmp_path, 5)
    split = extract_split(enc, ds, views=3, seed=11, shard_dir=tmp_path / "a", batch_size=2, shard_size=3,
                          progress=False)
    assert split.image.shape == (5, 3, enc.embed_dim)
    aug = enc.train_transform()
    for i in range(5):
        views = aug.views(ds[i][0], 3, row_generator(11, i))
        assert torch.allclose(split.image[i], enc.encode_images(views), atol=1e-5)
    assert not torch.allclose(split.image[:, 0], split.image[:, 1])
    other_batching = extract_split(enc, ds, views=3, seed=11, shard_dir=tmp_path / "b", batch_size=5, shard_size=5,
                                   progress=False)
    assert torch.allclose(split.image, other_batching.image, atol=1e-5)
    other_seed = extract_split(enc, ds, views=3, seed=12, shard_dir=tmp_path / "c", batch_size=5, progress=False)
    assert not torch.allclose(split.image, other_seed.image)


def test_resume_reencodes_only_missing_shards(enc, tmp_path):
    ds = make_images(tmp_path, 10)
    full = extract_split(enc, ds, shard_dir=tmp_path / "ref", batch_size=2, shard_size=4, progress=False)
    interrupted = CountingEncoder(enc, fail_after=3)  # batches of 2: shard (0, 4) done, (4, 8) half done
    with pytest.raises(KeyboardInterrupt):
        extract_split(interrupted, ds, shard_dir=tmp_path / "run", batch_size=2, shard_size=4, progress=False)
    assert shard_path(tmp_path / "run", 0, 4).is_file() and not shard_path(tmp_path / "run", 4, 8).is_file()
    resumed = CountingEncoder(enc)
    split = extract_split(resumed, ds, shard_dir=tmp_path / "run", batch_size=2, shard_size=4, progress=False)
    assert resumed.images == 6  # rows 4..9 only
    assert torch.allclose(split.image, full.image, atol=1e-6) and torch.equal(split.label, full.label)


def test_corrupt_shard_is_reencoded(enc, tmp_path):
    ds = make_images(tmp_path, 6)
    first = extract_split(enc, ds, shard_dir=tmp_path / "s", batch_size=3, shard_size=3, progress=False)
    shard_path(tmp_path / "s", 3, 6).write_bytes(b"garbage")
    counting = CountingEncoder(enc)
    again = extract_split(counting, ds, shard_dir=tmp_path / "s", batch_size=3, shard_size=3, progress=False)
    assert counting.images == 3 and torch.allclose(again.image, first.image, atol=1e-6)


def test_shards_of_another_key_are_discarded(enc, tmp_path):
    ds = make_images(tmp_path, 4)
    extract_split(enc, ds, shard_dir=tmp_path / "s", shard_size=2, key={"k": 1}, progress=False)
    counting = CountingEncoder(enc)
    extract_split(counting, ds, shard_dir=tmp_path / "s", shard_size=2, key={"k": 2}, progress=False)
    assert counting.images == 4


def test_skip_drops_corrupt_image_and_records_it(enc, tmp_path):
    ds = make_images(tmp_path, 6)
    corrupt(ds.paths[2])
    split = extract_split(enc, ds, on_error="skip", shard_dir=tmp_path / "s", batch_size=4, shard_size=3,
                          progress=False)
    keep = [0, 1, 3, 4, 5]
    assert split.n == 5
    assert split.label.tolist() == [ds.labels[i] for i in keep]
    assert split.paths == [str(ds.paths[i]) for i in keep]
    assert torch.allclose(split.image, _loop_features(enc, ds.subset(keep)), atol=1e-5)
    skipped = read_skipped(tmp_path / "s")
    assert [s["path"] for s in skipped] == [str(ds.paths[2])] and skipped[0]["row"] == 2
    assert json.loads((tmp_path / "s" / "skipped.json").read_text()) == skipped
    mapped = ShardedSplit.from_dir(tmp_path / "s").load()  # the same shards read memory-mapped
    assert torch.equal(mapped.image, split.image) and torch.equal(mapped.label, split.label)


def test_fail_names_the_corrupt_path(enc, tmp_path):
    ds = make_images(tmp_path, 4)
    corrupt(ds.paths[1])
    with pytest.raises(DatasetError, match=str(ds.paths[1].name)):
        extract_split(enc, ds, on_error="fail", shard_dir=tmp_path / "s", progress=False)


def test_workers_give_the_same_features(enc, tmp_path):
    ds = make_images(tmp_path, 6)
    ref = extract_split(enc, ds, shard_dir=tmp_path / "a", batch_size=2, progress=False)
    par = extract_split(enc, ds, shard_dir=tmp_path / "b", batch_size=2, num_workers=2, progress=False)
    assert torch.allclose(ref.image, par.image, atol=1e-6)


def test_extract_text_is_class_by_template(enc):
    classnames, templates = ["cat", "dog", "bird"], ["a photo of a {}.", "a drawing of a {}."]
    text = extract_text(enc, classnames, templates)
    assert text.shape == (3, 2, enc.embed_dim)
    for c, name in enumerate(classnames):
        for t, template in enumerate(templates):
            expected = enc.encode_texts([template.replace("{}", name)])[0]
            assert torch.allclose(text[c, t], expected, atol=1e-5)
