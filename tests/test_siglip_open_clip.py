"""SigLIP through open_clip (issue 16 item 2), on the tiny SigLIP-layout config `clipadapt-test-tiny-siglip`: a timm
ViT tower with attention pooling, a learned logit bias, and a Hugging Face tokenizer (shipped, so offline)."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch
from _imagedata import make_imagefolder

from clipadapt.cli import main
from clipadapt.encoders import load_encoder
from clipadapt.errors import MissingDependencyError, WeightsUnavailableError

MODEL = "clipadapt-test-tiny-siglip"


def test_tokenizer_is_the_hf_one_padded_to_the_context_length():
    enc = load_encoder(MODEL, device="cpu")
    tokens = enc.tokenizer(["a photo of the dog", "Red!"])
    # word ids of tests/_hf_models.WORDS: <bos>=1 a=4 photo=5 of=6 the=7 dog=12 <eos>=2; 'red' after canonicalize
    assert tokens.shape == (2, 16)
    assert tokens[0, :7].tolist() == [1, 4, 5, 6, 7, 12, 2] and tokens[0, 7:].eq(0).all()
    assert tokens[1, :3].tolist() == [1, 8, 2]
    assert enc.encode_texts(["a photo of the dog", "Red!"]).shape == (2, 64)


def test_siglip_logit_scale_and_bias_reach_meta_and_results(tmp_path):
    root = make_imagefolder(tmp_path / "folder")
    out = tmp_path / "feats"
    assert main(["extract", "--model", MODEL, "--dataset", f"imagefolder:{root}", "--split", "test",
                 "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["logit_scale"], meta["logit_bias"]) == (10.0, -10.0)
    assert main(["eval", "--features", str(out), "--method", "zeroshot", "--out", str(tmp_path / "r")]) == 0
    hyper = json.loads((tmp_path / "r" / "results.json").read_text())["hyperparameters"]
    assert (hyper["logit_scale"], hyper["logit_bias"]) == (10.0, -10.0)


def test_without_transformers_the_tokenizer_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'clipadapt\[hf\]'"):
        load_encoder(MODEL, device="cpu")


def test_a_tokenizer_missing_offline_fails_fast_naming_hf_home(monkeypatch, tmp_path):
    from open_clip.factory import _MODEL_CONFIGS

    from clipadapt.encoders.configs import register_model_configs

    register_model_configs()
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setitem(_MODEL_CONFIGS[MODEL]["text_cfg"], "hf_tokenizer_name", "nobody/not-a-cached-tokenizer")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="nobody/not-a-cached-tokenizer.*HF_HOME"):
        load_encoder(MODEL, device="cpu")
    assert time.monotonic() - start < 10


def test_timm_tower_embeddings_are_raw_and_batch_independent():
    enc = load_encoder(MODEL, device="cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batched = enc.encode_images(x)
    torch.testing.assert_close(batched, torch.cat([enc.encode_images(x[i:i + 1]) for i in range(3)]), rtol=0, atol=1e-5)
    assert not torch.allclose(batched.norm(dim=-1), torch.ones(3))
