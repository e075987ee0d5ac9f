"""Encoders: model ids, raw batched encoding on both tiny architectures, fingerprints, local checkpoints,
weights found in the hub cache, offline fail-fast, the seeded view augmentation."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save

from clipadapt.encoders import encoder_fingerprint, load_encoder, parse_model_id
from clipadapt.encoders import weights as weights_mod
from clipadapt.encoders.configs import TEST_MODELS
from clipadapt.errors import ConfigError, WeightsUnavailableError


@pytest.fixture(scope="module", params=TEST_MODELS)
def enc(request):
    return load_encoder(request.param, device="cpu")


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_encode_images_is_raw_float32_cpu(enc):
    out = enc.encode_images(_images(4))
    assert out.shape == (4, enc.embed_dim) and out.dtype == torch.float32 and out.device.type == "cpu"
    norms = out.norm(dim=-1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)  # stored raw, not L2-normalised


def test_batched_equals_one_by_one(enc):
    x = _images(5, seed=1)
    batched = enc.encode_images(x)
    single = torch.cat([enc.encode_images(x[i:i + 1]) for i in range(5)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_encode_texts_chunks_equal_single_pass(enc):
    texts = [f"a photo of a thing number {i}." for i in range(7)]
    whole = enc.encode_texts(texts)
    chunked = enc.encode_texts(texts, batch_size=2)
    assert whole.shape == (7, enc.embed_dim)
    assert torch.allclose(whole, chunked, atol=1e-5)


def test_random_init_test_model_is_deterministic(enc):
    again = load_encoder(enc.model_id, device="cpu")
    x = _images(2, seed=3)
    assert torch.equal(enc.encode_images(x), again.encode_images(x))


def test_static_fingerprint_matches_loaded_encoder(enc):
    assert encoder_fingerprint(enc.model_id, device="cpu") == enc.fingerprint()
    fp = enc.fingerprint()
    assert fp["weights"]["kind"] == "random-init" and fp["precision"] == "fp32" and fp["adapter"] is None
    assert fp["preprocessing"]["size"] == [32, 32]


def test_preprocess_gives_model_input(enc):
    image = Image.new("RGB", (50, 40), (200, 10, 10))
    pixels = enc.preprocess(image)
    assert pixels.shape == (3, 32, 32)
    mean = torch.tensor(enc.fingerprint()["preprocessing"]["mean"])
    std = torch.tensor(enc.fingerprint()["preprocessing"]["std"])
    expected_red = (200 / 255 - mean[0]) / std[0]  # CLIP normalisation written out
    assert pixels[0].mean().item() == pytest.approx(expected_red.item(), abs=1e-3)


# ----------------------------------------------------------------------------------------- model ids
@pytest.mark.parametrize(
    "given, canonical",
    [("ViT-B-32@openai", "ViT-B-32@openai"), ("ViT-B/32@OpenAI", "ViT-B-32@openai"),
     ("ViT-B-32@laion2b-s34b-b79k", "ViT-B-32@laion2b_s34b_b79k"),
     ("hf-hub:timm/ViT-B-16-SigLIP", "hf-hub:timm/ViT-B-16-SigLIP"),
     ("clipadapt-test-tiny-rn", "clipadapt-test-tiny-rn")],
)
def test_parse_model_id_canonical_form(given, canonical):
    assert str(parse_model_id(given)) == canonical


@pytest.mark.parametrize(
    "bad, message",
    [("ViT-Q-99@openai", "unknown architecture"), ("ViT-B-32@nosuchtag", "not a pretrained tag"),
     ("ViT-B-32", "has no weights"), ("ViT-B-32@/nonexistent/x.pt", "not found"), ("hf-hub:justone", "ORG/REPO")],
)
def test_parse_model_id_errors_name_the_problem(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_id(bad)


def test_tag_fingerprint_carries_the_tags_preprocessing():
    fp = encoder_fingerprint("ViT-B-32@openai", device="cpu")  # no weights needed for the key
    assert fp["weights"] == {"kind": "tag", "tag": "openai"}
    assert fp["preprocessing"]["size"] == [224, 224]
    assert fp["preprocessing"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert fp["quick_gelu_forced"] is True  # OpenAI weights were trained with QuickGELU
    siglip = encoder_fingerprint("ViT-B-16-SigLIP@webli", device="cpu")
    assert siglip["preprocessing"]["mean"] == pytest.approx([0.5, 0.5, 0.5])


# ----------------------------------------------------------------------------------------- local checkpoints
def test_local_checkpoint_loads_and_is_hashed(tmp_path):
    base = load_encoder("clipadapt-test-tiny-vit", device="cpu")
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in base.model.state_dict().items()}
    path = tmp_path / "x.pt"
    torch.save(state, path)
    enc = load_encoder(f"clipadapt-test-tiny-vit@{path}", device="cpu")
    assert enc.model_id == f"clipadapt-test-tiny-vit@{path}"
    assert enc.fingerprint()["weights"] == {"kind": "checkpoint",
                                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    reference = base.model
    reference.load_state_dict(state)
    x = _images(3, seed=4)
    with torch.no_grad():
        expected = reference.encode_image(x)
    assert torch.allclose(enc.encode_images(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------------------- offline
@pytest.fixture
def empty_weight_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("CLIPADAPT_WEIGHTS_DIR", str(tmp_path / "weights"))
    for var in ("CLIPADAPT_OFFLINE", "HF_HUB_OFFLINE", "CLIPADAPT_ALLOW_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)


def test_offline_env_fails_fast_naming_model_and_remedy(empty_weight_caches, monkeypatch):
    monkeypatch.setenv("CLIPADAPT_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        load_encoder("RN50@openai", device="cpu")
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "RN50@openai" in message and "RN50@/path/to/weights.pt" in message and "CLIPADAPT_OFFLINE" in message


def test_unreachable_network_fails_fast(empty_weight_caches, monkeypatch):
    real_probe = weights_mod.host_reachable
    probed = []

    def probe_blackhole(host, port=443, timeout=weights_mod.PROBE_TIMEOUT_S):
        probed.append(host)
        return real_probe("10.255.255.1", 9, timeout=1.0)  # a non-routable address: connect times out

    monkeypatch.setattr(weights_mod, "host_reachable", probe_blackhole)
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="cannot be reached"):
        load_encoder("RN50@openai", device="cpu")
    assert time.monotonic() - start < 10
    assert "huggingface.co" in probed


def test_hf_hub_id_offline_fails_fast(empty_weight_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        load_encoder("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", device="cpu")
    assert time.monotonic() - start < 10


# ----------------------------------------------------------------------------------------- views
def test_view_augment_is_seeded_and_random_across_views(enc):
    image = Image.fromarray((torch.rand(60, 80, 3) * 255).byte().numpy())
    aug = enc.train_transform()
    a = aug.views(image, 4, torch.Generator().manual_seed(7))
    b = aug.views(image, 4, torch.Generator().manual_seed(7))
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])
    seeded = enc.train_transform(seed=7)
    assert torch.equal(seeded(image), a[0])


def test_crop_area_stays_within_scale(enc):
    aug = enc.train_transform()
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = aug.crop_params(80, 60, g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        # area within scale (0.5, 1) of the image, up to rounding of h and w
        assert 0.5 * 80 * 60 - (h + w) <= h * w <= 80 * 60


# ----------------------------------------------------------------------------------------- weights in the hub cache
def _fake_hub_snapshot(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The huggingface_hub cache layout: models--ORG--NAME/{refs/main, snapshots/<commit>/<files>}."""
    org, name = repo.split("/")
    base, commit = cache / f"models--{org}--{name}", "0123456789abcdef0123456789abcdef01234567"
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for filename, data in files.items():
        (snapshot / filename).write_bytes(data)
    return snapshot


def _perturbed_tiny_state(base) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=g)).contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in base.model.state_dict().items()}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache as CLIPADAPT_WEIGHTS_DIR, with downloads forbidden: anything loaded came from disk."""
    monkeypatch.setenv("CLIPADAPT_WEIGHTS_DIR", str(tmp_path / "hub"))
    monkeypatch.setenv("CLIPADAPT_OFFLINE", "1")
    return tmp_path / "hub"


def test_tag_weights_found_in_the_hub_cache_load_offline(offline_hub, monkeypatch):
    import open_clip

    base = load_encoder("clipadapt-test-tiny-vit", device="cpu")
    state = _perturbed_tiny_state(base)
    _fake_hub_snapshot(offline_hub, "fakeorg/tiny-vit", {"open_clip_model.safetensors": save(state)})
    tag_cfg = {"hf_hub": "fakeorg/tiny-vit/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "clipadapt-test-tiny-vit", {"fakehub": tag_cfg})
    enc = load_encoder("clipadapt-test-tiny-vit@fakehub", device="cpu")
    assert enc.fingerprint()["weights"] == {"kind": "tag", "tag": "fakehub"}
    assert enc.fingerprint()["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert enc.preprocess.transforms[-1].mean == [0.5, 0.5, 0.5]
    base.model.load_state_dict(state)
    x = _images(2, seed=6)
    assert torch.allclose(enc.encode_images(x), base.encode_images(x), atol=1e-5)


def test_hf_hub_model_found_in_the_hub_cache_loads_offline(offline_hub):
    from clipadapt.encoders.configs import CONFIG_DIR

    base = load_encoder("clipadapt-test-tiny-vit", device="cpu")
    state = _perturbed_tiny_state(base)
    config = {"model_cfg": json.loads((CONFIG_DIR / "clipadapt-test-tiny-vit.json").read_text()),
              "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    _fake_hub_snapshot(offline_hub, "someorg/tiny", {"open_clip_config.json": json.dumps(config).encode(),
                                                     "open_clip_model.safetensors": save(state)})
    enc = load_encoder("hf-hub:someorg/tiny", device="cpu")
    fp = enc.fingerprint()
    assert fp["weights"] == {"kind": "hf-hub", "id": "someorg/tiny"} and fp["preprocessing"]["std"] == [0.25] * 3
    assert encoder_fingerprint("hf-hub:someorg/tiny", device="cpu") == fp  # the key is computable without loading
    base.model.load_state_dict(state)
    x = _images(2, seed=7)
    assert torch.allclose(enc.encode_images(x), base.encode_images(x), atol=1e-5)
    assert torch.allclose(enc.encode_texts(["a red square"]), base.encode_texts(["a red square"]), atol=1e-5)
