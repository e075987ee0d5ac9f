"""The IMO bottleneck adapter: placement parallel to the MLP, zero start, freezing, the switch, checkpoints."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import tiny

from clipadapt.adapters import (
    BottleneckAdapter,
    adapter_checkpoint_sha256,
    adapters_enabled,
    attach_adapter_checkpoint,
    count_adapter_parameters,
    find_adapters,
    insert_adapters,
    load_adapter_checkpoint,
    save_adapter_checkpoint,
)
from clipadapt.errors import AdapterError, ConfigError


def randomize(adapters, seed: int = 1) -> None:
    """Give adapters non-zero weights (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in adapters:
            for p in a.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_untrained_adapter_reproduces_embeddings_bit_for_bit(images):
    model = tiny()
    with torch.no_grad():
        before = model.encode_image(images)
        adapters = insert_adapters(model)
        after = model.encode_image(images)
    assert len(adapters) == len(model.visual.transformer.resblocks)
    assert torch.equal(before, after)
    for a in adapters:  # zero up-projection and biases; random down-projection
        assert torch.count_nonzero(a.up.weight) == 0 and torch.count_nonzero(a.up.bias) == 0
        assert torch.count_nonzero(a.down.bias) == 0 and torch.count_nonzero(a.down.weight) > 0


def test_block_computes_x_plus_mlp_plus_scaled_adapter_of_mlp_input():
    model = tiny()
    adapters = insert_adapters(model, scale=0.1)
    randomize(adapters)
    block = model.visual.transformer.resblocks[0]
    a = adapters[0]
    x = torch.randn(2, 5, a.dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # literal §5: x1 = x + Attn(LN1(x)); out = x1 + MLP(LN2(x1)) + s * Up(ReLU(Down(x1)))
        h = block.ln_1(x)
        x1 = x + block.attn(h, h, h, need_weights=False)[0]
        mlp = block.mlp.c_proj(block.mlp.gelu(block.mlp.c_fc(block.ln_2(x1))))
        adapter = torch.relu(x1 @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
        expected = x1 + mlp + 0.1 * adapter
        got = block(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_only_adapters_are_trainable():
    model = tiny()
    adapters = insert_adapters(model)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for a in adapters for p in a.parameters()}
    assert not any(p.requires_grad for p in model.transformer.parameters())  # text tower untouched


def test_tiny_parameter_count_formula():
    model = tiny()
    insert_adapters(model, width=16)
    d, w, blocks = 64, 16, 2  # tiny ViT: width 64, 2 layers
    assert count_adapter_parameters(model) == blocks * (d * w + w + w * d + d)


def test_vit_b16_has_1_189_632_adapter_parameters():
    import open_clip

    model = open_clip.create_model("ViT-B-16")  # random init, no weights
    insert_adapters(model)
    assert count_adapter_parameters(model) == 12 * 99_136 == 1_189_632


def test_switch_off_restores_original_and_nests(images):
    model = tiny()
    with torch.no_grad():
        original = model.encode_image(images)
        randomize(insert_adapters(model))
        adapted = model.encode_image(images)
        with adapters_enabled(model, False):
            off = model.encode_image(images)
            with adapters_enabled(model, True):
                on_again = model.encode_image(images)
            off_again = model.encode_image(images)
        after = model.encode_image(images)
    assert not torch.allclose(adapted, original)
    assert torch.equal(off, original) and torch.equal(off_again, original)
    assert torch.equal(on_again, adapted) and torch.equal(after, adapted)


def test_resnet_tower_is_refused_with_the_model_name():
    model = tiny("clipadapt-test-tiny-rn")
    with pytest.raises(ConfigError, match="clipadapt-test-tiny-rn.*ModifiedResNet.*ViT"):
        insert_adapters(model, model_name="clipadapt-test-tiny-rn")


def test_second_insertion_is_an_error():
    model = tiny()
    insert_adapters(model)
    with pytest.raises(ConfigError, match="already has IMO adapters"):
        insert_adapters(model)


def test_bad_adapter_hyperparameters():
    with pytest.raises(ConfigError, match="dropout"):
        BottleneckAdapter(8, dropout=1.0)
    with pytest.raises(ConfigError, match="width"):
        BottleneckAdapter(8, width=0)


def test_checkpoint_round_trip_and_hash(tmp_path, images):
    model = tiny()
    randomize(insert_adapters(model, scale=0.1, width=8))
    weights = save_adapter_checkpoint(tmp_path / "ckpt", model, {"arch": "clipadapt-test-tiny-vit", "steps": 7})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["adapter.json", "adapter.safetensors"]
    tensors, config = load_adapter_checkpoint(tmp_path / "ckpt")
    assert set(tensors) == {f"blocks.{i}.{k}" for i in range(2)
                            for k in ("down.weight", "down.bias", "up.weight", "up.bias")}
    assert (config["width"], config["scale"], config["num_blocks"], config["steps"]) == (8, 0.1, 2, 7)
    # only adapter weights are stored
    assert sum(t.numel() for t in tensors.values()) == count_adapter_parameters(model)

    fresh = tiny()  # same backbone weights (same seed), no adapters
    digest = attach_adapter_checkpoint(fresh, tmp_path / "ckpt")
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert json.loads((tmp_path / "ckpt" / "adapter.json").read_text())["weights_sha256"] == digest
    assert find_adapters(fresh)[0].width == 8 and find_adapters(fresh)[0].scale == 0.1
    with torch.no_grad():
        assert torch.equal(fresh.encode_image(images), model.encode_image(images))
    # a .safetensors file path works too and gives the same hash; the hash is available without a model
    assert attach_adapter_checkpoint(tiny(), weights) == digest
    assert adapter_checkpoint_sha256(tmp_path / "ckpt") == adapter_checkpoint_sha256(weights) == digest


def test_file_path_checkpoint_and_scale_enters_the_hash(tmp_path):
    model = tiny()
    insert_adapters(model, scale=0.03)
    a = save_adapter_checkpoint(tmp_path / "a.safetensors", model)
    assert (tmp_path / "a.json").is_file()
    for adapter in find_adapters(model):
        adapter.scale = 0.1
    b = save_adapter_checkpoint(tmp_path / "b.safetensors", model)
    assert hashlib.sha256(a.read_bytes()).digest() != hashlib.sha256(b.read_bytes()).digest()


def test_checkpoint_for_other_architecture_is_refused(tmp_path):
    model = tiny()
    insert_adapters(model)
    save_adapter_checkpoint(tmp_path, model, {"arch": "clipadapt-test-tiny-vit"})
    other = tiny()
    other.visual.transformer.resblocks = other.visual.transformer.resblocks[:1]  # a 1-block "architecture"
    with pytest.raises(AdapterError, match="2 blocks.*has 1.*clipadapt-test-tiny-vit"):
        attach_adapter_checkpoint(other, tmp_path)
    assert not find_adapters(other)


def test_missing_and_inconsistent_checkpoints(tmp_path):
    with pytest.raises(AdapterError, match="missing"):
        load_adapter_checkpoint(tmp_path / "nothing")
    model = tiny()
    insert_adapters(model)
    save_adapter_checkpoint(tmp_path, model)
    cfg = json.loads((tmp_path / "adapter.json").read_text())
    cfg["scale"] = 0.5
    (tmp_path / "adapter.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterError, match="scale=0.5.*authoritative"):
        load_adapter_checkpoint(tmp_path)
    (tmp_path / "adapter.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="unreadable"):
        load_adapter_checkpoint(tmp_path)


def test_remove_adapters_and_persistent_switch(images):
    from clipadapt.adapters import remove_adapters, set_adapters_enabled

    model = tiny()
    with torch.no_grad():
        original = model.encode_image(images)
        randomize(insert_adapters(model))
        set_adapters_enabled(model, False)
        off = model.encode_image(images)
        set_adapters_enabled(model, True)
        on = model.encode_image(images)
        remove_adapters(model)
        removed = model.encode_image(images)
    assert torch.equal(off, original) and not torch.equal(on, original) and torch.equal(removed, original)
    assert not find_adapters(model) and not any("imo_adapter" in k for k in model.state_dict())


def test_cli_adapter_info_prints_config_and_hash(tmp_path, capsys):
    from clipadapt.cli import main

    model = tiny()
    insert_adapters(model)
    weights = save_adapter_checkpoint(tmp_path, model, {"arch": "clipadapt-test-tiny-vit", "mode": "supervised"})
    assert main(["adapter", "info", str(tmp_path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["parameters"] == 2 * (64 * 64 + 64 + 64 * 64 + 64)  # 2 blocks, d = 64, width 64
    assert info["arch"] == "clipadapt-test-tiny-vit" and info["num_blocks"] == 2
    assert main(["adapter", "info", str(tmp_path / "missing")]) == 2


def test_saving_identical_adapters_gives_identical_files(tmp_path):
    model = tiny()
    randomize(insert_adapters(model))
    a = save_adapter_checkpoint(tmp_path / "a", model, {"arch": "x"})
    b = save_adapter_checkpoint(tmp_path / "b", model, {"arch": "x"})
    assert a.read_bytes() == b.read_bytes()


def test_checkpoint_tensor_of_wrong_shape_is_an_error_naming_the_file(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    model = tiny()
    insert_adapters(model)
    weights = save_adapter_checkpoint(tmp_path, model)
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(weights))
    tensors["blocks.1.up.weight"] = tensors["blocks.1.up.weight"][:, :-1].contiguous()  # one column short
    save_file(tensors, str(weights), metadata=metadata)
    with pytest.raises(AdapterError, match=r"adapter\.safetensors: tensor 'blocks\.1\.up\.weight' has shape"):
        load_adapter_checkpoint(tmp_path)
    with pytest.raises(AdapterError, match=r"adapter\.safetensors: tensor 'blocks\.1\.up\.weight'"):
        attach_adapter_checkpoint(tiny(), tmp_path)
