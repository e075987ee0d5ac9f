"""`clipadapt adapter train` and `clipadapt imo --model ... --adapter` end to end on a generated image folder."""

from __future__ import annotations

import json

import pytest
from _imo_images import write_stripes_imagefolder

from clipadapt.adapters import adapter_checkpoint_sha256
from clipadapt.cli import main


def test_train_then_measure_imo_with_and_without_adapter(tmp_path, capsys):
    data = write_stripes_imagefolder(tmp_path / "stripes", n=16)
    ckpt = tmp_path / "ckpt"
    args = ["adapter", "train", "--model", "clipadapt-test-tiny-vit", "--data", f"imagefolder:{data}",
            "--out", str(ckpt), "--batch-size", "4", "--max-steps", "3", "--scale", "0.1", "--no-progress",
            "--device", "cpu"]
    assert main(args) == 0
    config = json.loads((ckpt / "adapter.json").read_text())
    assert config["arch"] == "clipadapt-test-tiny-vit" and config["data"] == f"imagefolder:{data}"
    assert config["steps"] == 3 and config["num_classes"] == 2 and config["scale"] == 0.1
    assert main(args) == 0  # rerun: nothing left to do
    assert "already complete: 3 steps" in capsys.readouterr().out

    out = tmp_path / "imo"
    rc = main(["imo", "--model", "clipadapt-test-tiny-vit", "--dataset", f"imagefolder:{data}", "--split", "test",
               "--adapter", str(ckpt), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "results.json").read_text())
    assert set(report["results"]) == {"original", "adapted"}
    orig, adapted = report["results"]["original"], report["results"]["adapted"]
    assert orig["n_same"] == adapted["n_same"] == 2 * (8 * 7 // 2)
    assert orig["overlap"] != adapted["overlap"]  # the adapter changed the features
    assert report["overlap_change"] == pytest.approx(adapted["overlap"] - orig["overlap"], abs=2e-5)  # JSON: 5 digits
    assert (out / "imo_hist.png").is_file()
    assert adapter_checkpoint_sha256(ckpt) == config["weights_sha256"]


def test_train_on_resnet_is_refused(tmp_path, capsys):
    data = write_stripes_imagefolder(tmp_path / "stripes", n=4)
    rc = main(["adapter", "train", "--model", "clipadapt-test-tiny-rn", "--data", f"imagefolder:{data}",
               "--out", str(tmp_path / "ckpt"), "--max-steps", "1", "--no-progress", "--device", "cpu"])
    assert rc == 2
    assert "clipadapt-test-tiny-rn" in capsys.readouterr().err


def test_selfsup_training_from_the_cli(tmp_path):
    data = write_stripes_imagefolder(tmp_path / "stripes", n=4)
    rc = main(["adapter", "train", "--model", "clipadapt-test-tiny-vit", "--data", f"imagefolder:{data}",
               "--mode", "selfsup", "--out", str(tmp_path / "ckpt"), "--batch-size", "2", "--max-steps", "2",
               "--local-crops", "1", "--dino-out-dim", "64", "--no-progress", "--device", "cpu"])
    assert rc == 0
    config = json.loads((tmp_path / "ckpt" / "adapter.json").read_text())
    assert config["mode"] == "selfsup" and config["scale"] == 0.1 and config["steps"] == 2
    assert config["training"]["local_crops"] == 1 and config["training"]["epochs"] == 10
