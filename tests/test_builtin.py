"""`builtin:coco500`: the packaged real embeddings, read wherever a feature or retrieval directory is accepted."""

from __future__ import annotations

import csv
import fnmatch
import json
import tomllib

import pytest
import torch
from conftest import PROJECT_ROOT

from clipadapt.cli import main
from clipadapt.eval.retrieval import evaluate_retrieval
from clipadapt.builtin import BUILTIN_ROOT, BUILTINS, HOLDOUT, builtin_dir, load_pairs
from clipadapt.features.io import load_feature_dir, load_tensors
from clipadapt.features.retrieval_dir import load_retrieval_split
from clipadapt.methods.dn import DistributionNormalizer


def _literal_i2t_r1(image, text):
    """Image i's own caption is row i: the share of images whose best-scoring caption (cosine) is their own."""
    hits = 0
    captions = [t / t.norm() for t in text]
    for i in range(image.shape[0]):
        f = image[i] / image[i].norm()
        scores = torch.stack([f @ c for c in captions])
        hits += int(int(scores.argmax()) == i)
    return 100.0 * hits / image.shape[0]


@pytest.fixture(scope="module")
def literal_r1(coco500) -> float:
    image, caption = coco500
    return _literal_i2t_r1(image[HOLDOUT:], caption[HOLDOUT:])


def test_each_builtin_is_a_feature_dir_and_a_retrieval_dir_of_the_same_pairs(coco500):
    image, caption = coco500
    assert image.shape == caption.shape == (500, 512) and image.dtype == torch.float32
    fs = load_feature_dir("builtin:coco500")
    assert fs.num_classes == 400 and set(fs.splits) == {"test", "unlabeled"}
    assert torch.equal(fs.split("test").image, image[HOLDOUT:]) and torch.equal(fs.split("unlabeled").image, image[:HOLDOUT])
    assert torch.equal(fs.text, caption[HOLDOUT:]) and torch.equal(fs.split("test").label, torch.arange(400))
    rs = load_retrieval_split("builtin:coco500", "test")
    assert torch.equal(rs.text, caption[HOLDOUT:]) and torch.equal(rs.text_to_image, torch.arange(400))
    assert "classnames" not in rs.meta and rs.meta["model"] == "ViT-B-16@openai"
    pool = load_retrieval_split("builtin:coco500", "unlabeled")
    assert torch.equal(pool.image, image[:HOLDOUT]) and torch.equal(pool.text, caption[:HOLDOUT])
    # rows are unit vectors (the data README): a check that the values are the real ones, not a re-scaled copy
    assert torch.allclose(image.norm(dim=1), torch.ones(500), atol=1e-3)


def test_random_control_is_stored_in_float16_and_read_as_float32(coco500_random_init):
    image, caption = coco500_random_init
    assert image.dtype == torch.float32 and image.shape == (500, 512)
    assert load_tensors(builtin_dir("coco500-random") / "test.safetensors")["image"].dtype == torch.float16


def test_unknown_builtin_names_the_available_ones(capsys):
    assert main(["eval", "--features", "builtin:nope"]) == 2
    err = capsys.readouterr().err
    assert "builtin:nope" in err and "builtin:coco500" in err


def test_retrieval_cli_on_builtin_equals_literal_recall_and_library_dn(tmp_path, coco500, literal_r1, capsys):
    image, caption = coco500
    out = tmp_path / "r" / "results.json"
    assert main(["retrieval", "--features", "builtin:coco500", "--out", str(out.parent)]) == 0
    printed = capsys.readouterr().out
    assert "| CLIP |" in printed and "| DN (λ=0.25) |" in printed
    res = json.loads(out.read_text())
    assert res["n_images"] == 400 and res["dn"]["source"] == "unlabeled" and res["dn"]["transductive"] is False
    assert res["plain"]["i2t"]["R@1"] == pytest.approx(literal_r1)
    dn = DistributionNormalizer(lam=0.25, n_samples=None, task="retrieval").fit(image[:HOLDOUT], caption[:HOLDOUT])
    lib = evaluate_retrieval(image[HOLDOUT:], caption[HOLDOUT:], torch.arange(400), normalizer=dn)
    assert res["dn"]["mean"]["i2t R@1"] == pytest.approx(lib["i2t"]["R@1"])
    assert res["dn"]["mean"]["t2i R@1"] == pytest.approx(lib["t2i"]["R@1"])


def test_eval_zeroshot_on_builtin_is_image_to_text_recall(tmp_path, literal_r1):
    out = tmp_path / "r" / "results.json"
    assert main(["eval", "--features", "builtin:coco500", "--out", str(out.parent)]) == 0
    assert json.loads(out.read_text())["top1"] == pytest.approx(literal_r1)
    assert main(["eval", "--features", "builtin:coco500", "--method", "dn", "--out", str(out.parent), "--overwrite"]) == 0
    res = json.loads(out.read_text())
    assert res["dn"]["source"] == "unlabeled" and res["dn"]["n_image_samples_used"] == HOLDOUT


def test_search_and_dn_sweep_accept_builtin(tmp_path, literal_r1):
    assert main(["search", "--queries", "builtin:coco500:test", "--gallery", "builtin:coco500:text", "--k", "5",
                 "--paired", "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "results.json").read_text())["recall"]["R@1"] == pytest.approx(literal_r1)
    assert main(["dn-sweep", "--embeddings", "builtin:coco500", "--out", str(tmp_path / "sw"), "--seeds", "1",
                 "--lambdas", "0,0.25", "--samples", "100"]) == 0
    sweep = json.loads((tmp_path / "sw" / "results.json").read_text())
    assert sweep["pool_size"] == HOLDOUT and sweep["transductive"] is False


def test_captions_accepts_builtin_rows(tmp_path, coco500):
    with open(tmp_path / "j.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption", "human"])
        w.writeheader()
        for i in range(30):  # the true caption judged good, another image's caption bad
            w.writerow({"image": i, "caption": i, "human": 4})
            w.writerow({"image": i, "caption": (i + 7) % 30, "human": 1})
    out = tmp_path / "c" / "results.json"
    assert main(["captions", "--judgments", str(tmp_path / "j.csv"), "--embeddings", "builtin:coco500", "--out", str(out.parent)]) == 0
    assert json.loads(out.read_text())["correlations"]["CLIP-S"]["tau_b"] > 0.5


def test_datasets_lists_the_builtins(capsys):
    assert main(["datasets", "--kind", "builtin"]) == 0
    printed = capsys.readouterr().out
    assert all(f"builtin:{name}" in printed for name in BUILTINS)


def test_package_data_patterns_ship_every_builtin_file():
    """A non-editable install carries only what pyproject's package-data names: every data file must match."""
    patterns = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["clipadapt"]
    package = PROJECT_ROOT / "src" / "clipadapt"
    files = [p.relative_to(package).as_posix() for p in BUILTIN_ROOT.rglob("*") if p.is_file()]
    assert {"builtin_data/LICENSE", "builtin_data/README.md"} <= set(files)
    assert len(files) == 2 + 4 * len(BUILTINS)
    unshipped = [f for f in files if not any(fnmatch.fnmatch(f, pat) for pat in patterns)]
    assert unshipped == []


def test_load_pairs_matches_the_documented_order(coco500):
    """Row i of image and caption is pair i; the first HOLDOUT pairs are the unlabeled split."""
    image, caption = load_pairs("coco500")
    test = load_tensors(builtin_dir("coco500") / "test.safetensors")
    assert torch.equal(image[HOLDOUT:], test["image"]) and torch.equal(caption[HOLDOUT:], test["text"])
