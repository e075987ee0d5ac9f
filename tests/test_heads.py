"""Heads (docs/heads.md): `clipadapt fit` writes one safetensors file, `clipadapt predict` / `load_head` apply it.

The central property: a head scores a test split exactly as `clipadapt fewshot` / `eval --method` did for the same
method, shots, seed and chosen hyper-parameters. The reference logits are captured from inside `fewshot` (its
`_score_test`, the one place test logits meet labels) and from `eval --save-logits`, never recomputed by the
code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import clipadapt.eval.fewshot as fewshot_module
from clipadapt.cli import main
from clipadapt.errors import HeadFileError, HeadMismatchError
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.heads import load_head

TOL = 1e-5
CACHE_METHODS = ["zeroshot", "tip", "tip-f", "tipx", "tip++", "tipx++"]
SMALL_GRIDS = ["--grid", "tip.alpha=0.5,2", "--grid", "tip.beta=1,5", "--grid", "tipx.alpha=0.5,2",
               "--grid", "tipx.beta=1,5", "--grid", "tipx.gamma=0.1,1", "--tipf-epochs", "2"]
COCO_C = 6


# ----------------------------------------------------------------------------------------- helpers
def fewshot_logits(monkeypatch, argv: list[str], out) -> dict[str, tuple[torch.Tensor, dict]]:
    """Run `clipadapt fewshot` and capture each run's test logits where the protocol scores them."""
    captured: list[torch.Tensor] = []
    original = fewshot_module._score_test

    def spy(logits, labels):
        captured.append(logits.detach().clone())
        return original(logits, labels)

    monkeypatch.setattr(fewshot_module, "_score_test", spy)
    assert main(argv + ["--out", str(out)]) == 0
    monkeypatch.setattr(fewshot_module, "_score_test", original)
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == len(captured)
    return {run["method"]: (logits, run) for run, logits in zip(runs, captured)}


def predicted_logits(tmp_path, head, source: list[str], name: str) -> np.ndarray:
    npy = tmp_path / f"{name}.npy"
    assert main(["predict", "--head", str(head), *source, "--save-logits", str(npy),
                 "--out", str(tmp_path / f"{name}.csv")]) == 0
    return np.load(npy)


def max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


# ----------------------------------------------------------------------------------------- coco500 features
@pytest.fixture(scope="module")
def coco_dirs(tmp_path_factory):
    """A few-shot feature directory made of real CLIP ViT-B/16 embeddings (builtin:coco500): class c's text is
    caption 100+c, its images are image 100+c mixed with other real images; unlabeled = the pool images 0..99.
    The 'adapted' twin maps every row through one fixed random linear layer (x + 0.5 x R)."""
    from clipadapt.builtin import load_pairs

    image, caption = load_pairs("coco500")
    g = torch.Generator().manual_seed(0)
    others = image[200:]

    def rows(per_class, views=None):
        labels = torch.arange(COCO_C).repeat_interleave(per_class)
        shape = (labels.numel(), views) if views else (labels.numel(),)
        mixed = others[torch.randint(others.shape[0], shape, generator=g)]
        base = image[100 + labels]
        return FeatureSplit((base.unsqueeze(1) if views else base) + 0.7 * mixed, labels)

    splits = {"train": rows(4, views=2), "val": rows(3), "test": rows(4), "unlabeled": FeatureSplit(image[:100])}
    fs = FeatureSet([f"caption {100 + c}" for c in range(COCO_C)], caption[100:100 + COCO_C], splits,
                    {"model": "ViT-B-16@openai", "dataset": "coco500-fewshot"})
    r = torch.randn(512, 512, generator=g) / 512 ** 0.5
    adapted = FeatureSet(fs.classnames, fs.text, {k: FeatureSplit(s.image + 0.5 * s.image @ r, s.label)
                                                  for k, s in splits.items()}, dict(fs.meta))
    root = tmp_path_factory.mktemp("coco")
    return save_feature_dir(fs, root / "feats"), save_feature_dir(adapted, root / "adapted")


@pytest.fixture(scope="module")
def coco_heads(coco_dirs, tmp_path_factory):
    """One head per cache method, fitted on the coco500 features (2 shots, seed 1)."""
    feats, adapted = coco_dirs
    out = tmp_path_factory.mktemp("coco_heads")
    heads = {}
    for method in CACHE_METHODS:
        extra = ["--adapted-features", str(adapted)] if method.endswith("++") else []
        heads[method] = out / f"{method}.safetensors"
        assert main(["fit", "--features", str(feats), "--method", method, "--shots", "2", "--seed", "1", *extra,
                     *SMALL_GRIDS, "--out", str(heads[method])]) == 0
    return heads


def test_predict_equals_fewshot_logits_for_every_cache_method_on_coco500(coco_dirs, coco_heads, tmp_path, monkeypatch):
    feats, adapted = coco_dirs
    reference = fewshot_logits(monkeypatch, ["fewshot", "--features", str(feats), "--adapted-features", str(adapted),
                                             "--shots", "2", "--seeds", "1", "--methods", ",".join(CACHE_METHODS),
                                             *SMALL_GRIDS], tmp_path / "fs")
    for method in CACHE_METHODS:
        extra = ["--adapted-features", f"{adapted}:test"] if method.endswith("++") else []
        got = predicted_logits(tmp_path, coco_heads[method], ["--features", f"{feats}:test", *extra], method)
        logits, run = reference[method]
        assert got.shape == tuple(logits.shape) and max_diff(got, logits) <= TOL, method
        head = load_head(coco_heads[method])
        chosen = head.meta["selection"]["hyperparameters"]
        for key in ("alpha", "beta", "gamma", "best_epoch"):
            if key in run["hyperparameters"]:
                assert chosen[key] == pytest.approx(run["hyperparameters"][key], abs=1e-4), (method, key)
        assert head.meta["selection"]["val_top1"] == pytest.approx(run["val_top1"], abs=1e-3)


@pytest.mark.parametrize("method, options", [("dn", ["--dn-samples", "50", "--dn-seed", "3"]), ("zeroshot", [])])
def test_predict_equals_eval_logits_on_builtin_coco500(method, options, tmp_path):
    ref = tmp_path / "eval.npy"
    assert main(["eval", "--features", "builtin:coco500", "--method", method, *options, "--save-logits", str(ref),
                 "--out", str(tmp_path / "eval")]) == 0
    head = tmp_path / f"{method}.safetensors"
    assert main(["fit", "--features", "builtin:coco500", "--method", method, *options, "--out", str(head)]) == 0
    got = predicted_logits(tmp_path, head, ["--features", "builtin:coco500:test"], method)
    assert got.shape == (400, 400) and max_diff(got, np.load(ref)) <= TOL


def test_dn_head_uses_the_stored_mean_so_one_image_scores_as_in_the_batch(tmp_path):
    """DN fitted on the pool at fit time: scoring a single image gives its row of the batch's logits, and the
    logits are the DN formula with the pool's mean (written out), not the scored images' mean."""
    from clipadapt.features.io import load_feature_dir

    head_path = tmp_path / "dn.safetensors"
    assert main(["fit", "--features", "builtin:coco500", "--method", "dn", "--dn-samples", "all",
                 "--dn-lambda", "0.5", "--out", str(head_path)]) == 0
    head = load_head(head_path)
    fs = load_feature_dir("builtin:coco500")
    test, pool, text = fs.split("test").image[:20], fs.split("unlabeled").image, fs.text
    batch = head.predict_logits(test)
    assert torch.allclose(head.predict_logits(test[7:8]), batch[7:8], atol=1e-5)
    mu_img, mu_txt = pool.mean(0), text.reshape(-1, text.shape[-1]).mean(0)
    rows = [(t - 0.5 * mu_txt) / (t - 0.5 * mu_txt).norm() for t in text]  # one template per class
    for i in (0, 7):
        f = (test[i] - 0.5 * mu_img) / (test[i] - 0.5 * mu_img).norm()
        expected = torch.stack([100.0 * f @ w for w in rows])
        assert torch.allclose(batch[i], expected, atol=1e-3)
    assert head.meta["dn"]["pool"] == "unlabeled" and head.meta["dn"]["n_image_samples"] == 100


def test_head_file_is_one_safetensors_file_with_its_metadata(coco_heads, coco_dirs):
    from safetensors import safe_open

    path = coco_heads["tip++"]
    with open(path, "rb") as f:
        assert f.read(1) != b"\x80"  # no pickle
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        meta = json.loads(f.metadata()["clipadapt_head"])
    assert {"state.classifier_", "state.keys_", "state.values_", "state.adapted_keys_"} <= names
    assert meta["method"] == "tip++" and meta["classnames"] == [f"caption {100 + c}" for c in range(COCO_C)]
    assert meta["model"]["id"] == "ViT-B-16@openai" and meta["model"]["encodable"] is True
    assert meta["model"]["weights"] == {"kind": "tag", "tag": "openai"}
    assert meta["model"]["preprocessing"]["size"] == [224, 224]
    sel = meta["selection"]
    assert sel["shots"] == 2 and sel["seed"] == 1 and sel["cache_size"] == 2 * COCO_C and sel["val_top1"] is not None
    assert set(sel["hyperparameters"]) >= {"alpha", "beta", "grid_size"}
    prov = meta["provenance"]
    assert prov["command"].startswith("clipadapt fit") and prov["clipadapt_version"] and prov["created_utc"]


# ----------------------------------------------------------------------------------------- named errors
def _rewrite(path, out, *, tensors=None, meta=None):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        m = json.loads(f.metadata()["clipadapt_head"])
    t, m = tensors(t) if tensors else t, meta(m) if meta else m
    save_file(t, str(out), metadata={"clipadapt_head": json.dumps(m)})
    return out


def test_tampered_shapes_class_count_values_pickles_and_other_files_are_named_errors(coco_heads, coco_dirs, tmp_path):
    tip = coco_heads["tip"]
    # a tensor with another shape than the one written at fit time
    bad = _rewrite(tip, tmp_path / "shape.safetensors", tensors=lambda t: {**t, "state.keys_": t["state.keys_"][:-1]})
    with pytest.raises(HeadFileError, match=r"state.keys_.*shape \(11, 512\).*\(12, 512\)"):
        load_head(bad)
    # the shape list edited too: the class axis no longer matches the class names
    def drop_class(t):
        return {**t, "state.classifier_": t["state.classifier_"][:-1]}

    def record(m):
        m["tensors"]["state.classifier_"]["shape"] = [COCO_C - 1, 512]
        return m
    bad = _rewrite(tip, tmp_path / "classes.safetensors", tensors=drop_class, meta=record)
    with pytest.raises(HeadFileError, match=rf"state.classifier_.*C axis should be {COCO_C} classes"):
        load_head(bad)
    bad = _rewrite(tip, tmp_path / "names.safetensors", meta=lambda m: {**m, "classnames": m["classnames"][:-1]})
    with pytest.raises(HeadFileError, match="classes"):
        load_head(bad)
    # same shapes, other values
    bad = _rewrite(tip, tmp_path / "values.safetensors", tensors=lambda t: {**t, "state.keys_": t["state.keys_"] * 2})
    with pytest.raises(HeadFileError, match="sha256"):
        load_head(bad)
    pickled = tmp_path / "head.pt"
    torch.save({"classifier": torch.zeros(2, 2)}, pickled)
    with pytest.raises(HeadFileError, match="pickle"):
        load_head(pickled)
    with pytest.raises(HeadFileError, match="not a clipadapt head"):
        load_head(coco_dirs[0] / "test.safetensors")
    (tmp_path / "text.txt").write_text("hello")
    with pytest.raises(HeadFileError, match="not a safetensors file"):
        load_head(tmp_path / "text.txt")
    assert main(["predict", "--head", str(pickled), "--features", f"{coco_dirs[0]}:test", "--out",
                 str(tmp_path / "p.csv")]) == 2


def test_features_of_another_model_or_class_count_are_named_errors(coco_heads, tmp_path):
    head = load_head(coco_heads["tip"])
    with pytest.raises(HeadMismatchError, match="D=512|512"):
        head.predict_logits(torch.randn(3, 768))
    test = FeatureSplit(torch.randn(4, 512), torch.tensor([0, 1, 0, 1]))
    other = FeatureSet(["a", "b"], torch.randn(2, 512), {"test": test}, {"model": "ViT-L-14@openai"})
    save_feature_dir(other, tmp_path / "other")
    with pytest.raises(HeadMismatchError, match="ViT-L-14@openai"):
        head.check_feature_meta(other.meta, other.classnames, "other:test", labelled=True)
    other.meta["model"] = "ViT-B-16@openai"
    save_feature_dir(other, tmp_path / "classes")
    assert main(["predict", "--head", str(coco_heads["tip"]), "--features", f"{tmp_path / 'classes'}:test",
                 "--out", str(tmp_path / "p.csv")]) == 2


def test_head_of_an_unknown_model_predicts_from_features_only_and_says_so(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(3, 8, generator=g)
    labels = torch.arange(3).repeat_interleave(2)
    val = FeatureSplit(protos[labels] + 0.1 * torch.randn(6, 8, generator=g), labels)
    fs = FeatureSet(["a", "b", "c"], protos, {"val": val, "test": FeatureSplit(protos[labels], labels)},
                    {"model": "my-private-net"})
    save_feature_dir(fs, tmp_path / "f")
    head_file = str(tmp_path / "h.safetensors")
    assert main(["fit", "--features", str(tmp_path / "f"), "--method", "zeroshot", "--out", head_file]) == 0
    assert "can only predict from precomputed features" in capsys.readouterr().out
    head = load_head(tmp_path / "h.safetensors")
    assert head.model_id is None and head.meta["model"]["id"] == "my-private-net"
    with pytest.raises(HeadMismatchError, match="only predict from precomputed features"):
        head.predict([tmp_path / "x.png"])
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    assert main(["predict", "--head", str(tmp_path / "h.safetensors"), str(img), "--out", str(tmp_path / "p.csv")]) == 2
    assert "only predict from precomputed features" in capsys.readouterr().err
    logits = predicted_logits(tmp_path, tmp_path / "h.safetensors", ["--features", f"{tmp_path / 'f'}:test"], "z")
    assert logits.shape == (6, 3)


# ----------------------------------------------------------------------------------------- tiny model + images
TINY = "clipadapt-test-tiny-vit"


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """Generated images (3 classes; train/val/test), a feature cache, and a random IMO adapter checkpoint."""
    from _imagedata import make_imagefolder
    from conftest import tiny

    from clipadapt.adapters.imo_adapter import insert_adapters, save_adapter_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    images = make_imagefolder(root / "images", splits=("train", "val", "test"), per_class=3)
    model = tiny(TINY)
    torch.manual_seed(1)
    for adapter in insert_adapters(model, width=8, scale=0.5):
        for p in adapter.parameters():
            torch.nn.init.normal_(p, std=0.2)
    save_adapter_checkpoint(root / "adapter", model, {"arch": TINY})
    common = ["--model", TINY, "--dataset", f"imagefolder:{images}", "--cache-dir", str(root / "cache"),
              "--device", "cpu"]
    return {"root": root, "images": images, "adapter": root / "adapter", "common": common}


@pytest.fixture(scope="module")
def tiny_heads(tiny_setup):
    s, heads = tiny_setup, {}
    for method in CACHE_METHODS:
        extra = ["--adapter", str(s["adapter"])] if method.endswith("++") else []
        heads[method] = s["root"] / "heads" / f"{method}.safetensors"
        assert main(["fit", *s["common"], "--method", method, "--shots", "2", "--seed", "1", "--views", "2",
                     *extra, *SMALL_GRIDS, "--out", str(heads[method])]) == 0
    heads["dn"] = s["root"] / "heads" / "dn.safetensors"
    assert main(["fit", *s["common"], "--method", "dn", "--dn-source", "train", "--dn-samples", "all",
                 "--out", str(heads["dn"])]) == 0
    return heads


def _by_path(tmp_path, name):
    import csv

    with open(tmp_path / f"{name}.csv", newline="") as f:
        return [row["path"] for row in csv.DictReader(f)]


def test_predict_on_images_equals_fewshot_logits_for_every_cache_method_on_the_tiny_model(tiny_setup, tiny_heads,
                                                                                          tmp_path, monkeypatch):
    from clipadapt.data import build_dataset

    s = tiny_setup
    reference = fewshot_logits(monkeypatch, ["fewshot", *s["common"], "--shots", "2", "--seeds", "1", "--views", "2",
                                             "--methods", ",".join(CACHE_METHODS), "--adapter", str(s["adapter"]),
                                             *SMALL_GRIDS], tmp_path / "fs")
    test_paths = build_dataset(f"imagefolder:{s['images']}", "test").paths
    for method in CACHE_METHODS:
        got = predicted_logits(tmp_path, tiny_heads[method], ["--images", str(s["images"] / "test"),
                                                              "--cache-dir", str(s["root"] / "cache")], method)
        rows = {p: i for i, p in enumerate(_by_path(tmp_path, method))}
        got = got[[rows[str(p)] for p in test_paths]]
        assert max_diff(got, reference[method][0]) <= TOL, method


def test_dn_head_on_images_equals_eval_dn_on_the_tiny_model(tiny_setup, tmp_path):
    s = tiny_setup
    ref = tmp_path / "eval.npy"
    dn = ["--method", "dn", "--dn-source", "train", "--dn-samples", "5"]
    assert main(["eval", *s["common"], *dn, "--save-logits", str(ref), "--out", str(tmp_path / "e")]) == 0
    assert main(["fit", *s["common"], *dn, "--out", str(tmp_path / "dn.safetensors")]) == 0
    test = sorted(str(p) for p in (s["images"] / "test").rglob("*.png"))
    from clipadapt.data import build_dataset

    order = [str(p) for p in build_dataset(f"imagefolder:{s['images']}", "test").paths]
    got = predicted_logits(tmp_path, tmp_path / "dn.safetensors",
                           ["--csv", str(_csv(tmp_path, test)), "--cache-dir", str(s["root"] / "cache")], "dn")
    rows = {p: i for i, p in enumerate(_by_path(tmp_path, "dn"))}
    assert max_diff(got[[rows[p] for p in order]], np.load(ref)) <= TOL


def _csv(tmp_path, paths):
    path = tmp_path / "list.csv"
    path.write_text("path\n" + "\n".join(paths) + "\n")
    return path


def test_python_api_predicts_images_lazily_and_matches_the_cli(tiny_setup, tiny_heads, tmp_path):
    import clipadapt

    s = tiny_setup
    head = clipadapt.load_head(tiny_heads["tipx++"])
    assert head._encoders == {}  # nothing loaded until images are predicted
    paths = sorted((s["images"] / "test").rglob("*.png"))
    cache = ["--cache-dir", str(s["root"] / "cache")]
    cli = predicted_logits(tmp_path, tiny_heads["tipx++"], [*map(str, paths), *cache], "c")
    logits = head.image_logits(paths)
    assert max_diff(logits, cli) <= TOL
    assert head.predict(paths) == [head.classnames[i] for i in cli.argmax(1)]
    from PIL import Image

    pil = [Image.open(p).convert("RGB") for p in paths]
    assert max_diff(head.image_logits(pil), cli) <= TOL  # PIL images as well as paths
    assert _by_path(tmp_path, "c") == [str(p) for p in paths]


def test_on_error_skip_lists_unreadable_images_and_topk_jsonl(tiny_setup, tiny_heads, tmp_path):
    from _imagedata import corrupt

    s = tiny_setup
    good = sorted((s["images"] / "test").rglob("*.png"))[:2]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    corrupt(bad)
    args = ["predict", "--head", str(tiny_heads["tip"]), *map(str, good), str(bad), "--cache-dir",
            str(s["root"] / "cache"), "--topk", "2"]
    assert main(args + ["--out", str(tmp_path / "p.jsonl")]) == 2  # fail by default, naming the file
    assert main(args + ["--on-error", "skip", "--out", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in good] + [str(bad)]
    assert all(len(r["topk"]) == 2 and r["topk"][0]["probability"] >= r["topk"][1]["probability"] for r in rows[:2])
    assert rows[2]["label"] is None and "unreadable" in rows[2]["error"]


def test_wrong_encoder_is_a_named_error(tiny_heads):
    from clipadapt.encoders import load_encoder

    head = load_head(tiny_heads["tip"])
    with pytest.raises(HeadMismatchError, match="clipadapt-test-tiny-rn"):
        head.as_module(load_encoder("clipadapt-test-tiny-rn", device="cpu"))


def test_tip_plus_plus_head_stores_the_adapter_byte_for_byte(tiny_setup, tiny_heads, tmp_path):
    from clipadapt.fileio import file_sha256

    head = load_head(tiny_heads["tip++"])
    written = head.adapter_checkpoint(tmp_path)
    original = tiny_setup["adapter"] / "adapter.safetensors"
    assert file_sha256(written) == head.meta["adapter"]["sha256"] == file_sha256(original)


# ----------------------------------------------------------------------------------------- export
def _pixels(head, paths):
    from clipadapt.data.dataset import open_rgb

    enc = head.encoder(device="cpu")
    return torch.stack([enc.preprocess(open_rgb(p)) for p in paths])


def test_the_module_of_every_head_gives_predict_logits(tiny_setup, tiny_heads, tmp_path):
    s = tiny_setup
    paths = sorted((s["images"] / "test").rglob("*.png"))
    for method, path in tiny_heads.items():
        cli = predicted_logits(tmp_path, path, [*map(str, paths), "--cache-dir", str(s["root"] / "cache")], method)
        head = load_head(path)
        with torch.no_grad():
            assert max_diff(head.as_module()(_pixels(head, paths)), cli) <= 1e-4, method


@pytest.mark.parametrize("method, fmt", [("tipx", "onnx"), ("tip++", "torch-export"), ("dn", "torch-export")])
def test_exported_module_equals_predict(method, fmt, tiny_setup, tiny_heads, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'clipadapt[onnx]')")
        pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip install 'clipadapt[onnx]')")
    s = tiny_setup
    paths = sorted((s["images"] / "test").rglob("*.png"))
    cache = ["--cache-dir", str(s["root"] / "cache")]
    cli = predicted_logits(tmp_path, tiny_heads[method], [*map(str, paths), *cache], "p")
    head = load_head(tiny_heads[method])
    pixels = _pixels(head, paths)
    with torch.no_grad():
        assert max_diff(head.as_module()(pixels), cli) <= 1e-4
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt2")
    assert main(["export", "--head", str(tiny_heads[method]), "--format", fmt, "--out", str(out)]) == 0
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        exported = session.run(["logits"], {"pixels": pixels.numpy()})[0]
    else:
        with torch.no_grad():
            exported = torch.export.load(str(out)).module()(pixels)
    assert max_diff(exported, cli) <= 1e-4


def test_the_cli_method_list_is_the_estimator_table():
    from clipadapt.constants import HEAD_METHODS
    from clipadapt.heads.head import ESTIMATORS

    assert set(HEAD_METHODS) == set(ESTIMATORS) and len(HEAD_METHODS) == len(ESTIMATORS)


@pytest.mark.parametrize("method", ["zeroshot", "dn"])
def test_a_models_own_logit_scale_and_bias_are_stored_and_used_as_eval_does(method, tmp_path):
    from clipadapt.features.io import load_feature_dir

    fs = load_feature_dir("builtin:coco500")
    fs.meta.update(logit_scale=30.0, logit_bias=-2.5)
    feats = save_feature_dir(fs, tmp_path / "f")
    ref = tmp_path / "eval.npy"
    assert main(["eval", "--features", str(feats), "--method", method, "--save-logits", str(ref),
                 "--out", str(tmp_path / "e")]) == 0
    assert main(["fit", "--features", str(feats), "--method", method, "--out", str(tmp_path / "h.safetensors")]) == 0
    head = load_head(tmp_path / "h.safetensors")
    assert (head.estimator.logit_scale, head.estimator.logit_bias) == (30.0, -2.5)
    assert head.meta["selection"]["logit"]["logit_scale"] == 30.0
    got = predicted_logits(tmp_path, tmp_path / "h.safetensors", ["--features", f"{feats}:test"], method)
    assert max_diff(got, np.load(ref)) <= TOL


def test_val_names_the_selection_split_and_test_is_refused_for_selection(coco_dirs, coco_heads, tmp_path, capsys):
    from clipadapt.features.io import load_feature_dir

    feats, _ = coco_dirs
    fs = load_feature_dir(feats)
    fs.splits["unlabeled"] = fs.splits.pop("val")  # feature directories name their splits; any labelled one will do
    renamed = save_feature_dir(fs, tmp_path / "renamed")
    out = tmp_path / "tip.safetensors"
    assert main(["fit", "--features", str(renamed), "--method", "tip", "--shots", "2", "--seed", "1",
                 "--val", "unlabeled", *SMALL_GRIDS, "--out", str(out)]) == 0
    head, same = load_head(out), load_head(coco_heads["tip"])  # the same rows under another name: the same head
    assert head.meta["selection"]["validation"]["source"] == "split 'unlabeled'"
    assert head.meta["tensors_sha256"] == same.meta["tensors_sha256"] and head.hyperparameters == same.hyperparameters
    assert main(["fit", "--features", str(feats), "--method", "tip", "--shots", "2", "--val", "test",
                 "--out", str(tmp_path / "bad.safetensors")]) == 2
    assert "overlaps the test data" in capsys.readouterr().err
