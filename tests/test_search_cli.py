"""`clipadapt search` on real coco500 embeddings: sharded and single-file galleries give the full-matrix top-k."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from clipadapt.cli import main
from clipadapt.features import FeatureSplit
from clipadapt.features.shards import save_sharded_split
from clipadapt.ops import l2_normalize


@pytest.fixture
def coco_dir(tmp_path, coco500):
    """Feature directory: captions as the 'text' rows, images as split 'test' (a file) and 'unlabeled' (shards)."""
    image, text = coco500
    d = tmp_path / "coco"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"classnames": [f"caption {i}" for i in range(500)]}))
    save_file({"text": text.contiguous()}, str(d / "text.safetensors"))
    save_file({"image": image.contiguous(), "label": torch.arange(500)}, str(d / "test.safetensors"))
    save_sharded_split(d, "unlabeled", FeatureSplit(image, None), shard_size=96)
    return d


@pytest.mark.parametrize("split,backend", [("test", "torch"), ("unlabeled", "torch"), ("unlabeled", "faiss")])
def test_search_cli_equals_full_matrix_topk(tmp_path, coco_dir, coco500, split, backend):
    image, text = coco500
    out, topk = tmp_path / "r.json", tmp_path / "topk.npz"
    code = main(["search", "--queries", f"{coco_dir}:text", "--gallery", f"{coco_dir}:{split}", "--k", "5",
                 "--chunk-size", "64", "--backend", backend, "--paired", "--out", str(out), "--save-topk", str(topk)])
    assert code == 0
    full = (l2_normalize(text) @ l2_normalize(image).T).topk(5, dim=1)
    saved = np.load(topk)
    assert np.array_equal(saved["indices"], full.indices.numpy())
    np.testing.assert_allclose(saved["scores"], full.values.numpy(), atol=1e-5, rtol=0)
    results = json.loads(out.read_text())
    literal_r1 = 100.0 * float((full.indices[:, 0] == torch.arange(500)).float().mean())
    assert results["recall"]["R@1"] == pytest.approx(literal_r1)
    assert 46 <= results["recall"]["R@1"] <= 56  # data README: text->image R@1 ≈ 51 %
    assert (results["n_queries"], results["n_gallery"], results["backend"]) == (500, 500, backend)


def test_search_cli_missing_split_names_the_file(coco_dir, capsys):
    assert main(["search", "--queries", f"{coco_dir}:text", "--gallery", f"{coco_dir}:val"]) == 2
    assert "val.safetensors" in capsys.readouterr().err


def test_search_cli_save_topk_writes_the_path_it_names(tmp_path, coco_dir, capsys):
    """--save-topk FILE writes FILE itself (np.savez on a path appends '.npz'), whole, and says so."""
    topk = tmp_path / "out" / "neighbours"
    assert main(["search", "--queries", f"{coco_dir}:text", "--gallery", f"{coco_dir}:test", "--k", "3",
                 "--save-topk", str(topk)]) == 0
    assert f"wrote {topk}" in capsys.readouterr().out
    assert [p.name for p in topk.parent.iterdir()] == ["neighbours"]
    assert np.load(topk)["indices"].shape == (500, 3)
