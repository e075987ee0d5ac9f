"""The few-shot protocol runner and `clipadapt fewshot` (docs/methods.md §7): sampling, pairing, isolation of test
labels."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from clipadapt.cli import main
from clipadapt.errors import ConfigError, DatasetError, FeatureDirError
from clipadapt.eval.fewshot import DirectorySource, FewShotConfig, PipelineSource, run_fewshot
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.methods.tip_adapter import TipAdapter
from clipadapt.report.plots import line_plot

C, D = 4, 10
SMALL_GRIDS = {"tip": {"alpha": [0.5, 2.0], "beta": [1.0, 5.0]},
               "tipx": {"alpha": [0.5, 2.0], "beta": [1.0, 5.0], "gamma": [0.1, 1.0]}}


def _featureset(seed=0, train_per_class=5, views=2, model="synthetic"):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=g)

    def split(n_per_class, v=None):
        y = torch.arange(C).repeat_interleave(n_per_class)
        shape = (y.numel(), v, D) if v else (y.numel(), D)
        base = protos[y].unsqueeze(1) if v else protos[y]
        return FeatureSplit(base + 0.9 * torch.randn(*shape, generator=g), y)

    return FeatureSet([f"class{i}" for i in range(C)], protos,
                      {"train": split(train_per_class, views), "val": split(6), "test": split(7)},
                      {"model": model, "dataset": "clusters"})


def _config(methods, shots=(1, 2), seeds=(1, 2), **kw):
    return FewShotConfig(shots=list(shots), seeds=list(seeds), methods=list(methods), grids=SMALL_GRIDS,
                         tipf_epochs=2, **kw)


def _hp(run):
    return {k: v for k, v in run["hyperparameters"].items()}


def test_search_never_sees_test_labels_poisoned_test_labels_change_nothing_but_test_accuracy():
    fs = _featureset()
    clean = run_fewshot(DirectorySource(fs), _config(["tip", "tipx"]), progress=False)
    test = fs.splits["test"]
    fs.splits["test"] = FeatureSplit(test.image, (test.label + 1) % C)  # every test label wrong
    poisoned = run_fewshot(DirectorySource(fs), _config(["tip", "tipx"]), progress=False)
    for a, b in zip(clean["runs"], poisoned["runs"]):
        assert _hp(a) == _hp(b) and a["val_top1"] == b["val_top1"]
    assert any(a["test_top1"] != b["test_top1"] for a, b in zip(clean["runs"], poisoned["runs"]))


def test_cache_is_built_from_the_sampled_rows_and_scored_with_the_chosen_params():
    fs = _featureset(1)
    out = run_fewshot(DirectorySource(fs), _config(["tip"], shots=[2], seeds=[3]), progress=False)
    idx = out["indices"]["shots2_seed3"]
    labels = fs.splits["train"].label[idx]
    assert sorted(labels.tolist()) == sorted(list(range(C)) * 2)  # exactly 2 per class
    run = out["runs"][0]
    model = TipAdapter(alpha=run["hyperparameters"]["alpha"], beta=run["hyperparameters"]["beta"])
    model.fit(fs.splits["train"].image[idx], labels, fs.text)
    pred = model.predict_logits(fs.splits["test"].image).argmax(1)
    assert run["test_top1"] == pytest.approx(100.0 * (pred == fs.splits["test"].label).float().mean().item())


def test_plus_plus_is_paired_with_identical_adapted_features_it_equals_the_original():
    fs = _featureset(2)
    out = run_fewshot(DirectorySource(fs, _featureset(2)), _config(["tip", "tipx", "tip++", "tipx++"]), progress=False)
    by = {(r["method"], r["shots"], r["seed"]): r for r in out["runs"]}
    for (method, shots, seed), run in by.items():
        if method.endswith("++"):
            twin = by[(method[:-2], shots, seed)]
            assert run["test_top1"] == twin["test_top1"] and _hp(run) == _hp(twin)


def test_adapted_features_from_another_model_or_other_rows_are_clear_errors():
    fs = _featureset()
    with pytest.raises(FeatureDirError, match="different models"):
        DirectorySource(fs, _featureset(model="other-model"))
    with pytest.raises(FeatureDirError, match="split 'train' has 12 rows"):
        DirectorySource(fs, _featureset(train_per_class=3))


def test_too_few_training_images_names_the_class_unless_allow_fewer():
    fs = _featureset(train_per_class=3)
    with pytest.raises(DatasetError, match="class0"):
        run_fewshot(DirectorySource(fs), _config(["tip"], shots=[4], seeds=[1]), progress=False)
    out = run_fewshot(DirectorySource(fs), _config(["tip"], shots=[4], seeds=[1], allow_fewer=True), progress=False)
    assert out["runs"][0]["cache_size"] == 3 * C


def test_summary_is_mean_and_sample_std_over_seeds():
    out = run_fewshot(DirectorySource(_featureset(4)), _config(["zeroshot", "tip-f"], seeds=[1, 2, 3]), progress=False)
    for row in out["summary"]:
        accs = [r["test_top1"] for r in out["runs"] if r["method"] == row["method"] and r["shots"] == row["shots"]]
        assert row["test_top1_mean"] == pytest.approx(statistics.mean(accs))
        assert row["test_top1_std"] == pytest.approx(statistics.stdev(accs))


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown few-shot method"):
        _config(["tip", "coop"])


class FakePipeline:
    """get_feature_set stand-in: records calls; the train split gets `views` copies of the requested rows."""

    def __init__(self, fs, train_dim=D):
        self.fs, self.calls, self.train_dim = fs, [], train_dim

    def __call__(self, splits, views=None, seed=None, indices=None, adapter=None):
        self.calls.append({"splits": splits, "views": views, "seed": seed, "indices": indices, "adapter": adapter})
        out = {}
        for name in splits:
            split = self.fs.splits[name]
            if indices and name in indices:
                split = split.subset(indices[name])
                image = split.image.mean(1) if split.image.ndim == 3 else split.image
                image = image[:, : self.train_dim].unsqueeze(1).repeat(1, views[name], 1)
                split = FeatureSplit(image, split.label)
            out[name] = split
        return FeatureSet(self.fs.classnames, self.fs.text, out, dict(self.fs.meta))


def test_pipeline_source_encodes_only_the_sampled_rows_with_views(tmp_path):
    fake = FakePipeline(_featureset(5))
    out = run_fewshot(PipelineSource(fake, views=3), _config(["tip"], shots=[2], seeds=[7]), index_dir=tmp_path,
                      progress=False)
    train_calls = [c for c in fake.calls if c["indices"]]
    written = json.loads((tmp_path / "shots2_seed7.json").read_text())["indices"]
    assert train_calls == [{"splits": ["train"], "views": {"train": 3}, "seed": 7, "indices": {"train": written},
                            "adapter": None}]
    assert out["runs"][0]["cache_size"] == len(written) == 2 * C


def test_pipeline_cache_from_a_different_model_is_a_clear_error():
    with pytest.raises(FeatureDirError, match="different models"):
        run_fewshot(PipelineSource(FakePipeline(_featureset(), train_dim=6)), _config(["tip"], shots=[1], seeds=[1]),
                    progress=False)


def test_cli_writes_tables_plot_and_index_lists(tmp_path, capsys):
    save_feature_dir(_featureset(6), tmp_path / "feats")
    save_feature_dir(_featureset(6), tmp_path / "adapted")
    code = main(["fewshot", "--features", str(tmp_path / "feats"), "--adapted-features", str(tmp_path / "adapted"),
                 "--shots", "1,2", "--seeds", "1,2", "--methods", "zeroshot,tip,tipx++", "--tipf-epochs", "1",
                 "--grid", "tip.alpha=0.5,1", "--grid", "tip.beta=1:7:3", "--grid", "tipx.alpha=1",
                 "--grid", "tipx.beta=1,5", "--grid", "tipx.gamma=0.1", "--out", str(tmp_path / "out")])
    assert code == 0
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 2 * 2 * 3
    assert results["runs"][1]["hyperparameters"]["grid_size"] == {"alpha": 2, "beta": 3}
    assert (out / "summary.md").read_text().startswith("| method | 1-shot | 2-shot |")
    assert (out / "accuracy_vs_shots.png").read_bytes()[:4] == b"\x89PNG"
    assert (sorted(p.name for p in (out / "indices").iterdir())
            == [f"shots{k}_seed{s}.json" for k in (1, 2) for s in (1, 2)])
    assert "tipx++" in capsys.readouterr().out


def test_cli_plus_plus_without_adapted_features_is_a_clear_error(tmp_path, capsys):
    save_feature_dir(_featureset(), tmp_path / "feats")
    assert main(["fewshot", "--features", str(tmp_path / "feats"), "--methods", "tip++", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--adapted-features" in capsys.readouterr().err


def test_line_plot_writes_png_and_names_missing_columns(tmp_path):
    rows = [{"k": 1, "acc": 50.0, "m": "a"}, {"k": 2, "acc": 60.0, "m": "a"}, {"k": 1, "acc": 40.0, "m": "b"}]
    assert line_plot(rows, "k", "acc", "m", tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ConfigError, match="std"):
        line_plot(rows, "k", "acc", "m", tmp_path / "q.png", yerr="std")


class FakeTrainDataset:
    def __init__(self, labels):
        self.labels = labels

    def fingerprint(self):
        return "fp-123"


def test_pipeline_source_samples_from_dataset_labels_without_encoding_train(tmp_path):
    fs = _featureset(8)
    fake = FakePipeline(fs)
    source = PipelineSource(fake, views=2, train_dataset=FakeTrainDataset(fs.splits["train"].label.tolist()))
    run_fewshot(source, _config(["tip"], shots=[1], seeds=[4]), index_dir=tmp_path, progress=False)
    assert [c["splits"] for c in fake.calls] == [["val", "test"], ["train"]]  # no un-augmented train pass
    written = json.loads((tmp_path / "shots1_seed4.json").read_text())
    assert written["fingerprint"] == "fp-123" and (written["shots"], written["seed"]) == (1, 4)
    assert fake.calls[1]["indices"] == {"train": written["indices"]}
