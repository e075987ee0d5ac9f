"""Caption scores (CLIPScore, RefCLIPScore, DN variants) and Kendall τ against literal computations."""

import csv
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from clipadapt.cli import main
from clipadapt.errors import ConfigError
from clipadapt.eval.captions import (
    clip_score,
    dn_clip_score,
    dn_ref_clip_score,
    evaluate_caption_scores,
    kendall_tau,
    ref_clip_score,
)
from clipadapt.methods.dn import DistributionNormalizer


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _brute_tau(x, y, variant):
    n = len(x)
    p = q = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx * dy > 0:
                p += 1
            else:
                q += 1
    if variant == "b":
        return (p - q) / math.sqrt((p + q + tx) * (p + q + ty))
    m = min(len(set(x)), len(set(y)))
    return 2 * (p - q) / (n * n * (m - 1) / m)


@pytest.mark.parametrize("variant", ["b", "c"])
def test_kendall_tau_matches_literal_formula_with_ties(variant):
    x = [0.1, 0.4, 0.4, 0.9, 0.3, 0.7, 0.7, 0.2, 0.5, 0.5]
    y = [1, 2, 3, 4, 1, 4, 3, 2, 2, 4]
    assert kendall_tau(x, y, variant)["tau"] == pytest.approx(_brute_tau(x, y, variant))


def test_clip_score_and_ref_clip_score_literal():
    g = torch.Generator().manual_seed(0)
    img, cap = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    refs = torch.randn(6, 3, 5, generator=g)
    refs[2, 1:] = 0  # padding rows are ignored
    cs, rcs = clip_score(img, cap), ref_clip_score(img, cap, refs)
    for i in range(6):
        c = 2.5 * max(_cos(img[i], cap[i]), 0.0)
        r = max(max(_cos(cap[i], refs[i, k]) for k in range(3 if i != 2 else 1)), 0.0)
        h = 2 * c * r / (c + r) if c + r > 0 else 0.0
        assert float(cs[i]) == pytest.approx(c, abs=1e-5) and float(rcs[i]) == pytest.approx(h, abs=1e-5)


def test_reference_lists_of_different_lengths_equal_padded_tensor():
    g = torch.Generator().manual_seed(1)
    img, cap = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    lists = [torch.randn(n, 4, generator=g) for n in (1, 3, 2)]
    padded = torch.zeros(3, 3, 4)
    for i, r in enumerate(lists):
        padded[i, : r.shape[0]] = r
    assert torch.allclose(ref_clip_score(img, cap, lists), ref_clip_score(img, cap, padded), atol=1e-6)


def test_dn_clip_score_is_unscaled_unclamped_formula():
    g = torch.Generator().manual_seed(2)
    img, cap = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    dn = DistributionNormalizer(lam=0.25, n_samples=None, task="caption").fit(img, cap)
    mu_i = sum(v / v.norm() for v in img) / 8
    mu_t = sum(v / v.norm() for v in cap) / 8
    got = dn_clip_score(img, cap, dn)
    for i in range(8):
        expected = float(torch.dot(img[i] / img[i].norm() - 0.25 * mu_i, cap[i] / cap[i].norm() - 0.25 * mu_t))
        assert float(got[i]) == pytest.approx(expected, abs=1e-5)
    assert (got < 0).any()  # no clamp: these random pairs include negative scores
    refs = torch.randn(8, 2, 5, generator=g)
    ref_sim = torch.tensor([max(_cos(cap[i], refs[i, k]) for k in range(2)) for i in range(8)])
    assert torch.allclose(dn_ref_clip_score(img, cap, refs, dn), 0.5 * (got + ref_sim), atol=1e-5)


def test_lambda_zero_dn_score_is_cosine():
    g = torch.Generator().manual_seed(3)
    img, cap = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    dn = DistributionNormalizer(lam=0.0, n_samples=None, task="caption").fit(img, cap)
    assert torch.allclose(dn_clip_score(img, cap, dn),
                          torch.tensor([_cos(img[i], cap[i]) for i in range(5)]), atol=1e-6)


def test_evaluate_caption_scores_means_over_distinct_evaluated_rows():
    g = torch.Generator().manual_seed(4)
    images, caps = torch.randn(4, 6, generator=g), torch.randn(7, 6, generator=g)
    img_idx, cap_idx = [0, 0, 1, 2, 3, 3, 1], [0, 1, 2, 3, 4, 5, 6]  # image 0 and 3 judged twice
    human = torch.tensor([3.0, 1, 4, 2, 2, 4, 1])
    res = evaluate_caption_scores(images[img_idx], caps[cap_idx], human)
    dn = DistributionNormalizer(n_samples=None, task="caption").fit(images, caps)  # each image counted once
    assert torch.allclose(res["scores"]["DN-CLIP-S"], dn_clip_score(images[img_idx], caps[cap_idx], dn), atol=1e-6)
    x = res["scores"]["CLIP-S"].tolist()
    assert res["correlations"]["CLIP-S"]["tau_c"] == pytest.approx(_brute_tau(x, human.tolist(), "c"))


def test_mismatched_lengths_are_clear_errors():
    with pytest.raises(ConfigError, match="3 metric scores but 2 human judgments"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ConfigError, match="one image row per caption"):
        clip_score(torch.randn(3, 4), torch.randn(2, 4))


def test_captions_cli_from_embeddings_and_csv(tmp_path, coco500):
    image, caption = coco500
    save_file({"image": image[:40].clone(), "caption": caption[:80].clone(), "reference": caption[:40].clone()},
              str(tmp_path / "emb.safetensors"))
    rows = []
    for i in range(40):  # the true caption is judged good, a caption of another image bad
        rows.append({"image": i, "caption": i, "human": 4, "references": f"{(i + 1) % 40};{(i + 2) % 40}"})
        rows.append({"image": i, "caption": 40 + (i * 7) % 40, "human": 1, "references": f"{(i + 1) % 40}"})
    with open(tmp_path / "j.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption", "human", "references"])
        w.writeheader()
        w.writerows(rows)
    out, scores = tmp_path / "r.json", tmp_path / "s.csv"
    assert main(["captions", "--judgments", str(tmp_path / "j.csv"), "--embeddings", str(tmp_path / "emb.safetensors"),
                 "--out", str(out), "--scores-out", str(scores)]) == 0
    res = json.loads(out.read_text())
    assert set(res["correlations"]) == {"CLIP-S", "RefCLIP-S", "DN-CLIP-S", "DN-RefCLIP-S"}
    assert res["dn"]["transductive"] is True and "not on CLIPScore's scale" in res["dn"]["note"]
    assert res["dn"]["n_image_samples"] == 40 and res["dn"]["n_text_samples"] == 80
    with open(scores) as f:
        per_row = list(csv.DictReader(f))
    cs = [float(r["CLIP-S"]) for r in per_row]
    assert cs[0] == pytest.approx(2.5 * max(_cos(image[0], caption[0]), 0), abs=1e-5)
    assert res["correlations"]["CLIP-S"]["tau_b"] == pytest.approx(_brute_tau(cs, [r["human"] for r in rows], "b"))
    # real CLIP embeddings: the true caption outscores a random one for most images, so τ is clearly positive
    assert res["correlations"]["CLIP-S"]["tau_b"] > 0.5 and res["correlations"]["DN-CLIP-S"]["tau_b"] > 0.5


def test_captions_cli_bad_csv_is_clear_error(tmp_path, capsys):
    (tmp_path / "j.csv").write_text("img,text,score\n0,0,1\n")
    save_file({"image": torch.randn(2, 3), "caption": torch.randn(2, 3)}, str(tmp_path / "e.safetensors"))
    assert main(["captions", "--judgments", str(tmp_path / "j.csv"), "--embeddings",
                 str(tmp_path / "e.safetensors")]) == 2
    assert "missing column(s) ['image', 'caption', 'human']" in capsys.readouterr().err


def test_captions_cli_dn_pool_without_text_names_file_and_tensor(tmp_path, capsys):
    """A --dn-pool file lacking 'text' is an error naming the file and the tensor, not a bare KeyError."""
    torch.manual_seed(0)
    (tmp_path / "j.csv").write_text("image,caption,human\n0,0,1\n1,1,3\n2,2,2\n")
    save_file({"image": torch.randn(3, 4), "caption": torch.randn(3, 4)}, str(tmp_path / "e.safetensors"))
    save_file({"image": torch.randn(5, 4)}, str(tmp_path / "pool.safetensors"))
    assert main(["captions", "--judgments", str(tmp_path / "j.csv"), "--embeddings", str(tmp_path / "e.safetensors"),
                 "--dn-source", "unlabeled", "--dn-pool", str(tmp_path / "pool.safetensors")]) == 2
    assert "pool.safetensors: tensor 'text' is missing" in capsys.readouterr().err
