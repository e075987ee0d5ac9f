"""Sharded, memory-mapped feature splits and streaming statistics equal their in-memory literal computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipadapt.errors import FeatureDirError
from clipadapt.eval.topk import chunked_topk
from clipadapt.features import FeatureSplit
from clipadapt.features.shards import (
    ShardedSplit,
    save_sharded_split,
    streaming_mean,
    streaming_pair_histograms,
    write_shard,
    write_shard_index,
)


def _split(n=23, dim=6, views=None, classes=3, seed=0) -> FeatureSplit:
    g = torch.Generator().manual_seed(seed)
    shape = (n, views, dim) if views else (n, dim)
    return FeatureSplit(image=torch.randn(*shape, generator=g), label=torch.randint(0, classes, (n,), generator=g))


@pytest.mark.parametrize("views", [None, 3])
def test_sharded_split_round_trips_row_for_row(tmp_path, views):
    split = _split(views=views)
    sharded = save_sharded_split(tmp_path, "test", split, shard_size=5)
    assert (sharded.n, sharded.dim, sharded.views, len(sharded.shards)) == (23, 6, views or 1, 5)
    loaded = ShardedSplit.open(tmp_path, "test").load()
    assert torch.equal(loaded.image, split.image) and torch.equal(loaded.label, split.label)


@pytest.mark.parametrize("chunk_rows", [1, 4, 5, 7, 100])
def test_iter_chunks_crosses_shard_boundaries_in_order(tmp_path, chunk_rows):
    split = _split()
    sharded = save_sharded_split(tmp_path, "test", split, shard_size=5)
    chunks = list(sharded.iter_chunks(chunk_rows))
    assert [c[0].shape[0] for c in chunks[:-1]] == [chunk_rows] * (len(chunks) - 1)
    assert torch.equal(torch.cat([c[0] for c in chunks]), split.image)
    assert torch.equal(torch.cat([c[1] for c in chunks]), split.label)
    assert torch.equal(sharded.read_rows(3, 12)[0], split.image[3:12])


def test_from_dir_orders_shards_by_row_range(tmp_path):
    split = _split(n=30)
    for lo in (20, 0, 10):  # written out of order
        write_shard(tmp_path, lo, split.image[lo : lo + 10], split.label[lo : lo + 10])
    assert torch.equal(ShardedSplit.from_dir(tmp_path).load().image, split.image)


def test_from_dir_refuses_a_gap_in_the_row_ranges(tmp_path):
    split = _split(n=30)
    for lo in (0, 20):
        write_shard(tmp_path, lo, split.image[lo : lo + 10])
    with pytest.raises(FeatureDirError, match=r"rows \[10, 20\)"):
        ShardedSplit.from_dir(tmp_path)


def test_index_listing_wrong_rows_is_a_readable_error(tmp_path):
    split = _split(n=10)
    paths = [write_shard(tmp_path / "s", 0, split.image[:4]), write_shard(tmp_path / "s", 4, split.image[4:])]
    index = write_shard_index(tmp_path, "test", paths)
    data = json.loads(index.read_text())
    data["shards"][1]["start"] = 5
    index.write_text(json.dumps(data))
    with pytest.raises(FeatureDirError, match="starts at row 5, expected 4"):
        ShardedSplit.open(index)


@pytest.mark.parametrize("entry", ["rows-0.safetensors", {"file": "x.safetensors", "start": 0},
                                   {"start": 0, "stop": 4}])
def test_index_with_malformed_shard_entry_is_a_readable_error(tmp_path, entry):
    split = _split(n=4)
    index = write_shard_index(tmp_path, "test", [write_shard(tmp_path / "s", 0, split.image)])
    data = json.loads(index.read_text())
    data["shards"][0] = entry
    index.write_text(json.dumps(data))
    with pytest.raises(FeatureDirError, match=r"test\.shards\.json: shards\[0\] must be"):
        ShardedSplit.open(index)


def test_mismatched_shard_dimension_names_the_file(tmp_path):
    a = write_shard(tmp_path, 0, torch.randn(3, 4))
    b = write_shard(tmp_path, 3, torch.randn(3, 5))
    with pytest.raises(FeatureDirError, match=b.name):
        ShardedSplit([a, b])


def test_streaming_mean_equals_literal_mean(tmp_path):
    split = _split(n=37, views=2)
    sharded = save_sharded_split(tmp_path, "unlabeled", split, shard_size=8)
    pooled = split.image.double().mean(1)
    literal = sum(pooled[i] for i in range(37)) / 37
    torch.testing.assert_close(streaming_mean(sharded.iter_chunks(6)), literal.float(), rtol=0, atol=1e-6)
    normed = pooled / pooled.norm(dim=1, keepdim=True)
    torch.testing.assert_close(
        streaming_mean(sharded.iter_chunks(6), normalize=True), normed.mean(0).float(), rtol=0, atol=1e-6
    )


def _literal_pair_counts(image, label, bins):
    """Double loop over i < j: cosine of the pair, its bin [e_b, e_b+1) on [-1, 1] (last bin closed)."""
    x = image.double()
    edges = np.linspace(-1, 1, bins + 1)
    same, diff = [0] * bins, [0] * bins
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            cos = float(x[i] @ x[j] / (x[i].norm() * x[j].norm()))
            b = min(max(int(np.searchsorted(edges, cos, side="right")) - 1, 0), bins - 1)
            (same if label[i] == label[j] else diff)[b] += 1
    return same, diff


def _counts(result):
    width = result.bin_edges[1:] - result.bin_edges[:-1]
    return ((result.same_hist * result.n_same * width).round().long().tolist(),
            (result.diff_hist * result.n_diff * width).round().long().tolist())


def test_streaming_pair_histograms_equal_a_double_loop(tmp_path):
    split = _split(n=29, dim=5, classes=3, seed=4)
    sharded = save_sharded_split(tmp_path, "test", split, shard_size=6)
    same, diff = _literal_pair_counts(split.image, split.label, bins=13)
    for source, rows in ((sharded, 4), (sharded, 29), (split, 7)):
        h = streaming_pair_histograms(source, bins=13, chunk_rows=rows)
        assert _counts(h) == (same, diff)
        assert h.n_same + h.n_diff == h.total_pairs == 29 * 28 // 2 and not h.sampled


def test_streaming_imo_equals_in_memory_imo_overlap_on_real_embeddings(tmp_path, coco500):
    from clipadapt.adapters import imo_overlap

    image, _ = coco500
    label = torch.arange(500) % 7
    sharded = save_sharded_split(tmp_path, "train", FeatureSplit(image, label), shard_size=120)
    streamed = streaming_pair_histograms(sharded, chunk_rows=100)
    in_memory = imo_overlap(image, label)
    assert torch.equal(streamed.same_hist, in_memory.same_hist)
    assert torch.equal(streamed.diff_hist, in_memory.diff_hist)
    assert torch.equal(streamed.bin_edges, in_memory.bin_edges)
    assert ((streamed.n_same, streamed.n_diff, streamed.total_pairs)
            == (in_memory.n_same, in_memory.n_diff, in_memory.total_pairs))
    assert streamed.overlap == pytest.approx(in_memory.overlap, abs=1e-12)
    assert streamed.same_mean == pytest.approx(in_memory.same_mean, abs=1e-6)


def test_overlap_of_identical_and_disjoint_distributions():
    # disjoint: same-class pairs at cos 1, different-class pairs at cos -1 -> overlap 0
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    disjoint = streaming_pair_histograms(FeatureSplit(image, torch.tensor([0, 0, 1, 1])), bins=10, chunk_rows=3)
    assert disjoint.overlap == 0.0
    # identical: orthonormal rows, every pair at cos 0 whatever its classes -> overlap 1
    identical = streaming_pair_histograms(FeatureSplit(torch.eye(6), torch.tensor([0, 0, 1, 1, 2, 2])), bins=10)
    assert identical.overlap == pytest.approx(1.0)


def test_retrieval_over_memory_mapped_shards_equals_in_memory(tmp_path, coco500):
    image, text = coco500
    sharded = save_sharded_split(tmp_path, "gallery", FeatureSplit(image, None), shard_size=64)
    s_mem, i_mem = chunked_topk(text[:50], image, 5, chunk_size=100)
    s_map, i_map = chunked_topk(text[:50], sharded.iter_chunks(100), 5)
    assert torch.equal(i_map, i_mem) and torch.equal(s_map, s_mem)


def test_zero_shot_logits_of_a_sharded_split_equal_the_in_memory_formula(tmp_path):
    from clipadapt.features.shards import predict_chunked
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    split = _split(n=31, dim=6, views=2)
    text = torch.randn(4, 6)
    sharded = save_sharded_split(tmp_path, "test", split, shard_size=7)
    logits = predict_chunked(ZeroShotClassifier().fit(text).predict_logits, sharded, chunk_rows=5)
    f = split.image.mean(1)
    literal = 100 * (f / f.norm(dim=1, keepdim=True)) @ (text / text.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(logits, literal, rtol=0, atol=1e-4)
