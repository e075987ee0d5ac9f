"""Readers of the original Flickr8k-Expert / -CF / Pascal-50S files, and Pascal-50S pairwise accuracy."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from _caption_files import pascal_files as _pascal_files

from clipadapt.cli import main
from clipadapt.data.caption_judgments import read_flickr8k_cf, read_flickr8k_expert, read_pascal50s
from clipadapt.errors import DatasetError
from clipadapt.eval.pascal50s import pairwise_accuracy, pascal50s_accuracy

TOKENS = "a.jpg#0\tA dog runs.\na.jpg#1\tA brown dog.\nb.jpg#0\tA cat sleeps.\nb.jpg#1\tA cat on a bed.\n"


def test_flickr8k_expert_gives_one_row_per_expert_score_with_the_images_other_captions(tmp_path):
    (tmp_path / "tok.txt").write_text(TOKENS)
    (tmp_path / "exp.txt").write_text("a.jpg\ta.jpg#1\t4\t3\t4\na.jpg\tb.jpg#0\t1\t1\t2\n")
    rows = read_flickr8k_expert(tmp_path / "exp.txt", tmp_path / "tok.txt")
    assert [r["human"] for r in rows] == [4, 3, 4, 1, 1, 2]
    assert rows[0]["caption"] == "A brown dog." and rows[0]["references"] == "A dog runs."
    assert rows[3]["caption"] == "A cat sleeps." and rows[3]["references"] == "A dog runs.||A brown dog."
    assert main(["caption-data", "flickr8k-expert", "--annotations", str(tmp_path / "exp.txt"), "--tokens",
                 str(tmp_path / "tok.txt"), "--out", str(tmp_path / "j.csv")]) == 0
    written = list(csv.DictReader(open(tmp_path / "j.csv", encoding="utf-8")))
    assert ([float(r["human"]) for r in written] == [4, 3, 4, 1, 1, 2]
            and list(written[0]) == ["image", "caption", "human", "references"])


def test_flickr8k_cf_human_is_the_yes_fraction_and_unknown_ids_are_named(tmp_path):
    (tmp_path / "tok.txt").write_text(TOKENS)
    (tmp_path / "cf.txt").write_text("b.jpg\tb.jpg#1\t0.667\t2\t1\n")
    (row,) = read_flickr8k_cf(tmp_path / "cf.txt", tmp_path / "tok.txt")
    assert (row["caption"], row["human"], row["references"]) == ("A cat on a bed.", 0.667, "A cat sleeps.")
    (tmp_path / "bad.txt").write_text("b.jpg\tz.jpg#9\t0.5\t1\t1\n")
    with pytest.raises(DatasetError, match=r"bad.txt: line 1: caption id z.jpg#9"):
        read_flickr8k_cf(tmp_path / "bad.txt", tmp_path / "tok.txt")


def test_pascal50s_reader_takes_the_vote_majority_and_the_category(tmp_path):
    pairs = [("x.jpg", "cand one", "cand two", 1), ("y.jpg", "cand three", "cand four", 4)]
    votes = [[1] * 30 + [-1] * 18, [1] * 24 + [-1] * 24]
    files = _pascal_files(tmp_path, pairs, votes, [["r1", "r2"], ["r3"]])
    rows = read_pascal50s(*files)
    assert [(r["image"], r["a"], r["b"], r["category"], r["winner"]) for r in rows] == [
        ("x.jpg", "cand one", "cand two", "HC", "a"), ("y.jpg", "cand three", "cand four", "MM", "tie")]
    assert rows[0]["references"] == ["r1", "r2"] and (rows[0]["votes_a"], rows[0]["votes_b"]) == (30, 18)
    assert read_pascal50s(*files, positive_is_a=False)[0]["winner"] == "b"


def test_pairwise_accuracy_by_category_against_a_literal_count():
    a, b = [0.9, 0.1, 0.5, 0.3, 0.7], [0.2, 0.4, 0.5, 0.6, 0.1]
    winner, category = ["a", "a", "b", "b", "tie"], ["HC", "HC", "HI", "MM", "MM"]
    out = pairwise_accuracy(a, b, winner, category)
    assert out["HC"] == 50.0 and out["HI"] == 50.0 and out["MM"] == 100.0 and out["HM"] is None  # 0.5 = score tie
    assert out["mean"] == pytest.approx((50 + 50 + 100) / 3) and (out["n"], out["n_tied_votes"]) == (4, 1)


def test_pascal50s_clip_s_accuracy_is_the_cosine_comparison():
    g = torch.Generator().manual_seed(0)
    image, ca, cb = (torch.randn(12, 8, generator=g) for _ in range(3))
    winner = ["a", "b"] * 6
    category = ["HC", "HI", "HM", "MM"] * 3
    refs = [torch.randn(2, 8, generator=g) for _ in range(12)]
    out = pascal50s_accuracy(image, ca, cb, refs, winner, category)
    cos = lambda u, v: torch.nn.functional.cosine_similarity(u, v, dim=1).clamp_min(0)  # noqa: E731
    literal = pairwise_accuracy(cos(image, ca), cos(image, cb), winner, category)
    assert out["accuracy"]["CLIP-S"] == literal
    assert set(out["accuracy"]) == {"CLIP-S", "DN-CLIP-S", "RefCLIP-S", "DN-RefCLIP-S"}


def test_pascal50s_command_encodes_the_pairs_with_the_tiny_model(tmp_path):
    from tests._imagedata import make_images

    ds = make_images(tmp_path / "img", n=4)
    pairs = [(p.name, f"caption {i}", f"other {i}", 1 + i % 4) for i, p in enumerate(ds.paths)]
    votes = [[1] * 40 + [-1] * 8 if i % 2 else [-1] * 40 + [1] * 8 for i in range(4)]
    files = _pascal_files(tmp_path, pairs, votes, [["a ref", "b ref", "c ref"]] * 4)
    out = tmp_path / "p"
    assert main(["pascal50s", "--pairs", str(files[0]), "--consensus", str(files[1]), "--image-root",
                 str(ds.paths[0].parent), "--model", "clipadapt-test-tiny-vit", "--references", "2", "--out",
                 str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["n_pairs"] == 4 and res["accuracy"]["CLIP-S"]["n"] == 4
    assert set(res["accuracy"]) == {"CLIP-S", "DN-CLIP-S", "RefCLIP-S", "DN-RefCLIP-S"}
