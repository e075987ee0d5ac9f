"""IMO adapters on every ViT-style tower (issue 16 item 4): open_clip ViT, a timm ViT trunk through open_clip
(the tiny SigLIP config) and transformers CLIP / SigLIP / SigLIP 2 vision encoders (hf: models); other towers get
an error that names the supported ones and why."""

from __future__ import annotations

import pytest
import torch
from _hf_models import build

from clipadapt.adapters import (
    adapters_enabled,
    find_adapters,
    insert_adapters,
    remove_adapters,
    save_adapter_checkpoint,
)
from clipadapt.adapters.imo_adapter import _vit_blocks
from clipadapt.encoders import load_encoder
from clipadapt.errors import ConfigError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    dirs = build(tmp_path_factory.mktemp("hf"))
    return {"open_clip ViT": "clipadapt-test-tiny-vit", "timm ViT (SigLIP)": "clipadapt-test-tiny-siglip",
            **{f"transformers {k}": f"hf:{v}" for k, v in dirs.items()}}


NAMES = ["open_clip ViT", "timm ViT (SigLIP)", "transformers clip", "transformers siglip", "transformers siglip2"]


def _pixels(n=3):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _frozen(enc):
    """The encoder with every weight frozen, as insert_adapters leaves it: PyTorch's nn.MultiheadAttention (SigLIP's
    pooling head in transformers) takes another kernel once no weight requires grad, a 1e-7 difference that is
    not the adapter's."""
    for p in enc.model.parameters():
        p.requires_grad_(False)
    return enc


def _randomise(adapters, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters:
            for p in a.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


@pytest.mark.parametrize("name", NAMES)
def test_untrained_adapters_change_nothing_and_switch_off_exactly(models, name):
    enc = _frozen(load_encoder(models[name], device="cpu"))
    x = _pixels()
    before = enc.encode_images(x)
    adapters = insert_adapters(enc.model, model_name=enc.model_id)
    assert len(adapters) == len(_vit_blocks(enc.model)[1]) >= 2  # one per block
    assert all(not p.requires_grad for n, p in enc.model.named_parameters() if "imo_adapter" not in n)
    assert torch.equal(enc.encode_images(x), before)  # zero-initialised up-projection: bit for bit
    _randomise(adapters)
    adapted = enc.encode_images(x)
    assert not torch.allclose(adapted, before)
    with adapters_enabled(enc.model, False):
        assert torch.equal(enc.encode_images(x), before)
    remove_adapters(enc.model)
    assert not find_adapters(enc.model) and torch.equal(enc.encode_images(x), before)


@pytest.mark.parametrize("name", NAMES)
def test_each_block_computes_x_plus_mlp_branch_plus_scaled_adapter(models, name):
    """out_with = out_without + s·Adapter(x_mid), x_mid the input of the block's pre-MLP norm (after attention)."""
    enc = load_encoder(models[name], device="cpu")
    adapters = insert_adapters(enc.model, scale=0.1, dropout=0.0)
    _randomise(adapters)
    layout, blocks = _vit_blocks(enc.model)
    block, adapter = blocks[0], adapters[0]
    norm = block
    for part in layout.norm.split("."):
        norm = getattr(norm, part)
    seen = []
    handle = norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    x = torch.randn(2, 5, adapter.dim, generator=torch.Generator().manual_seed(3))

    def run():
        out = block(x) if "transformers" not in name else block(x, attention_mask=None)
        return out[0] if isinstance(out, tuple) else out

    with torch.no_grad():
        with adapters_enabled(enc.model, False):
            without = run()
        with_adapter = run()
    handle.remove()
    x_mid = seen[0]
    assert not torch.allclose(x_mid, x)  # the attention residual came first
    expected = without + 0.1 * (adapter.up(torch.relu(adapter.down(x_mid))))
    torch.testing.assert_close(with_adapter, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["timm ViT (SigLIP)", "transformers siglip"])
def test_checkpoint_attaches_through_load_encoder(models, name, tmp_path):
    enc = _frozen(load_encoder(models[name], device="cpu"))
    plain = enc.encode_images(_pixels())
    _randomise(insert_adapters(enc.model))
    adapted = enc.encode_images(_pixels())
    path = save_adapter_checkpoint(tmp_path / "ckpt", enc.model, {"arch": name})
    again = load_encoder(models[name], device="cpu", adapter=path.parent)
    torch.testing.assert_close(again.encode_images(_pixels()), adapted, rtol=0, atol=1e-6)
    assert again.fingerprint()["adapter"] == again.adapter_id
    with adapters_enabled(again.model, False):
        torch.testing.assert_close(again.encode_images(_pixels()), plain, rtol=0, atol=0)


def test_convolutional_tower_is_a_named_error_listing_the_supported_ones():
    enc = load_encoder("clipadapt-test-tiny-rn", device="cpu")
    with pytest.raises(ConfigError, match="ModifiedResNet.*pre-MLP norm.*open_clip VisionTransformer.*timm "
                                          "VisionTransformer.*transformers CLIP/SigLIP"):
        insert_adapters(enc.model, model_name=enc.model_id)


@pytest.mark.parametrize("name,mode", [("transformers siglip", "supervised"), ("timm ViT (SigLIP)", "selfsup")])
def test_adapters_train_on_the_other_towers(models, name, mode, tmp_path):
    from _imo_images import StripesDataset

    from clipadapt.adapters.training import AdapterTrainConfig, train_adapters

    enc = load_encoder(models[name], device="cpu")
    config = AdapterTrainConfig(mode=mode, batch_size=4, max_steps=2, local_crops=2, dino_out_dim=256, dino_hidden_dim=64,
                                dino_bottleneck_dim=32)
    result = train_adapters(enc.model, StripesDataset(8), tmp_path, config=config, progress=False,
                            preprocess=enc.preprocess if mode == "supervised" else None)
    assert result.step == 2 and result.checkpoint.is_file()
    assert any(a.up.weight.abs().sum() > 0 for a in find_adapters(enc.model))  # the zero-initialised layer moved
