"""Characterization tests: the safety net for splitting `train_adapters`, `evaluate_synergy`, `run_fewshot` and
`imo_overlap` into small functions with unchanged behaviour (same outputs, files, state format, RNG use, errors).

Most tests compare against an independent literal computation or pin a format. The few that compare against
numbers *recorded from the pre-refactor code on a fixed seed* say so in their docstring: they are acceptable
only as this refactor's safety net (they pin "unchanged", not "correct").
"""

from __future__ import annotations

import json

import pytest
import torch
from _imo_images import StripesDataset
from _synergy_data import informative_and_noisy
from conftest import tiny

from clipadapt.adapters import imo_overlap
from clipadapt.adapters.training import AdapterTrainConfig, train_adapters
from clipadapt.errors import ConfigError
from clipadapt.eval.fewshot import DirectorySource, FewShotConfig, run_fewshot
from clipadapt.eval.synergy import ScoreSet, evaluate_synergy
from clipadapt.features import FeatureSet, FeatureSplit

DINO_SMALL = dict(local_crops=1, dino_out_dim=32, dino_hidden_dim=16, dino_bottleneck_dim=8)


# ----------------------------------------------------------------------------------------- train_adapters
def _train(tmp_path, mode: str, **extra):
    config = AdapterTrainConfig(mode=mode, batch_size=8, max_steps=3, save_every=2, **extra)
    return train_adapters(tiny(), StripesDataset(16, seed=1), tmp_path, config=config, progress=False)


@pytest.mark.parametrize("mode, extra", [("supervised", {}), ("selfsup", DINO_SMALL)])
def test_train_state_file_holds_the_documented_fields(tmp_path, mode, extra):
    """train_state.pt keeps the resumable format: config, step, losses, adapters, head, optimizer, rng
    (+ teacher and centre in selfsup), every tensor on the CPU."""
    model = tiny()
    config = AdapterTrainConfig(mode=mode, batch_size=8, max_steps=2, save_every=1, **extra)
    result = train_adapters(model, StripesDataset(16, seed=1), tmp_path, config=config, progress=False)
    state = torch.load(tmp_path / "train_state.pt", map_location="cpu", weights_only=True)
    expected = {"config", "step", "losses", "adapters", "head", "optimizer", "rng"}
    expected |= {"teacher", "center"} if mode == "selfsup" else set()
    assert set(state) == expected
    assert state["step"] == 2 and state["losses"] == result.losses
    assert state["config"]["mode"] == mode and state["config"]["global_crop_scale"] == [0.4, 1.0]
    visual_adapters = {k: v for k, v in model.visual.named_parameters() if ".imo_adapter." in k}
    assert set(state["adapters"]) == set(visual_adapters)
    assert all(torch.equal(state["adapters"][k], v) for k, v in visual_adapters.items())
    assert set(state["optimizer"]) == {"state", "param_groups"} and set(state["rng"]) == {"cpu"}
    if mode == "selfsup":
        assert {k.split(".")[0] for k in state["teacher"]} == {"visual", "head"}
        assert state["center"].shape == (DINO_SMALL["dino_out_dim"],)
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert log == {"mode": mode, "total_steps": 2, "steps": 2, "loss": result.losses}


def test_supervised_losses_on_a_fixed_seed_are_unchanged(tmp_path):
    """Recorded from the pre-refactor code (refactor safety net only): 2 supervised steps, seed 0."""
    result = _train(tmp_path, "supervised")
    assert result.losses == pytest.approx([0.6920936703681946, 0.677304208278656], rel=1e-5)


def test_selfsup_losses_on_a_fixed_seed_are_unchanged(tmp_path):
    """Recorded from the pre-refactor code (refactor safety net only): 3 DINO steps, seed 0."""
    result = _train(tmp_path, "selfsup", **DINO_SMALL)
    assert result.losses == pytest.approx([0.7592712640762329, 0.7905861735343933, 0.8460454344749451], rel=1e-5)


@pytest.mark.parametrize("mode, extra, draws", [
    ("supervised", {}, [0.3355562090873718, 0.527458131313324, 0.28057146072387695]),
    ("selfsup", DINO_SMALL, [0.11779797077178955, 0.9694417715072632, 0.4161410927772522]),
])
def test_global_rng_is_left_where_the_pre_refactor_code_left_it(tmp_path, mode, extra, draws):
    """The next global draws after training, recorded from the pre-refactor code (refactor safety net only):
    pins the order and number of draws from the global RNG (seeding, loader creation, dropout, augmentation)."""
    _train(tmp_path, mode, **extra)
    assert torch.rand(3).tolist() == draws


def test_existing_adapters_of_another_width_and_an_empty_dataset_are_errors(tmp_path):
    model = tiny()
    ds = StripesDataset(8)
    train_adapters(model, ds, tmp_path / "a", config=AdapterTrainConfig(batch_size=4, max_steps=1), progress=False)
    with pytest.raises(ConfigError, match="already has adapters of width 64, scale 0.03; training asked for width 8"):
        train_adapters(model, ds, tmp_path / "b", config=AdapterTrainConfig(batch_size=4, max_steps=1, width=8),
                       progress=False)
    with pytest.raises(ConfigError, match="the dataset is empty"):
        train_adapters(tiny(), [], tmp_path / "c", progress=False)


# ----------------------------------------------------------------------------------------- imo_overlap
def test_pair_sampling_is_the_documented_seeded_draw_counted_by_hand():
    """sample='pairs': i ~ U{0..N-1}, j ~ U{0..N-2} shifted past i, from Generator(seed); histogram by a loop."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 5, dtype=torch.float64, generator=g), torch.arange(3).repeat(10)
    r = imo_overlap(x, y, bins=8, max_pairs=200, seed=4, sample="pairs")
    gen = torch.Generator().manual_seed(4)
    i = torch.randint(30, (200,), generator=gen)
    j = torch.randint(29, (200,), generator=gen)
    j = j + (j >= i).long()
    xn = x / x.norm(dim=1, keepdim=True)
    same, diff = [0] * 8, [0] * 8
    for a, b in zip(i.tolist(), j.tolist()):
        s = float(xn[a] @ xn[b])
        k = min(int((s + 1) / 0.25), 7)
        (same if y[a] == y[b] else diff)[k] += 1
    overlap = sum(min(p / sum(same), u / sum(diff)) for p, u in zip(same, diff))
    assert (r.n_same, r.n_diff) == (sum(same), sum(diff)) and r.overlap == pytest.approx(overlap, abs=1e-12)
    assert r.sampled and r.sample == "pairs" and r.seed == 4 and r.total_pairs == 435


def test_imo_argument_errors_name_the_argument():
    x, y = torch.randn(6, 3), torch.arange(2).repeat(3)
    with pytest.raises(ConfigError, match=r"max_pairs must be >= 1 or None, got 0"):
        imo_overlap(x, y, max_pairs=0)
    with pytest.raises(ConfigError, match=r"sample must be 'items' or 'pairs', got 'x'"):
        imo_overlap(x, y, sample="x")
    with pytest.raises(ConfigError, match=r"needs embeddings \(N, D\) and labels \(N,\), got \(6, 3\) and \(5,\)"):
        imo_overlap(x, y[:5])
    with pytest.raises(ConfigError, match="bins must be >= 1"):
        imo_overlap(x, y, bins=0)
    r = imo_overlap(x, y, max_pairs=100, seed=9)  # budget above N(N-1)/2 = 15: exact, no seed recorded
    assert not r.sampled and r.seed is None and r.sample is None


# ----------------------------------------------------------------------------------------- evaluate_synergy
def test_synergy_report_keys_and_table_columns_are_unchanged():
    """The JSON keys (in order) and table columns the CLI writes: recorded from the pre-refactor code (refactor
    safety net only); the values are pinned by test_synergy*.py."""
    logits, emb, y = informative_and_noisy(60, seed=3)
    held_logits, held_emb, held_y = informative_and_noisy(40, seed=4)
    report = evaluate_synergy(["g", "n"], ScoreSet(logits, y, emb), heldout=ScoreSet(held_logits, held_y, held_emb),
                              costs={"g": 2, "n": 0.5}, cost_label="ms", thresholds=(0.5, 0.9),
                              nlc_kwargs={"max_epochs": 2})
    r = report.results
    assert list(r) == ["backbones", "accuracy", "best_single", "oracle_top1", "synergy", "agreement", "complementarity",
                       "accuracy_top5", "oracle_top5", "n", "num_classes", "heldout_n", "topk", "combinations",
                       "cascade", "costs", "cost_unit", "cascade_order"]
    assert (r["n"], r["num_classes"], r["heldout_n"], r["topk"]) == (60, 10, 40, [1, 5])
    assert r["costs"] == {"g": 2.0, "n": 0.5} and r["cascade_order"] == ["n", "g"] and r["cost_unit"] == "ms"
    t = report.tables
    assert list(t) == ["per_backbone", "combinations", "subsets", "agreement", "complementarity", "per_class_best",
                       "cascade"]
    assert list(t["per_backbone"][0]) == ["backbone", "top1", "top5", "cost"]
    assert list(t["combinations"][0]) == ["method", "top1", "top5", "gain_over_best", "cost"]
    assert list(t["cascade"][0]) == ["threshold", "top1", "top5", "mean_cost", "stopped_after_1", "stopped_after_2"]
    assert t["agreement"][0] == {"backbone": "g", "g": r["agreement"][0][0], "n": r["agreement"][0][1]}
    assert r["combinations"]["nlc"]["hyperparameters"]["max_epochs"] == 2 and "temperatures" in r["combinations"]["temperature_mean"]
    kinds = [p["kind"] for p in report.points]
    assert kinds == ["single"] * 2 + ["subset"] * len(t["subsets"]) + ["combiner"] * len(t["combinations"])
    assert report.names == ["g", "n"] and report.cost_label == "ms" and report.agreement == r["agreement"]


def test_synergy_held_out_mismatches_are_errors():
    logits, _, y = informative_and_noisy(20, seed=3)
    held, _, held_y = informative_and_noisy(10, seed=4)
    with pytest.raises(ConfigError, match="held-out logits have 5 classes but the evaluated logits have 10"):
        evaluate_synergy(["g", "n"], ScoreSet(logits, y), heldout=ScoreSet([z[:, :5] for z in held], held_y))
    with pytest.raises(ConfigError, match=r"held-out split: labels have shape \(3,\) but the logits have N=10"):
        evaluate_synergy(["g", "n"], ScoreSet(logits, y), heldout=ScoreSet(held, held_y[:3]))


# ----------------------------------------------------------------------------------------- run_fewshot
def _clusters(seed: int = 0, views: int = 2) -> FeatureSet:
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(3, 6, generator=g)

    def split(per_class, v=None):
        y = torch.arange(3).repeat_interleave(per_class)
        shape = (y.numel(), v, 6) if v else (y.numel(), 6)
        return FeatureSplit((protos[y].unsqueeze(1) if v else protos[y]) + torch.randn(*shape, generator=g), y)

    return FeatureSet(["a", "b", "c"], protos, {"train": split(6, views), "val": split(3), "test": split(4)},
                      {"model": "synthetic", "dataset": "clusters"})


def test_fewshot_output_records_and_index_files_are_unchanged(tmp_path):
    """Output keys, run-record fields (in order), job order and the index files: recorded from the pre-refactor
    code (refactor safety net only); the numbers are pinned by test_fewshot*.py."""
    config = FewShotConfig(shots=[2, 1], seeds=[4, 3], methods=["tip", "zeroshot", "tipx++"], val_from_train=1,
                           grids={"tip": {"alpha": [1.0], "beta": [1.0]},
                                  "tipx": {"alpha": [1.0], "beta": [1.0], "gamma": [0.5]}})
    out = run_fewshot(DirectorySource(_clusters(), _clusters()), config, index_dir=tmp_path, progress=False)
    assert list(out) == ["runs", "summary", "indices", "validation", "logit"]  # logit: issue 16 (the scale used)
    assert list(out["runs"][0]) == ["method", "shots", "seed", "cache_size", "val_size", "test_top1", "val_top1",
                                    "hyperparameters"]
    assert [(r["shots"], r["seed"], r["method"]) for r in out["runs"]] == [
        (k, s, m) for k in (2, 1) for s in (4, 3) for m in ("tip", "zeroshot", "tipx++")]
    assert list(out["indices"]) == ["shots2_seed4", "shots2_seed3", "shots1_seed4", "shots1_seed3", "val_seed4", "val_seed3"]
    assert out["validation"] == {"source": "train", "per_class": 1, "disjoint_from": "the seed's shots",
                                 "indices": {"seed4": "val_seed4", "seed3": "val_seed3"}}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{k}.json" for k in out["indices"])
    val = json.loads((tmp_path / "val_seed4.json").read_text())
    assert val["indices"] == out["indices"]["val_seed4"]
    assert {k: val[k] for k in ("split", "role", "val_per_class", "seed", "disjoint_from")} == {
        "split": "train", "role": "val", "val_per_class": 1, "seed": 4,
        "disjoint_from": ["shots2_seed4.json", "shots1_seed4.json"]}
    zero = {(r["shots"], r["seed"]): r for r in out["runs"] if r["method"] == "zeroshot"}
    assert zero[(2, 4)] == {**zero[(1, 4)], "shots": 2, "cache_size": 6}  # zero-shot fitted once per seed


def test_fewshot_with_the_val_split_describes_it():
    out = run_fewshot(DirectorySource(_clusters()), FewShotConfig(shots=[1], seeds=[0], methods=["zeroshot"]),
                      progress=False)
    assert out["validation"] == {"source": "split 'val'"} and out["runs"][0]["val_size"] == 9
    assert list(out["summary"][0]) == ["method", "shots", "test_top1_mean", "test_top1_std", "val_top1_mean", "seeds"]
