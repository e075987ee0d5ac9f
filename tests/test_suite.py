"""`clipadapt suite`: cells equal the single commands, resumability, failures recorded, aggregation, shipped configs."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch

from clipadapt.cli import build_parser, main
from clipadapt.eval.suite import SuiteStore, expand_cells, load_config, shipped_configs
from clipadapt.features import FeatureSet, FeatureSplit, save_feature_dir
from clipadapt.report.suite_report import aggregate, compare_expected

C, D = 4, 10
GRID = ["tip.alpha=0.5,2", "tip.beta=1,5", "tipx.alpha=0.5,2", "tipx.beta=1,5", "tipx.gamma=0.1,1"]


def _featureset(seed: int) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(C, D, generator=g)

    def split(n_per_class, views=None):
        y = torch.arange(C).repeat_interleave(n_per_class)
        shape = (y.numel(), views, D) if views else (y.numel(), D)
        base = protos[y].unsqueeze(1) if views else protos[y]
        return FeatureSplit(base + 1.2 * torch.randn(*shape, generator=g), y)

    return FeatureSet([f"class{i}" for i in range(C)], protos,
                      {"train": split(5, 2), "val": split(4), "test": split(6), "unlabeled": split(5)},
                      {"model": "synthetic", "dataset": f"clusters{seed}"})


@pytest.fixture
def feature_dirs(tmp_path):
    dirs = []
    for i, name in enumerate(["alpha", "beta", "gamma"]):
        save_feature_dir(_featureset(i), tmp_path / "feats" / name)
        dirs.append(tmp_path / "feats" / name)
    return dirs


def _write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _feature_config(tmp_path, seeds="[1, 2]", dn_samples=10) -> Path:
    grid = ", ".join(f'"{g}"' for g in GRID)
    return _write_config(tmp_path / "suite.toml", f"""
name = "feature-suite"
[vars]
FEATS = "unset"

[[task]]
task = "fewshot"
datasets = ["${{FEATS}}/alpha", "${{FEATS}}/beta", "${{FEATS}}/gamma"]
methods = ["zeroshot", "tip", "tipx"]
shots = [1, 2]
seeds = {seeds}
options = {{ grid = [{grid}] }}

[[task]]
task = "dn"
datasets = ["${{FEATS}}/alpha", "${{FEATS}}/beta", "${{FEATS}}/gamma"]
seeds = [0, 1]
options = {{ dn-samples = {dn_samples} }}

[[expected]]
task = "fewshot"
dataset = "mean"
method = "tip"
shots = 1
value = 50.0
source = "made up for the test"
""")


def _cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def test_feature_suite_cells_equal_single_commands_and_summary_is_literal_aggregation(tmp_path, feature_dirs):
    out = tmp_path / "run"
    config = _feature_config(tmp_path)
    assert main(["suite", "run", str(config), "--out", str(out), "--set", f"FEATS={tmp_path / 'feats'}", "--no-plots"]) == 0
    cells = _cells(out)
    assert len(cells) == 3 * 3 * 2 + 3 * 2 and all(c["status"] == "done" for c in cells)
    single_fewshot, single_dn = {}, {}
    for d in feature_dirs:  # the single commands a user would type
        assert main(["fewshot", "--features", str(d), "--shots", "1,2", "--seeds", "1,2", "--methods",
                     "zeroshot,tip,tipx", *[a for g in GRID for a in ("--grid", g)], "--out", str(tmp_path / d.name)]) == 0
        single_fewshot[d.name] = json.loads((tmp_path / d.name / "results.json").read_text())["runs"]
        for seed in (0, 1):
            path = tmp_path / f"{d.name}_dn{seed}"
            assert main(["eval", "--features", str(d), "--method", "dn", "--dn-samples", "10", "--dn-seed", str(seed),
                         "--out", str(path)]) == 0
            single_dn[(d.name, seed)] = json.loads((path / "results.json").read_text())
    for c in cells:
        cell, output = c["cell"], c["result"]["output"]
        if cell["task"] == "fewshot":
            expected = [r for r in single_fewshot[cell["dataset"]] if r["method"] == cell["method"] and r["seed"] == cell["seed"]]
            assert output["runs"] == expected
            assert c["result"]["command"].startswith("clipadapt fewshot --features")
        else:
            one = single_dn[(cell["dataset"], cell["seed"])]
            assert (output["top1"], output["without_dn"]) == (one["top1"], one["without_dn"])
    # the summary: a literal mean / sample std over seeds, and the mean over the three datasets
    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["task"], r["method"], r["shots"], r["dataset"]): r for r in summary["rows"]}
    for method in ("zeroshot", "tip", "tipx"):
        for shots in (1, 2):
            per_dataset = []
            for name, runs in single_fewshot.items():
                values = [r["test_top1"] for r in runs if r["method"] == method and r["shots"] == shots]
                row = rows[("fewshot", method, shots, name)]
                assert row["mean"] == pytest.approx(statistics.mean(values), abs=1e-3)  # summary.json: 4 decimals
                assert row["std"] == pytest.approx(statistics.stdev(values), abs=1e-3)
                per_dataset.append(statistics.mean(values))
            assert rows[("fewshot", method, shots, "mean")]["mean"] == pytest.approx(statistics.mean(per_dataset), abs=1e-3)
    dn_mean = statistics.mean(statistics.mean(single_dn[(d.name, s)]["top1"] for s in (0, 1)) for d in feature_dirs)
    assert rows[("dn", "dn", None, "mean")]["mean"] == pytest.approx(dn_mean, abs=1e-3)
    (exp,) = summary["expected"]
    assert exp["delta"] == pytest.approx(rows[("fewshot", "tip", 1, "mean")]["mean"] - 50.0, abs=1e-3)
    md = (out / "summary.md").read_text()
    assert "| task | backbone | method | shots | metric | alpha | beta | gamma | mean |" in md and "Δ" in md


def test_kill_and_resume_runs_only_the_remaining_cells(tmp_path, feature_dirs, monkeypatch):
    import clipadapt.cli.suite as suite_cli

    out, config = tmp_path / "run", _feature_config(tmp_path, seeds="[1]")
    real, calls = suite_cli.execute_cell, []

    def interrupted(cell, work):
        calls.append(cell.key)
        if len(calls) == 4:
            raise KeyboardInterrupt("killed mid-suite")
        return real(cell, work)

    monkeypatch.setattr(suite_cli, "execute_cell", interrupted)
    argv = ["suite", "run", str(config), "--out", str(out), "--set", f"FEATS={tmp_path / 'feats'}", "--no-plots"]
    assert main(argv) == 130  # Ctrl-C: "clipadapt suite: interrupted", the finished cells kept
    done_before = {c["key"] for c in _cells(out)}
    assert len(done_before) == 3
    calls.clear()
    monkeypatch.setattr(suite_cli, "execute_cell", lambda cell, work: (calls.append(cell.key), real(cell, work))[1])
    assert main(argv) == 0
    total = 3 * 3 + 3 * 2
    assert len(calls) == total - 3 and not done_before & set(calls)
    # a changed config re-runs only the cells it changes: a new seed adds fewshot cells, dn options stay
    calls.clear()
    config = _feature_config(tmp_path, seeds="[1, 3]")
    assert main(argv) == 0
    assert len(calls) == 3 * 3  # the seed-3 cells only
    calls.clear()
    _feature_config(tmp_path, seeds="[1, 3]", dn_samples=7)
    assert main(argv) == 0
    assert len(calls) == 3 * 2  # the dn cells only


def test_failing_cell_is_recorded_and_the_rest_still_run(tmp_path, feature_dirs, capsys):
    config = _write_config(tmp_path / "s.toml", f"""
[[task]]
task = "dn"
datasets = ["{feature_dirs[0]}", "{tmp_path / 'missing-dir'}", "{feature_dirs[2]}"]
options = {{ dn-samples = 5 }}
""")
    out = tmp_path / "run"
    assert main(["suite", "run", str(config), "--out", str(out)]) == 1
    states = {c["cell"]["dataset"]: c for c in _cells(out)}
    assert states["alpha"]["status"] == states["gamma"]["status"] == "done"
    assert states["missing-dir"]["status"] == "failed" and "missing-dir" in states["missing-dir"]["error"]["message"]
    capsys.readouterr()
    assert main(["suite", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 done, 0 pending, 1 failed of 3 cells" in text and "missing-dir" in text
    summary = json.loads((out / "summary.json").read_text())
    assert {r["datasets"] for r in summary["rows"] if r["dataset"] == "mean"} == {"2/3"}


def test_an_unknown_option_fails_its_cell_not_the_suite(tmp_path, feature_dirs):
    config = _write_config(tmp_path / "s.toml", f"""
[[task]]
task = "dn"
label = "bad"
datasets = ["{feature_dirs[0]}"]
options = {{ no-such-option = 1 }}
[[task]]
task = "dn"
datasets = ["{feature_dirs[1]}"]
""")
    out = tmp_path / "run"
    assert main(["suite", "run", str(config), "--out", str(out)]) == 1
    states = sorted(c["status"] for c in _cells(out))
    assert states == ["done", "failed"]


def test_aggregate_against_a_literal_computation():
    records = [{"task": "t", "dataset": d, "backbone": "b", "method": "m", "shots": 1, "seed": s, "metric": "top1",
                "value": v} for d, s, v in [("x", 1, 10.0), ("x", 2, 20.0), ("y", 1, 40.0), ("y", 2, 60.0), ("z", 1, 5.0)]]
    rows = {r["dataset"]: r for r in aggregate(records, ["x", "y", "z"])}
    assert rows["x"]["mean"] == 15.0 and rows["x"]["std"] == pytest.approx(statistics.stdev([10, 20]))
    assert rows["z"]["std"] == 0.0 and rows["z"]["seeds"] == 1
    # mean over datasets: per seed the mean over the datasets that have it, then mean ± std over seeds
    seed1, seed2 = (10 + 40 + 5) / 3, (20 + 60) / 2
    assert rows["mean"]["mean"] == pytest.approx((seed1 + seed2) / 2)
    assert rows["mean"]["std"] == pytest.approx(statistics.stdev([seed1, seed2]))
    assert rows["mean"]["datasets"] == "3/3"
    exp = compare_expected(list(rows.values()), [{"dataset": "y", "method": "m", "value": 45.0}, {"dataset": "q", "value": 1.0}])
    assert exp[0]["delta"] == pytest.approx(5.0) and exp[1]["ours"] is None and exp[1]["delta"] is None


def test_undefined_variable_names_itself(tmp_path):
    from clipadapt.errors import ConfigError

    config = _write_config(tmp_path / "s.toml", '[[task]]\ntask = "dn"\ndatasets = ["${NOPE}/x"]\n')
    with pytest.raises(ConfigError, match=r"\$\{NOPE\}.*--set NOPE="):
        load_config(config)


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_expands_into_commands_the_parser_accepts(name, tmp_path):
    from clipadapt.cli.suite import cell_argv

    config = load_config(shipped_configs()[name], {"DATA": "/data", "ADAPTER": "/adapters/a", "FEATURES": "/f"})
    cells = expand_cells(config)
    assert cells
    parser = build_parser()
    for cell in cells:
        parser.parse_args(cell_argv(cell, tmp_path / cell.key))
    assert all("value" in row and "source" in row for row in config.get("expected", []))


def test_list_shows_shipped_configs(capsys):
    assert main(["suite", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in shipped_configs())


def test_dataset_spec_suite_with_the_tiny_model_equals_single_commands(tmp_path):
    """Three generated image datasets through the tiny model and the feature cache: each cell equals the command."""
    from tests._imagedata import make_imagefolder

    roots = [make_imagefolder(tmp_path / f"data{i}", splits=("train", "val", "test"), per_class=3) for i in range(3)]
    cache = tmp_path / "cache"
    config = _write_config(tmp_path / "s.toml", f"""
[[task]]
task = "fewshot"
datasets = [{", ".join(f'"imagefolder:{r}"' for r in roots)}]
backbones = ["clipadapt-test-tiny-vit"]
methods = ["tip"]
shots = [1, 2]
seeds = [1]
options = {{ views = 2, cache-dir = "{cache}", grid = ["tip.alpha=0.5,2", "tip.beta=1,5"] }}

[[task]]
task = "dn"
datasets = [{", ".join(f'"imagefolder:{r}"' for r in roots)}]
backbones = ["clipadapt-test-tiny-vit"]
options = {{ dn-source = "val", cache-dir = "{cache}" }}
""")
    out = tmp_path / "run"
    assert main(["suite", "run", str(config), "--out", str(out), "--no-plots"]) == 0
    cells = _cells(out)
    assert len(cells) == 3 + 3 and all(c["status"] == "done" for c in cells)
    for c in cells:
        cell = c["cell"]
        spec = cell["source"]["spec"]
        if cell["task"] == "fewshot":
            single = tmp_path / "single" / cell["dataset"] / cell["method"]
            assert main(["fewshot", "--model", "clipadapt-test-tiny-vit", "--dataset", spec, "--shots", "1,2",
                         "--seeds", "1", "--methods", cell["method"], "--views", "2", "--cache-dir", str(cache),
                         "--grid", "tip.alpha=0.5,2", "--grid", "tip.beta=1,5", "--out", str(single)]) == 0
            assert c["result"]["output"]["runs"] == json.loads((single / "results.json").read_text())["runs"]
            assert c["result"]["model"] == "clipadapt-test-tiny-vit"
            assert c["result"]["data_fingerprint"]["test"].startswith("dataset-sha256:")
        else:
            path = tmp_path / "single" / f"{cell['dataset']}_dn"
            assert main(["eval", "--model", "clipadapt-test-tiny-vit", "--dataset", spec, "--method", "dn",
                         "--dn-source", "val", "--cache-dir", str(cache), "--out", str(path)]) == 0
            one = json.loads((path / "results.json").read_text())
            assert (c["result"]["output"]["top1"], c["result"]["output"]["without_dn"]) == (one["top1"], one["without_dn"])
