"""The image + caption-JSON paths of `retrieval` and `captions`, through an encoder (generated images)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import clipadapt.encoders
from clipadapt.cli import main
from clipadapt.errors import DatasetError
from clipadapt.eval.captions import clip_score
from clipadapt.eval.retrieval import evaluate_retrieval
from clipadapt.features.caption_data import read_karpathy_json
from clipadapt.features.retrieval_dir import load_retrieval_split
from clipadapt.methods.dn import DistributionNormalizer

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20),
          "black": (10, 10, 10), "white": (245, 245, 245)}


class ColorEncoder:
    """A stand-in with the encoder interface (preprocess, encode_images, encode_texts, model_id): an image's
    embedding is its mean colour, a caption's the colour it names — so true pairs match."""

    model_id = "test-color@none"
    device = torch.device("cpu")  # extraction puts batches on the encoder's device

    def preprocess(self, im):
        return torch.from_numpy(np.asarray(im.resize((4, 4)), dtype=np.float32)).reshape(-1, 3).mean(0) / 255.0

    def encode_images(self, batch):
        return torch.cat([batch, torch.ones(batch.shape[0], 1)], dim=1) * 3.0  # raw: not unit norm

    def encode_texts(self, texts):
        rows = []
        for t in texts:
            rgb = next(v for k, v in COLORS.items() if k in t)
            rows.append(torch.tensor([*(c / 255.0 for c in rgb), 1.0]) * 2.0)
        return torch.stack(rows)


@pytest.fixture
def color_encoder(monkeypatch):
    enc = ColorEncoder()
    monkeypatch.setattr(clipadapt.encoders, "load_encoder", lambda model_id, device=None: enc, raising=False)
    return enc


@pytest.fixture
def karpathy(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    images = []
    for i, (name, rgb) in enumerate(COLORS.items()):
        Image.new("RGB", (16, 16), rgb).save(root / "sub" / f"{name}.png")
        split = "test" if i < 4 else "restval"
        images.append({"filepath": "sub", "filename": f"{name}.png", "split": split,
                       "sentences": [{"raw": f"a {name} square"}, {"raw": f"something {name}"}]})
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": images}))
    return path, root


def test_read_karpathy_json_splits_and_paths(karpathy):
    path, _ = karpathy
    entries = read_karpathy_json(path, ["test"])
    assert [e["path"] for e in entries] == [f"sub/{n}.png" for n in list(COLORS)[:4]]
    assert entries[0]["captions"] == ["a red square", "something red"]
    with pytest.raises(DatasetError, match="no images in split"):
        read_karpathy_json(path, ["val"])


@pytest.mark.parametrize("image, message", [
    ("red.png", r"images\[0\] must be an object"),
    ({"filename": "red.png", "split": "test", "sentences": [{"tokens": ["red"]}]}, r"images\[0\] \(red.png\).*'raw'"),
])
def test_read_karpathy_json_malformed_entry_names_the_file(tmp_path, image, message):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"images": [image]}))
    with pytest.raises(DatasetError, match=r"captions\.json: " + message):
        read_karpathy_json(path, ["test"])


def test_retrieval_from_caption_json_through_encoder(tmp_path, karpathy, color_encoder):
    path, root = karpathy
    out, emb = tmp_path / "r.json", tmp_path / "emb"
    assert main(["retrieval", "--captions-json", str(path), "--image-root", str(root), "--model", "x",
                 "--dn-samples", "all", "--save-embeddings", str(emb), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    test = load_retrieval_split(emb, "test")
    assert test.image.shape == (4, 4) and test.text.shape == (8, 4)
    assert test.text_to_image.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # the encoder's image embedding of a solid square is 3·(rgb/255, 1)
    assert torch.allclose(test.image[0], torch.tensor([220 / 255, 20 / 255, 20 / 255, 1.0]) * 3, atol=1e-2)
    assert res["plain"]["i2t"]["R@1"] == 100.0 and res["plain"]["t2i"]["R@1"] == 100.0
    assert res["dn"]["n_image_samples_used"] == 2  # the restval pool: black, white
    assert res["plain"] == json.loads(json.dumps(evaluate_retrieval(test.image, test.text, test.text_to_image)))


def test_captions_from_images_through_encoder(tmp_path, karpathy, color_encoder):
    _, root = karpathy
    rows = [{"image": "sub/red.png", "caption": "a red square", "human": 4, "references": "red thing||a red one"},
            {"image": "sub/red.png", "caption": "a blue square", "human": 1, "references": "red thing"},
            {"image": "sub/green.png", "caption": "green", "human": 4, "references": "green grass"},
            {"image": "sub/green.png", "caption": "white", "human": 2, "references": "green grass"},
            {"image": "sub/blue.png", "caption": "yellow", "human": 1, "references": "blue sky"}]
    with open(tmp_path / "j.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out, scores = tmp_path / "r.json", tmp_path / "s.csv"
    assert main(["captions", "--judgments", str(tmp_path / "j.csv"), "--image-root", str(root), "--model", "x",
                 "--out", str(out), "--scores-out", str(scores)]) == 0
    enc = color_encoder
    with open(scores) as f:
        got = [float(r["CLIP-S"]) for r in csv.DictReader(f)]
    for i, r in enumerate(rows):
        with Image.open(root / r["image"]) as im:
            img = enc.encode_images(enc.preprocess(im.convert("RGB")).unsqueeze(0))
        expected = float(clip_score(img, enc.encode_texts([r["caption"]]))[0])
        assert got[i] == pytest.approx(expected, abs=1e-5)
    res = json.loads(out.read_text())
    assert res["n"] == 5 and res["dn"]["n_image_samples"] == 3  # means over the 3 distinct judged images


def test_retrieval_and_captions_with_tiny_open_clip_model(tmp_path, karpathy):
    """The real encoder (random-init tiny ViT): stored embeddings equal direct encoding; recall follows from them."""
    from clipadapt.encoders import load_encoder

    path, root = karpathy
    emb, out = tmp_path / "emb", tmp_path / "r.json"
    assert main(["retrieval", "--captions-json", str(path), "--image-root", str(root), "--model",
                 "clipadapt-test-tiny-vit",
                 "--device", "cpu", "--dn-source", "test", "--dn-samples", "all", "--save-embeddings", str(emb),
                 "--out", str(out)]) == 0
    enc = load_encoder("clipadapt-test-tiny-vit", device="cpu")
    test = load_retrieval_split(emb, "test")
    with Image.open(root / "sub" / "green.png") as im:
        direct = enc.encode_images(enc.preprocess(im.convert("RGB")).unsqueeze(0))[0]
    assert torch.allclose(test.image[1], direct, atol=1e-4)
    assert torch.allclose(test.text[0], enc.encode_texts(["a red square"])[0], atol=1e-4)
    res = json.loads(out.read_text())
    dn = DistributionNormalizer(n_samples=None, task="retrieval").fit(test.image, test.text)
    lib = evaluate_retrieval(test.image, test.text, test.text_to_image, normalizer=dn)
    assert res["dn"]["mean"]["t2i R@1"] == pytest.approx(lib["t2i"]["R@1"]) and res["dn"]["transductive"] is True


def test_captions_with_tiny_open_clip_model(tmp_path, karpathy):
    """Caption scores from images through the real (random-init tiny ViT) encoder equal direct encoding."""
    from clipadapt.encoders import load_encoder

    _, root = karpathy
    rows = [("sub/red.png", "a red square", 4), ("sub/green.png", "a red square", 1), ("sub/blue.png", "blue", 3)]
    (tmp_path / "j.csv").write_text("image,caption,human\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    scores = tmp_path / "s.csv"
    assert main(["captions", "--judgments", str(tmp_path / "j.csv"), "--image-root", str(root), "--model",
                 "clipadapt-test-tiny-vit", "--device", "cpu", "--scores-out", str(scores)]) == 0
    enc = load_encoder("clipadapt-test-tiny-vit", device="cpu")
    with open(scores) as f:
        got = list(csv.DictReader(f))
    images = {}
    for image, _, _ in rows:
        with Image.open(root / image) as im:
            images[image] = enc.encode_images(enc.preprocess(im.convert("RGB")).unsqueeze(0))[0]
    texts = {c: enc.encode_texts([c])[0] for c in ("a red square", "blue")}
    # DN means over the distinct judged images (3) and candidate captions (2), written out
    mu_i = sum(v / v.norm() for v in images.values()) / 3
    mu_t = sum(t / t.norm() for t in texts.values()) / 2
    for (image, caption, _), row in zip(rows, got):
        v, t = images[image], texts[caption]
        assert float(row["CLIP-S"]) == pytest.approx(2.5 * max(float(v @ t / (v.norm() * t.norm())), 0.0), abs=1e-4)
        dn = float((v / v.norm() - 0.25 * mu_i) @ (t / t.norm() - 0.25 * mu_t))
        assert float(row["DN-CLIP-S"]) == pytest.approx(dn, abs=1e-4)


# ----------------------------------------------------------------------------------------- unreadable images
def _break(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n not a png")


def test_retrieval_unreadable_image_fails_by_default_naming_it(tmp_path, karpathy, color_encoder, capsys):
    path, root = karpathy
    _break(root / "sub" / "green.png")
    assert main(["retrieval", "--captions-json", str(path), "--image-root", str(root), "--model", "x",
                 "--dn-source", "test"]) == 2
    assert "green.png" in capsys.readouterr().err


def test_retrieval_skip_drops_the_image_with_its_captions(tmp_path, karpathy, color_encoder):
    path, root = karpathy
    _break(root / "sub" / "green.png")
    emb, out = tmp_path / "emb", tmp_path / "r.json"
    assert main(["retrieval", "--captions-json", str(path), "--image-root", str(root), "--model", "x", "--on-error",
                 "skip", "--dn-source", "test", "--dn-samples", "all", "--save-embeddings", str(emb),
                 "--out", str(out)]) == 0
    test = load_retrieval_split(emb, "test")
    kept = ["red", "blue", "yellow"]  # test split minus green
    expected = torch.stack([torch.tensor([*(c / 255 for c in COLORS[k]), 1.0]) * 3 for k in kept])
    assert torch.allclose(test.image, expected, atol=1e-2)
    assert test.text_to_image.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.allclose(test.text[2], color_encoder.encode_texts(["a blue square"])[0])
    res = json.loads(out.read_text())
    assert res["n_images"] == 3 and res["n_captions"] == 6
    assert [(s["row"], s["path"].endswith("green.png")) for s in res["meta"]["skipped"]] == [(1, True)]


def test_captions_skip_drops_the_judgments_of_unreadable_images(tmp_path, karpathy, color_encoder, capsys):
    _, root = karpathy
    _break(root / "sub" / "green.png")
    rows = [("sub/red.png", "a red square", 4), ("sub/green.png", "green", 4), ("sub/blue.png", "a red thing", 1),
            ("sub/green.png", "white", 2), ("sub/blue.png", "blue", 3)]
    (tmp_path / "j.csv").write_text("image,caption,human\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    args = ["captions", "--judgments", str(tmp_path / "j.csv"), "--image-root", str(root), "--model", "x"]
    assert main(args) == 2 and "green.png" in capsys.readouterr().err  # default: fail naming the file
    out, scores = tmp_path / "r.json", tmp_path / "s.csv"
    assert main(args + ["--on-error", "skip", "--out", str(out), "--scores-out", str(scores)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 3 and [s["path"].endswith("green.png") for s in res["skipped_images"]] == [True]
    with open(scores) as f:
        got = list(csv.DictReader(f))
    assert [(r["image"], r["caption"]) for r in got] == [(a, b) for a, b, _ in rows if "green" not in a]
    enc = color_encoder
    for r in got:
        with Image.open(root / r["image"]) as im:
            img = enc.encode_images(enc.preprocess(im.convert("RGB")).unsqueeze(0))
        assert float(r["CLIP-S"]) == pytest.approx(float(clip_score(img, enc.encode_texts([r["caption"]]))[0]),
                                                   abs=1e-5)


def test_saved_embeddings_keep_each_splits_skipped_images_and_the_dataset(tmp_path, karpathy, color_encoder):
    """--save-embeddings writes the test split and the pool into one directory: the pool's save must not replace
    the test split's skipped list (nor drop 'dataset'), so a later --embeddings run reports the test's own."""
    path, root = karpathy
    _break(root / "sub" / "green.png")  # test row 1
    _break(root / "sub" / "white.png")  # restval (pool) row 1
    emb = tmp_path / "emb"
    assert main(["retrieval", "--captions-json", str(path), "--image-root", str(root), "--model", "x", "--on-error",
                 "skip", "--dn-source", "unlabeled", "--pool-split", "restval", "--dn-samples", "all",
                 "--save-embeddings", str(emb)]) == 0
    test, pool = load_retrieval_split(emb, "test"), load_retrieval_split(emb, "unlabeled")
    assert [(s["row"], s["path"].endswith("green.png")) for s in test.meta["skipped"]] == [(1, True)]
    assert [(s["row"], s["path"].endswith("white.png")) for s in pool.meta["skipped"]] == [(1, True)]
    assert test.meta["dataset"] == str(path) and test.meta["model"] == ColorEncoder.model_id
    out = tmp_path / "again.json"
    assert main(["retrieval", "--embeddings", str(emb), "--dn-source", "unlabeled", "--dn-samples", "all",
                 "--out", str(out)]) == 0
    assert [s["path"].endswith("green.png") for s in json.loads(out.read_text())["meta"]["skipped"]] == [True]
