"""The `hf:` backend (issue 16 item 1): transformers CLIP / SigLIP / SigLIP 2 models, offline, from tiny random
models saved with save_pretrained (tests/_hf_models.py)."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time

import numpy as np
import pytest
import torch
from _hf_models import CONTEXT, build
from _imagedata import make_imagefolder
from PIL import Image

from clipadapt.cli import main
from clipadapt.encoders import encoder_fingerprint, load_encoder, parse_model_id
from clipadapt.errors import ConfigError, MissingDependencyError, WeightsUnavailableError


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    return build(tmp_path_factory.mktemp("hf"))


def _reference(path, cls_name):
    import transformers

    return getattr(transformers, cls_name).from_pretrained(str(path)).eval()


def _tokens(path, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    return tok(texts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


TEXTS = ["a photo of the dog", "red cat", "a blue thing"]


@pytest.mark.parametrize("name,cls_name", [("clip", "CLIPModel"), ("siglip", "SiglipModel")])
def test_embeddings_equal_get_image_and_text_features(hf_dirs, name, cls_name):
    enc = load_encoder(f"hf:{hf_dirs[name]}", device="cpu", precision="fp32")
    ref = _reference(hf_dirs[name], cls_name)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_image = _features(ref.get_image_features(pixel_values=pixels))
        tokens = _tokens(hf_dirs[name], TEXTS)
        want_text = _features(ref.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"]))
    torch.testing.assert_close(enc.encode_images(pixels), want_image, rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.encode_texts(TEXTS), want_text, rtol=0, atol=1e-5)
    # raw embeddings, as for open_clip models (not normalised)
    assert not torch.allclose(enc.encode_texts(TEXTS).norm(dim=-1), torch.ones(3))


def test_siglip2_naflex_embeddings_equal_its_processor_and_model(hf_dirs):
    from transformers import AutoImageProcessor

    enc = load_encoder(f"hf:{hf_dirs['siglip2']}", device="cpu", precision="fp32")
    ref = _reference(hf_dirs["siglip2"], "Siglip2Model")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8))
    inputs = AutoImageProcessor.from_pretrained(str(hf_dirs["siglip2"]))(images=[image], return_tensors="pt")
    with torch.no_grad():
        want = _features(ref.get_image_features(**inputs))
    torch.testing.assert_close(enc.encode_images(enc.preprocess(image).unsqueeze(0)), want, rtol=0, atol=1e-5)
    assert enc.logit_params() == {"logit_scale": 10.0, "logit_bias": -10.0}


def test_preprocessing_is_the_models_own_processor(hf_dirs):
    """The clipadapt transform built from preprocessor_config.json gives the pixels of the model's own (PIL)
    image processor: resize of the short side, centre crop, CLIP mean/std (CLIP); squash + 0.5/0.5 (SigLIP)."""
    import transformers

    for name, family in (("clip", "CLIPImageProcessor"), ("siglip", "SiglipImageProcessor")):
        # transformers 5 names the PIL processors ...Pil; in 4 the plain class is the PIL one
        cls = getattr(transformers, f"{family}Pil", None) or getattr(transformers, family)
        enc = load_encoder(f"hf:{hf_dirs[name]}", device="cpu")
        processor = cls.from_pretrained(str(hf_dirs[name]))
        std = torch.tensor(processor.image_std).view(3, 1, 1)
        for h, w in ((40, 50), (41, 50), (77, 33), (32, 32)):  # (41, 50): an odd crop margin (floor, not round)
            image = Image.fromarray(np.random.default_rng(h).integers(0, 255, (h, w, 3)).astype(np.uint8))
            want = processor(images=image, return_tensors="pt")["pixel_values"][0]
            got = enc.preprocess(image)
            assert got.shape == want.shape == (3, 32, 32)
            assert ((got - want) * std * 255).abs().max() <= 1e-3  # the same pixels, up to float rounding


def test_logit_scale_and_bias_recorded_and_used_end_to_end(hf_dirs, tmp_path):
    root = make_imagefolder(tmp_path / "folder")
    out = tmp_path / "feats"
    model = f"hf:{hf_dirs['siglip']}"
    assert main(["extract", "--model", model, "--dataset", f"imagefolder:{root}", "--split", "test",
                 "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model"] == model and (meta["logit_scale"], meta["logit_bias"]) == (10.0, -10.0)
    assert main(["eval", "--features", str(out), "--method", "zeroshot", "--out", str(tmp_path / "r"),
                 "--save-logits", str(tmp_path / "z.npy")]) == 0
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["hyperparameters"]["logit_scale"] == 10.0 and results["hyperparameters"]["logit_bias"] == -10.0
    from safetensors.torch import load_file

    image, text = load_file(str(out / "test.safetensors"))["image"], load_file(str(out / "text.safetensors"))["text"]
    w = text / text.norm(dim=-1, keepdim=True)
    w = w.mean(1) if w.ndim == 3 else w
    w = w / w.norm(dim=-1, keepdim=True)
    want = 10.0 * (image / image.norm(dim=-1, keepdim=True)) @ w.T - 10.0
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "z.npy")), want, rtol=1e-5, atol=1e-4)


def test_local_directory_key_is_its_file_hashes(hf_dirs, tmp_path):
    copy = tmp_path / "clip-copy"
    shutil.copytree(hf_dirs["clip"], copy)
    a = encoder_fingerprint(f"hf:{copy}", device="cpu")
    assert a["weights"]["kind"] == "hf-dir" and "model.safetensors" in a["weights"]["files"]
    assert a["arch"] == "CLIPModel" and a["preprocessing"]["resize_mode"] == "shortest"
    assert encoder_fingerprint(f"hf:{hf_dirs['clip']}", device="cpu")["weights"] == a["weights"]  # content, not path
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 12345
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert encoder_fingerprint(f"hf:{copy}", device="cpu")["weights"] != a["weights"]


def _hub_cache(tmp_path, source, repo="someorg/tiny-clip", commit="0123456789abcdef0123456789abcdef01234567"):
    """An HF hub cache holding `source` as the snapshot `commit` of `repo` (the layout hf_hub_download writes)."""
    base = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(source, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return tmp_path / "hub"


def test_hub_repo_loads_from_the_cache_offline_and_keys_on_the_commit(hf_dirs, tmp_path, monkeypatch):
    cache = _hub_cache(tmp_path, hf_dirs["clip"])
    monkeypatch.setenv("CLIPADAPT_WEIGHTS_DIR", str(cache))
    monkeypatch.setenv("CLIPADAPT_OFFLINE", "1")
    enc = load_encoder("hf:someorg/tiny-clip", device="cpu")
    weights = enc.fingerprint()["weights"]
    assert weights == {"kind": "hf", "repo": "someorg/tiny-clip", "revision": None,
                       "commit": "0123456789abcdef0123456789abcdef01234567"}
    ref = load_encoder(f"hf:{hf_dirs['clip']}", device="cpu")
    torch.testing.assert_close(enc.encode_texts(TEXTS), ref.encode_texts(TEXTS), rtol=0, atol=0)


@pytest.mark.parametrize("how", ["env", "unreachable"])
def test_offline_fails_fast_naming_hf_home_and_the_directory_form(tmp_path, monkeypatch, how):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("CLIPADAPT_WEIGHTS_DIR", str(tmp_path / "empty-hf-home" / "hub"))
    if how == "env":
        monkeypatch.setenv("CLIPADAPT_OFFLINE", "1")
    else:
        for var in ("CLIPADAPT_OFFLINE", "HF_HUB_OFFLINE", "CLIPADAPT_ALLOW_DOWNLOAD"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setattr("clipadapt.encoders.weights.host_reachable", lambda *a, **k: False)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_encoder(f"hf:nobody/not-cached-{how}", device="cpu")
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "HF_HOME" in message and "hf:/path/to/dir" in message and f"nobody/not-cached-{how}" in message
    assert main(["extract", "--model", f"hf:nobody/not-cached-{how}", "--dataset", "imagefolder:/nonexistent"]) == 2


def test_without_transformers_a_named_error_says_how_to_install(hf_dirs, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'clipadapt\[hf\]'"):
        load_encoder(f"hf:{hf_dirs['clip']}", device="cpu")


def test_model_ids(tmp_path, hf_dirs):
    mid = parse_model_id("hf:openai/clip-vit-base-patch32@refs/pr/1")
    assert (mid.kind, mid.transformers, mid.revision) == ("transformers", "openai/clip-vit-base-patch32", "refs/pr/1")
    assert str(mid) == "hf:openai/clip-vit-base-patch32@refs/pr/1"
    local = parse_model_id(f"hf:{hf_dirs['clip']}")
    assert local.hf_dir == hf_dirs["clip"].resolve() and str(local) == f"hf:{hf_dirs['clip'].resolve()}"
    assert parse_model_id("hf-hub:timm/ViT-B-16-SigLIP").kind == "hf-hub"  # open_clip-format repos keep hf-hub:
    for bad, match in (("hf:", "expected hf:ORG/REPO"), ("hf:justaname", "hf:ORG/REPO"),
                       (f"hf:{tmp_path}", "no config.json")):
        with pytest.raises(ConfigError, match=match):
            parse_model_id(bad)


def test_not_a_dual_encoder_is_a_named_error(tmp_path):
    from transformers import BertConfig, BertModel, CLIPImageProcessor

    BertModel(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=8)).save_pretrained(tmp_path / "bert")
    CLIPImageProcessor().save_pretrained(tmp_path / "bert")
    from _hf_models import tokenizer

    tokenizer().save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="not a CLIP-style dual encoder.*CLIPModel, SiglipModel, Siglip2Model"):
        load_encoder(f"hf:{tmp_path / 'bert'}", device="cpu")


def test_fewshot_retrieval_and_captions_run_on_an_hf_model(hf_dirs, tmp_path):
    model = f"hf:{hf_dirs['clip']}"
    root = make_imagefolder(tmp_path / "folder", splits=("train", "val", "test"))
    assert main(["fewshot", "--model", model, "--dataset", f"imagefolder:{root}", "--shots", "1", "--seeds", "1",
                 "--methods", "zeroshot,tip", "--grid", "tip.alpha=1", "--grid", "tip.beta=1", "--device", "cpu",
                 "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "fs")]) == 0
    results = json.loads((tmp_path / "fs" / "results.json").read_text())
    init = json.loads((hf_dirs["clip"] / "config.json").read_text())["logit_scale_init_value"]  # the stored ln s
    assert results["logit"]["logit_scale"] == pytest.approx(math.exp(init), rel=1e-5)
    # retrieval and caption scoring from images + captions through the same encoder
    images = [{"filepath": "test/red", "filename": "0.png", "split": "test", "sentences": [{"raw": "a red thing"}]},
              {"filepath": "test/blue", "filename": "0.png", "split": "test", "sentences": [{"raw": "a blue thing"}]}]
    (tmp_path / "captions.json").write_text(json.dumps({"images": images}))
    emb = tmp_path / "emb"
    assert main(["retrieval", "--captions-json", str(tmp_path / "captions.json"), "--image-root", str(root),
                 "--model", model, "--device", "cpu", "--dn-source", "test", "--dn-samples", "all",
                 "--save-embeddings", str(emb), "--out", str(tmp_path / "r.json")]) == 0
    from clipadapt.features.retrieval_dir import load_retrieval_split

    enc = load_encoder(model, device="cpu")
    with Image.open(root / "test" / "blue" / "0.png") as im:
        direct = enc.encode_images(enc.preprocess(im.convert("RGB")).unsqueeze(0))[0]
    stored = load_retrieval_split(emb, "test")
    torch.testing.assert_close(stored.image[1], direct, rtol=0, atol=1e-5)
    torch.testing.assert_close(stored.text[0], enc.encode_texts(["a red thing"])[0], rtol=0, atol=1e-5)
    rows = "image,caption,human\ntest/red/0.png,a red thing,4\ntest/blue/0.png,a red thing,1\n"
    (tmp_path / "j.csv").write_text(rows)
    assert main(["captions", "--judgments", str(tmp_path / "j.csv"), "--image-root", str(root), "--model", model,
                 "--device", "cpu", "--scores-out", str(tmp_path / "s.csv")]) == 0
