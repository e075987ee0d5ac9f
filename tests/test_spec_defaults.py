"""Every default value docs/methods.md fixes, pinned against the spec's literal numbers (the spec audit,
docs/spec-audit.md).

Each test names the docs/methods.md section; the expected values are typed from the spec, not read from the code.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from clipadapt.cli import build_parser


def _defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items() if p.default is not p.empty}


def test_zero_shot_logit_scale_is_100():  # §1
    from clipadapt.methods.zeroshot import ZeroShotClassifier

    assert _defaults(ZeroShotClassifier)["logit_scale"] == 100.0


def test_dn_defaults_lambda_samples_seeded_and_text_mean():  # §2
    from clipadapt.methods.dn import DistributionNormalizer

    d = _defaults(DistributionNormalizer)
    assert (d["lam"], d["n_samples"], d["task"], d["logit_scale"],
            d["text_mean"]) == (0.25, 100, "classification", 100.0,
                                                                                         "prompts")
    assert isinstance(d["seed"], int)  # the draw is seeded by default


def test_tip_adapter_defaults_alpha_1_17_beta_1():  # §3
    from clipadapt.methods.tip_adapter import TipAdapter, TipAdapterF

    assert (_defaults(TipAdapter)["alpha"], _defaults(TipAdapter)["beta"],
            _defaults(TipAdapter)["logit_scale"]) == (1.17, 1.0, 100.0)
    f = _defaults(TipAdapterF)
    assert (f["alpha"], f["beta"], f["lr"], f["eps"], f["batch_size"], f["epochs"]) == (1.17, 1.0, 1e-3, 1e-4, 256, 20)


def test_tip_x_tau_is_0_5():  # §4
    from clipadapt.methods.tip_x import TipX

    d = _defaults(TipX)
    assert (d["tau"], d["alpha"], d["beta"], d["logit_scale"]) == (0.5, 1.17, 1.0, 100.0)


def _grid(low, high, n):  # the original's grid written out: n values from low, step (high - low) / n
    return [low + i * (high - low) / n for i in range(n)]


def test_default_search_grids_are_the_spec_ranges_and_sizes():  # §3, §4
    from clipadapt.eval.search import TIP_GRID, TIPX_GRID, linear_grid

    assert TIP_GRID == {"alpha": (0.1, 3.0, 20), "beta": (0.1, 7.0, 200)}
    assert TIPX_GRID == {"alpha": (0.1, 50.0, 20), "beta": (1.0, 50.0, 200), "gamma": (0.1, 30.0, 50)}
    for low, high, n in (*TIP_GRID.values(), *TIPX_GRID.values()):
        values = linear_grid(low, high, n)
        assert values == pytest.approx(_grid(low, high, n)) and len(values) == n
        assert values[0] == low and max(values) < high  # [low, high)


def test_tip_adapter_f_optimiser_is_adamw_with_spec_settings_and_cosine_over_all_steps(monkeypatch):  # §3
    """AdamW lr 1e-3, eps 1e-4; cosine schedule over epochs × ceil(NK / 256) steps; batches of 256."""
    from clipadapt.methods.tip_adapter import TipAdapterF

    seen: dict = {}
    real_adamw, real_cosine = torch.optim.AdamW, torch.optim.lr_scheduler.CosineAnnealingLR

    def adamw(params, **kw):
        seen["adamw"] = kw
        return real_adamw(params, **kw)

    def cosine(opt, t_max, *a, **kw):
        seen["t_max"] = t_max
        return real_cosine(opt, t_max, *a, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    monkeypatch.setattr(torch.optim.lr_scheduler, "CosineAnnealingLR", cosine)
    g = torch.Generator().manual_seed(0)
    keys, labels, text = torch.randn(300, 8, generator=g), torch.arange(300) % 3, torch.randn(3, 8, generator=g)
    model = TipAdapterF(epochs=2).fit(keys, labels, text)
    assert seen["adamw"]["lr"] == 1e-3 and seen["adamw"]["eps"] == 1e-4
    assert seen["t_max"] == 2 * 2  # 300 shots in batches of 256: 2 steps per epoch, 2 epochs
    assert model.batch_size == 256


def test_imo_defaults_adapter_metric_and_training():  # §5
    from clipadapt.adapters.imo_adapter import BottleneckAdapter, insert_adapters
    from clipadapt.adapters.overlap import imo_bin_edges
    from clipadapt.adapters.training import AdapterTrainConfig

    a = _defaults(BottleneckAdapter)
    assert (a["width"], a["scale"], a["dropout"]) == (64, 0.03, 0.1)
    kw = {k: p.default for k, p in inspect.signature(insert_adapters).parameters.items() if p.default is not p.empty}
    assert (kw["width"], kw["scale"], kw["dropout"]) == (64, 0.03, 0.1)
    edges = imo_bin_edges()
    assert float(edges[0]) == -1.0 and float(edges[-1]) == 1.0
    sup, ssl = AdapterTrainConfig().resolved(), AdapterTrainConfig(mode="selfsup").resolved()
    assert (sup.lr, sup.batch_size, sup.epochs, sup.scale) == (8e-3, 128, 1, 0.03)
    assert (ssl.epochs, ssl.scale, ssl.local_crops) == (10, 0.1, 10)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_adapter_training_images_are_normalised_with_clip_mean_std_in_both_modes():  # §5 "the original forgot"
    """Supervised batches (the encoder's eval transform) and every DINO crop end in Normalize(CLIP mean, std)."""
    from conftest import tiny
    from PIL import Image
    from torchvision import transforms as T

    from clipadapt.adapters.training import AdapterTrainConfig, eval_transform, multicrop_transform

    model = tiny()
    rgb = (200, 30, 90)
    x = eval_transform(model)(Image.new("RGB", (40, 40), rgb))
    for c in range(3):  # a uniform image stays uniform through resize/crop: (v/255 − mean)/std everywhere
        assert torch.allclose(x[c], torch.full_like(x[c], (rgb[c] / 255 - CLIP_MEAN[c]) / CLIP_STD[c]), atol=1e-5)
    crops = multicrop_transform(model, AdapterTrainConfig(mode="selfsup").resolved())
    for pipeline in (crops.global1, crops.global2, crops.local):
        last = pipeline.transforms[-1]
        assert isinstance(last, T.Normalize)
        assert tuple(last.mean) == pytest.approx(CLIP_MEAN) and tuple(last.std) == pytest.approx(CLIP_STD)
    assert len(crops(Image.new("RGB", (40, 40), rgb))) == 2 + 10  # 2 global + 10 local crops


def test_neural_logit_controller_hidden_128_adam_2e_4_wd_0_01(monkeypatch):  # §6
    from clipadapt.methods.logit_controller import NeuralLogitController

    d = _defaults(NeuralLogitController)
    assert (d["hidden"], d["lr"], d["weight_decay"]) == (128, 2e-4, 0.01)
    seen = {}
    real_adam = torch.optim.Adam

    def adam(params, **kw):
        seen.update(kw)
        return real_adam(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    g = torch.Generator().manual_seed(0)
    emb = [torch.randn(12, 4, generator=g), torch.randn(12, 6, generator=g)]
    logits = [torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g)]
    nlc = NeuralLogitController(max_epochs=1).fit(emb, logits, torch.arange(12) % 3)
    assert seen == {"lr": 2e-4, "weight_decay": 0.01}
    assert nlc.model_[0].out_features == 128


def test_view_augmentation_is_random_resized_crop_0_5_to_1_with_flip():  # §3 cache keys
    from clipadapt.encoders.augment import ViewAugment

    d = _defaults(ViewAugment)
    assert d["scale"] == (0.5, 1.0) and d["flip"] is True


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_cli_defaults_follow_the_spec(tmp_path):  # §2, §3, §7
    few = _parse("fewshot", "--features", str(tmp_path), "--out", str(tmp_path))
    assert (few.shots, few.seeds, few.views, few.tipf_epochs) == ([1, 2, 4, 8, 16], [1, 2, 3], 10, 20)
    dn = _parse("eval", "--features", str(tmp_path), "--method", "dn")
    assert (dn.dn_lambda, dn.dn_samples, dn.dn_text_mean) == (0.25, 100, "prompts")
    ret = _parse("retrieval", "--embeddings", str(tmp_path))
    assert (ret.dn_lambda, ret.dn_samples) == (0.25, 100)
    cap = _parse("captions", "--judgments", str(tmp_path / "j.csv"))
    assert (cap.dn_lambda, cap.dn_samples, cap.dn_source) == (0.25, None, "test")  # §2: means over the evaluated set
    imo = _parse("imo", "--features", str(tmp_path), "--out", str(tmp_path))
    assert imo.bins >= 1  # bins over [-1, 1]: see test_imo_defaults_adapter_metric_and_training
    syn = _parse("backbones", "--features", str(tmp_path), "--out", str(tmp_path))
    assert (syn.nlc_lr, syn.split, syn.heldout_split) == (2e-4, "test", "val")  # fitted on held-out, never on test
