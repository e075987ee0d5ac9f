"""Few-shot sampler, index files and the `sample-shots` / `datasets` commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from clipadapt.cli import main
from clipadapt.data import build_dataset, load_indices, sample_few_shot, save_indices
from clipadapt.errors import DatasetError

LABELS = [0, 1, 2, 0, 1, 2, 0, 1, 0, 2, 0, 1, 1, 0, 2, 2, 0]  # class 0: 7 items, 1: 5, 2: 5


def per_class(indices, labels):
    return Counter(labels[i] for i in indices)


def test_k_distinct_indices_per_class_sorted():
    for shots in (1, 3, 5):
        idx = sample_few_shot(LABELS, shots, seed=1)
        assert idx == sorted(idx) and len(set(idx)) == len(idx)
        assert per_class(idx, LABELS) == {0: shots, 1: shots, 2: shots}


def test_same_seed_reproduces_and_leaves_global_rng_alone():
    import random

    import numpy as np
    import torch

    np.random.seed(0), torch.manual_seed(0), random.seed(0)
    before = (np.random.random(), torch.rand(1).item(), random.random())
    np.random.seed(0), torch.manual_seed(0), random.seed(0)
    a = sample_few_shot(LABELS, 2, seed=7)
    after = (np.random.random(), torch.rand(1).item(), random.random())
    assert a == sample_few_shot(LABELS, 2, seed=7) and before == after


def test_different_seeds_differ():
    draws = {tuple(sample_few_shot(LABELS, 2, seed=s)) for s in range(1, 6)}
    assert len(draws) > 1


def test_draws_are_nested_across_shots():
    for seed in (1, 2, 3):
        previous: set[int] = set()
        for shots in (1, 2, 4, 5):
            current = set(sample_few_shot(LABELS, shots, seed))
            assert previous <= current
            previous = current


def test_a_class_draw_does_not_depend_on_other_classes():
    only_class_1 = [v if v == 1 else 5 for v in LABELS]  # relabel the others
    a = [i for i in sample_few_shot(LABELS, 2, seed=3) if LABELS[i] == 1]
    b = [i for i in sample_few_shot(only_class_1, 2, seed=3, allow_fewer=True) if only_class_1[i] == 1]
    assert a == b


def test_short_class_is_an_error_naming_it_unless_allow_fewer():
    with pytest.raises(DatasetError, match=r"6-shot.*'bee' has 5, 'cow' has 5"):
        sample_few_shot(LABELS, 6, seed=1, classnames=["ant", "bee", "cow"])
    idx = sample_few_shot(LABELS, 6, seed=1, classnames=["ant", "bee", "cow"], allow_fewer=True)
    assert per_class(idx, LABELS) == {0: 6, 1: 5, 2: 5}


def test_class_without_items_is_reported_with_classnames():
    with pytest.raises(DatasetError, match="'dog' has 0"):
        sample_few_shot(LABELS, 1, seed=1, classnames=["ant", "bee", "cow", "dog"])
    with pytest.raises(DatasetError, match="label 1 has 5"):
        sample_few_shot(LABELS, 6, seed=1)


@pytest.mark.parametrize("shots", [0, -1, 1.5, True])
def test_bad_shots(shots):
    with pytest.raises(DatasetError, match="shots must be a positive integer"):
        sample_few_shot(LABELS, shots, seed=1)


def test_label_out_of_range_of_classnames():
    with pytest.raises(DatasetError, match=r"labels \[2\] out of range for 2 class names"):
        sample_few_shot(LABELS, 1, seed=1, classnames=["a", "b"])


def test_index_file_round_trip_and_fingerprint_check(tmp_path: Path):
    meta = {"dataset": "pets", "fingerprint": "abc", "split": "train", "shots": 2, "seed": 1}
    path = save_indices(tmp_path / "sub" / "i.json", [3, 1, 4], meta=meta)
    assert json.loads(path.read_text())["indices"] == [3, 1, 4]
    assert load_indices(path) == ([3, 1, 4], meta)
    assert load_indices(path, fingerprint="abc")[0] == [3, 1, 4]
    with pytest.raises(DatasetError, match="fingerprint 'abc'.*not 'xyz'"):
        load_indices(path, fingerprint="xyz")
    with pytest.raises(DatasetError, match="reserved"):
        save_indices(tmp_path / "j.json", [1], meta={"indices": []})


def test_load_indices_bad_files(tmp_path: Path):
    with pytest.raises(DatasetError, match="not found"):
        load_indices(tmp_path / "none.json")
    (tmp_path / "a.json").write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_indices(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"indices": [1, "2"]}))
    with pytest.raises(DatasetError, match="integers"):
        load_indices(tmp_path / "b.json")


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for cls, count in (("ant", 5), ("bee", 3)):
        for i in range(count):
            (root / "train" / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (2, 2)).save(root / "train" / cls / f"{i}.png")
    return root


def test_cli_sample_shots_writes_one_file_per_shots_and_seed(folder_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "shots"
    spec = f"imagefolder:{folder_dataset}"
    assert main(["sample-shots", "--dataset", spec, "--shots", "1,3", "--seeds", "1,2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"shots{k}_seed{s}.json" for k in (1, 3) for s in (1, 2)]
    ds = build_dataset(spec, "train")
    indices, meta = load_indices(out / "shots3_seed2.json", fingerprint=ds.fingerprint())
    assert indices == sample_few_shot(ds.labels, 3, 2)
    assert (meta["split"], meta["shots"], meta["seed"], meta["dataset"]) == ("train", 3, 2, "data")
    assert meta["labels"] == [ds.labels[i] for i in indices]
    again = ["sample-shots", "--dataset", spec, "--shots", "4", "--seeds", "1", "--out", str(out), "--overwrite"]
    assert main(again) == 2
    assert "'bee' has 3" in capsys.readouterr().err
    assert (out / "shots3_seed2.json").is_file()  # the failed run replaced nothing
    assert main(again + ["--allow-fewer"]) == 0
    assert len(load_indices(out / "shots4_seed1.json")[0]) == 7
    assert sorted(p.name for p in out.iterdir()) == ["shots4_seed1.json"]  # --overwrite: nothing of the earlier run


def test_cli_datasets_lists_registry(tmp_path: Path, capsys):
    assert main(["datasets", "--out", str(tmp_path / "reg.json")]) == 0
    text = capsys.readouterr().out
    assert "coop:oxford_pets:<root>" in text and "a photo of a {}, a type of pet." in text
    rows = json.loads((tmp_path / "reg.json").read_text())
    assert {r["name"] for r in rows if r["kind"] == "coop"} >= {"imagenet", "eurosat", "ucf101"}
    assert main(["datasets", "--templates", "imagenet7"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "itap of a {}."


def test_sampler_matches_the_per_class_seeded_permutation_written_out():
    """The documented recipe, literally: per class c, default_rng([seed, c]).permutation of its ascending indices."""
    import numpy as np

    for seed, shots in ((1, 1), (4, 3)):
        expected = []
        for c in sorted(set(LABELS)):
            items = [i for i, v in enumerate(LABELS) if v == c]
            perm = np.random.default_rng([seed, c]).permutation(len(items))
            expected += [items[k] for k in perm[:shots]]
        assert sample_few_shot(LABELS, shots, seed) == sorted(expected)


def test_sampler_accepts_tensors_and_rejects_bad_labels():
    import torch

    assert sample_few_shot(torch.tensor(LABELS), 2, 1) == sample_few_shot(LABELS, 2, 1)
    with pytest.raises(DatasetError, match=r"labels\[1\] = -1"):
        sample_few_shot([0, -1], 1, 1)
    with pytest.raises(DatasetError, match="integers"):
        sample_few_shot([0.5, 1.0], 1, 1)


def test_disjoint_draw_matches_the_seeded_permutation_of_the_items_left_written_out():
    """Per class c: its ascending indices not excluded, permuted by default_rng([seed, c, 1]), first k; sorted."""
    import numpy as np

    from clipadapt.data import sample_disjoint

    exclude = sample_few_shot(LABELS, 2, 3)
    expected = []
    for c in sorted(set(LABELS)):
        items = [i for i, v in enumerate(LABELS) if v == c and i not in exclude]
        perm = np.random.default_rng([3, c, 1]).permutation(len(items))
        expected += [items[k] for k in perm[:2]]
    got = sample_disjoint(LABELS, 2, 3, exclude=exclude)
    assert got == sorted(expected) and not set(got) & set(exclude)


@pytest.mark.parametrize("bad", [-1, len(LABELS)])
def test_disjoint_draw_refuses_excluded_indices_out_of_range(bad):
    from clipadapt.data import sample_disjoint

    with pytest.raises(DatasetError, match=rf"exclude.*{bad}.*0\.\.{len(LABELS) - 1}"):
        sample_disjoint(LABELS, 1, 0, exclude=[0, bad])
