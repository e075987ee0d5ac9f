"""Chunked running top-k equals the full-matrix top-k; recall@k and ranks equal literal loops; faiss matches."""

from __future__ import annotations

import sys

import pytest
import torch

from clipadapt.errors import ConfigError
from clipadapt.eval.topk import chunked_ranks, chunked_recall_at_k, chunked_topk
from clipadapt.ops import l2_normalize


def _full_stable_topk(q, g, k):
    """Reference: the whole (Q, M) matrix, stable descending sort (ties: lower index first)."""
    s = q @ g.T
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    return s.gather(1, order), order


@pytest.mark.parametrize("chunk_size,query_chunk_size,k", [(7, None, 5), (3, 4, 10), (64, 2, 1), (1, None, 3)])
def test_chunked_topk_equals_full_matrix_topk(chunk_size, query_chunk_size, k):
    torch.manual_seed(0)
    q, g = l2_normalize(torch.randn(11, 16)), l2_normalize(torch.randn(50, 16))
    scores, index = chunked_topk(q, g, k, chunk_size=chunk_size, query_chunk_size=query_chunk_size)
    full = (q @ g.T).topk(k, dim=1)
    assert torch.equal(index, full.indices)  # random floats: no ties, so torch.topk's order is unique
    torch.testing.assert_close(scores, full.values, rtol=0, atol=1e-6)


def test_ties_break_by_lower_gallery_index_and_k_larger_than_chunk():
    # integer-valued vectors: exact arithmetic, many tied scores; k=9 spans three chunks of 4
    torch.manual_seed(1)
    q = torch.randint(-2, 3, (6, 4)).float()
    g = torch.randint(-1, 2, (30, 4)).float()
    scores, index = chunked_topk(q, g, 9, chunk_size=4)
    ref_scores, ref_index = _full_stable_topk(q, g, 9)
    assert torch.equal(scores, ref_scores)
    assert torch.equal(index, ref_index)
    assert torch.equal(scores, (q @ g.T).topk(9, dim=1).values)
    # literal check of the tie rule on one row: equal scores appear with increasing gallery index
    for i in range(q.shape[0]):
        for j in range(8):
            if scores[i, j] == scores[i, j + 1]:
                assert index[i, j] < index[i, j + 1]


@pytest.mark.parametrize("k,chunk_size,query_chunk_size", [(3, 10, None), (1, 7, 2), (12, 5, 3), (25, 25, None)])
def test_ties_at_the_kth_value_inside_a_chunk_pick_the_lowest_indices(k, chunk_size, query_chunk_size):
    torch.manual_seed(7)
    q = torch.randint(-1, 2, (9, 3)).float()
    g = torch.randint(-1, 2, (41, 3)).float()  # 27 distinct vectors over 41 rows: heavy ties everywhere
    scores, index = chunked_topk(q, g, k, chunk_size=chunk_size, query_chunk_size=query_chunk_size)
    ref_scores, ref_index = _full_stable_topk(q, g, k)
    assert torch.equal(index, ref_index) and torch.equal(scores, ref_scores)


def test_all_equal_scores_give_the_first_k_rows():
    q, g = torch.ones(3, 5), torch.ones(20, 5)
    scores, index = chunked_topk(q, g, 6, chunk_size=4)
    assert torch.equal(index, torch.arange(6).expand(3, 6))
    assert torch.equal(scores, torch.full((3, 6), 5.0))


def test_iterator_of_chunks_and_label_pairs_equal_tensor_gallery():
    torch.manual_seed(2)
    q, g = torch.randn(5, 8), torch.randn(40, 8)
    chunks = (g[s : s + 6] for s in range(0, 40, 6))
    pairs = ((g[s : s + 13], torch.zeros(13)) for s in range(0, 40, 13))
    ref = chunked_topk(q, g, 4, chunk_size=40)
    for gallery in (chunks, pairs):
        scores, index = chunked_topk(q, gallery, 4)
        assert torch.equal(index, ref[1])
        torch.testing.assert_close(scores, ref[0], rtol=0, atol=1e-6)


def test_bad_arguments_raise_readable_errors():
    q, g = torch.randn(2, 8), torch.randn(5, 8)
    with pytest.raises(ConfigError, match="larger than the gallery"):
        chunked_topk(q, g, 6)
    with pytest.raises(ConfigError, match="D=4"):
        chunked_topk(q, torch.randn(5, 4), 1)
    with pytest.raises(ConfigError, match="unknown top-k backend"):
        chunked_topk(q, g, 1, backend="annoy")
    with pytest.raises(ConfigError, match="pool views"):
        chunked_topk(q, torch.randn(5, 2, 8), 1)


def test_recall_at_k_equals_a_literal_loop():
    torch.manual_seed(3)
    q, g = torch.randn(20, 8), torch.randn(60, 8)
    gt = [[i, (i * 7) % 60] if i % 2 else [i] for i in range(20)]  # one or two correct rows per query
    recall = chunked_recall_at_k(q, g, gt, ks=(1, 5, 10), chunk_size=9)
    s = q @ g.T
    for k in (1, 5, 10):
        hits = 0
        for i in range(20):
            ranked = sorted(range(60), key=lambda m: -s[i, m].item())[:k]
            hits += any(m in gt[i] for m in ranked)
        assert recall[f"R@{k}"] == pytest.approx(100.0 * hits / 20)


def test_recall_on_real_coco500_matches_the_data_readme(coco500):
    image, text = coco500
    gt = torch.arange(500)
    i2t = chunked_recall_at_k(image, text, gt, ks=(1,), chunk_size=128)["R@1"]
    t2i = chunked_recall_at_k(text, image, gt, ks=(1,), chunk_size=128)["R@1"]
    assert 50 <= i2t <= 60 and 46 <= t2i <= 56  # README: ≈55 % and ≈51 %


def test_ranks_equal_a_literal_count():
    torch.manual_seed(4)
    q = torch.randint(-2, 3, (10, 4)).float()
    g = torch.randint(-1, 2, (25, 4)).float()  # ties
    gt = [[i, 24 - i] for i in range(10)]
    ranks = chunked_ranks(q, g, gt, chunk_size=4)
    s = q @ g.T
    for i in range(10):
        order = sorted(range(25), key=lambda m: (-s[i, m].item(), m))
        assert ranks[i].item() == min(order.index(j) for j in gt[i])
    # the same from a re-iterable list of chunks
    assert torch.equal(chunked_ranks(q, [g[:10], g[10:]], gt), ranks)


def test_ranks_refuse_a_one_shot_iterator():
    g = torch.randn(6, 3)
    with pytest.raises(ConfigError, match="re-iterable"):
        chunked_ranks(torch.randn(2, 3), iter([g]), torch.tensor([0, 1]))


def test_faiss_flat_index_equals_torch_path():
    torch.manual_seed(5)
    q, g = l2_normalize(torch.randn(30, 32)), l2_normalize(torch.randn(300, 32))
    ref_s, ref_i = chunked_topk(q, g, 10, chunk_size=64)
    s, i = chunked_topk(q, g, 10, chunk_size=64, backend="faiss")
    assert torch.equal(i, ref_i)
    torch.testing.assert_close(s, ref_s, rtol=0, atol=1e-5)
    recall = chunked_recall_at_k(q, g, torch.arange(30), ks=(1, 10), backend="faiss")
    assert recall == chunked_recall_at_k(q, g, torch.arange(30), ks=(1, 10))


def test_missing_faiss_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ConfigError, match="pip install"):
        chunked_topk(torch.randn(2, 4), torch.randn(5, 4), 1, backend="faiss")


def test_chunked_cache_affinity_equals_the_tip_adapter_formula():
    from clipadapt.eval.topk import chunked_cache_affinity

    torch.manual_seed(6)
    f, keys = l2_normalize(torch.randn(7, 8)), l2_normalize(torch.randn(23, 8))
    values = torch.nn.functional.one_hot(torch.randint(0, 4, (23,)), 4).float()
    literal = torch.zeros(7, 4)
    for i in range(7):
        for j in range(23):
            literal[i] += torch.exp(-2.0 * (1 - f[i] @ keys[j])) * values[j]
    torch.testing.assert_close(chunked_cache_affinity(f, keys, values, beta=2.0, chunk_size=5), literal)
    chunks = [(keys[:10], None), (keys[10:], None)]
    torch.testing.assert_close(chunked_cache_affinity(f, chunks, [values[:10], values[10:]], beta=2.0), literal)
