"""Adapter training: lowers IMO on a generated two-class set, touches only adapters, resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch
from _imo_images import StripesDataset
from conftest import tiny
from safetensors.torch import load_file

from clipadapt.adapters import adapter_state_dict, adapters_enabled, imo_overlap
from clipadapt.adapters.training import AdapterTrainConfig, DINOHead, dino_loss, eval_transform, train_adapters
from clipadapt.errors import AdapterError, ConfigError

DINO_SMALL = dict(local_crops=1, dino_out_dim=32, dino_hidden_dim=16, dino_bottleneck_dim=8)


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "imo_adapter" not in k}


def embed(model, ds) -> torch.Tensor:
    tf = eval_transform(model)
    with torch.no_grad():
        return model.encode_image(torch.stack([tf(image) for image, _ in ds]))


def test_supervised_training_lowers_imo_and_switch_restores_original(tmp_path):
    ds = StripesDataset(64, seed=0)
    labels = torch.tensor(ds.labels)
    model = tiny()
    original = embed(model, ds)
    frozen = backbone_state(model)
    config = AdapterTrainConfig(scale=0.1, batch_size=16, epochs=100, max_steps=30, save_every=100)
    result = train_adapters(model, ds, tmp_path, config=config, progress=False)
    assert result.step == 30 and result.complete
    adapted = embed(model, ds)
    before = imo_overlap(original, labels).overlap
    after = imo_overlap(adapted, labels).overlap
    assert after < before - 0.05, (before, after)
    with adapters_enabled(model, False):
        assert torch.equal(embed(model, ds), original)  # the `apply_adapter` switch, after training
    after_state = backbone_state(model)
    assert all(torch.equal(frozen[k], after_state[k]) for k in frozen)  # frozen parameters unchanged


def test_checkpoint_holds_only_adapter_weights_and_training_config(tmp_path):
    ds = StripesDataset(8)
    model = tiny()
    train_adapters(model, ds, tmp_path, config=AdapterTrainConfig(batch_size=4, max_steps=2), progress=False,
                   extra_config={"arch": "clipadapt-test-tiny-vit", "data": "stripes"})
    weights = load_file(tmp_path / "adapter.safetensors")
    assert set(weights) == set(adapter_state_dict(model))
    assert all(torch.equal(weights[k], v) for k, v in adapter_state_dict(model).items())
    config = json.loads((tmp_path / "adapter.json").read_text())
    assert config["arch"] == "clipadapt-test-tiny-vit" and config["data"] == "stripes"
    assert config["mode"] == "supervised" and config["steps"] == 2 and config["complete"] is True
    assert config["training"]["lr"] == 8e-3 and config["training"]["batch_size"] == 4
    assert config["num_classes"] == 2 and config["scale"] == 0.03
    assert json.loads((tmp_path / "train_log.json").read_text())["steps"] == 2


def test_mode_defaults_follow_methods_md():
    sup = AdapterTrainConfig().resolved()
    assert (sup.lr, sup.batch_size, sup.epochs, sup.scale, sup.width, sup.dropout) == (8e-3, 128, 1, 0.03, 64, 0.1)
    ssl = AdapterTrainConfig(mode="selfsup").resolved()
    assert (ssl.epochs, ssl.scale, ssl.local_crops) == (10, 0.1, 10)
    with pytest.raises(ConfigError, match="mode"):
        AdapterTrainConfig(mode="dino").resolved()


def _resume_matches_uninterrupted(tmp_path, mode: str, extra: dict) -> None:
    ds = StripesDataset(16, seed=1)
    config = dict(mode=mode, batch_size=8, epochs=3, save_every=2, **extra)  # 6 steps over 3 epochs
    full = tiny()
    r_full = train_adapters(full, ds, tmp_path / "full", config=AdapterTrainConfig(**config), progress=False)
    part = tiny()
    r_part = train_adapters(part, ds, tmp_path / "split", config=AdapterTrainConfig(**config, max_steps=3),
                            progress=False)
    resumed = tiny()
    r_rest = train_adapters(resumed, ds, tmp_path / "split", config=AdapterTrainConfig(**config), progress=False)
    assert (r_full.step, r_part.step, r_rest.start_step, r_rest.step) == (6, 3, 3, 6)
    a, b = adapter_state_dict(full), adapter_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert r_rest.losses == r_full.losses


def test_supervised_resume_continues_from_saved_step_exactly(tmp_path):
    _resume_matches_uninterrupted(tmp_path, "supervised", {})


def test_selfsup_resume_continues_from_saved_step_exactly(tmp_path):
    _resume_matches_uninterrupted(tmp_path, "selfsup", DINO_SMALL)


class Crashing(StripesDataset):
    """Raises on the `crash_at`-th image read (simulates a killed run)."""

    def __init__(self, *args, crash_at: int | None = None, **kw):
        super().__init__(*args, **kw)
        self.crash_at, self.reads = crash_at, 0

    def __getitem__(self, i):
        self.reads += 1
        if self.crash_at is not None and self.reads > self.crash_at:
            raise KeyboardInterrupt("simulated interruption")
        return super().__getitem__(i)


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path):
    config = AdapterTrainConfig(batch_size=4, epochs=2, save_every=2)  # 8 images: 4 steps
    full = tiny()
    train_adapters(full, StripesDataset(8), tmp_path / "full", config=config, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train_adapters(tiny(), Crashing(8, crash_at=13), tmp_path / "run", config=config, progress=False)  # in step 4
    saved = json.loads((tmp_path / "run" / "adapter.json").read_text())
    assert saved["steps"] == 2 and saved["complete"] is False
    resumed = tiny()
    result = train_adapters(resumed, StripesDataset(8), tmp_path / "run", config=config, progress=False)
    assert result.start_step == 2 and result.step == 4
    a, b = adapter_state_dict(full), adapter_state_dict(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_finished_run_is_not_repeated_and_other_settings_are_refused(tmp_path):
    ds = StripesDataset(8)
    config = AdapterTrainConfig(batch_size=4, max_steps=2)
    train_adapters(tiny(), ds, tmp_path, config=config, progress=False)
    again = train_adapters(tiny(), ds, tmp_path, config=config, progress=False)
    assert again.start_step == again.step == 2 and again.complete
    with pytest.raises(AdapterError, match="lr: saved 0.008 vs now 0.001"):
        train_adapters(tiny(), ds, tmp_path, config=AdapterTrainConfig(batch_size=4, max_steps=2, lr=1e-3),
                       progress=False)


def test_selfsup_trains_adapters_only(tmp_path):
    model = tiny()
    frozen = backbone_state(model)
    result = train_adapters(model, StripesDataset(8), tmp_path, progress=False,
                            config=AdapterTrainConfig(mode="selfsup", batch_size=4, max_steps=2, lr=1e-2, **DINO_SMALL))
    assert result.step == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    after = backbone_state(model)
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert any(torch.count_nonzero(v) for k, v in adapter_state_dict(model).items() if ".up." in k)


def test_dino_loss_is_the_literal_cross_entropy_over_view_pairs():
    g = torch.Generator().manual_seed(0)
    student, teacher, center = (torch.randn(4, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g),
                                torch.randn(5, generator=g))
    total, pairs = 0.0, 0
    for t in range(2):
        for v in range(4):
            if v == t:
                continue
            for b in range(3):
                q = torch.exp((teacher[t, b] - center) / 0.04)
                q = q / q.sum()
                logp = student[v, b] / 0.1 - torch.logsumexp(student[v, b] / 0.1, dim=0)
                total += float(-(q * logp).sum()) / 3
            pairs += 1
    got = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    assert float(got) == pytest.approx(total / pairs, rel=1e-5)


def test_dino_head_outputs_cosines_to_unit_prototypes():
    head = DINOHead(8, out_dim=10, hidden_dim=6, bottleneck_dim=4)
    out = head(torch.randn(5, 8))
    assert out.shape == (5, 10) and float(out.detach().abs().max()) <= 1.0 + 1e-6


def test_supervised_needs_classes(tmp_path):
    class NoClasses(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return StripesDataset(2)[i]

    with pytest.raises(ConfigError, match="number of classes"):
        train_adapters(tiny(), NoClasses(), tmp_path, config=AdapterTrainConfig(max_steps=1), progress=False)


def test_unreadable_training_state_is_an_error_naming_the_file(tmp_path):
    ds = StripesDataset(8)
    config = AdapterTrainConfig(batch_size=4, max_steps=1)
    train_adapters(tiny(), ds, tmp_path, config=config, progress=False)
    (tmp_path / "train_state.pt").write_bytes(b"truncated")
    with pytest.raises(AdapterError, match=r"train_state\.pt.*unreadable.*delete it"):
        train_adapters(tiny(), ds, tmp_path, config=config, progress=False)
