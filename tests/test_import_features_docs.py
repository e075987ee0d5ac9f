"""Every command of docs/import-features.md runs as written, in a folder holding the inputs its table lists."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest
import torch
from conftest import PROJECT_ROOT
from safetensors.numpy import load_file, save_file

from clipadapt.builtin import HOLDOUT
from clipadapt.cli import main
from clipadapt.features.io import load_feature_dir
from clipadapt.features.retrieval_dir import load_retrieval_split

DOC = PROJECT_ROOT / "docs" / "import-features.md"


def doc_commands() -> list[str]:
    """The `clipadapt ...` commands of the page's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("clipadapt ")]


def _write_inputs(folder, coco500) -> None:
    """The files of the page's input table."""
    rng = np.random.default_rng(0)
    image, caption = coco500
    np.save(folder / "features.npy", np.stack([image.numpy(), caption.numpy()]))
    (folder / "classes.txt").write_text("cat\ndog\nbird\n")
    protos = rng.normal(size=(3, 64)).astype(np.float32)
    np.save(folder / "text.npy", protos[:, None, :] + 0.1 * rng.normal(size=(3, 7, 64)).astype(np.float32))
    labels = {"train": np.arange(12) % 3, "test": np.arange(9) % 3, "unlabeled": np.arange(20) % 3}
    np.savez(folder / "embeddings.npz",
             **{f"{s}_image": (protos[y] + 0.5 * rng.normal(size=(len(y), 64))).astype(np.float32)
                for s, y in labels.items()})
    np.save(folder / "train_labels.npy", labels["train"].astype(np.int64))
    (folder / "test_labels.txt").write_text("\n".join(["cat", "dog", "bird"][y] for y in labels["test"]) + "\n")
    save_file({"image": rng.normal(size=(40, 64)).astype(np.float32)}, str(folder / "images.safetensors"))
    save_file({"text": rng.normal(size=(40, 64)).astype(np.float32)}, str(folder / "captions.safetensors"))
    img = rng.normal(size=(30, 64)).astype(np.float32)
    to_img = np.repeat(np.arange(30), 5)
    np.save(folder / "img.npy", img)
    np.save(folder / "caps.npy", (img[to_img] + 0.8 * rng.normal(size=(150, 64))).astype(np.float32))
    np.save(folder / "caps_to_img.npy", to_img.astype(np.int64))
    np.save(folder / "refs.npy", rng.normal(size=(60, 64)).astype(np.float32))


def test_the_page_shows_every_kind():
    commands = [c for c in doc_commands() if c.startswith("clipadapt import-features")]
    kinds = {("retrieval" if "--kind retrieval" in c else "captions" if "--kind captions" in c else "classification")
             for c in commands}
    assert kinds == {"classification", "retrieval", "captions"} and len(commands) == 6
    for needed in ("[100:500]", ".npz:", ".safetensors:", ":range", "--labels range", ".txt", "caps_to_img.npy"):
        assert any(needed in c for c in commands), needed


def test_every_command_on_the_page_runs(tmp_path, monkeypatch, coco500):
    _write_inputs(tmp_path, coco500)
    monkeypatch.chdir(tmp_path)
    for command in doc_commands():
        assert main(shlex.split(command)[1:]) == 0, command
    image, caption = coco500
    # the stacked-file example rebuilds builtin:coco500 exactly
    coco = load_feature_dir("coco-cls")
    builtin = load_feature_dir("builtin:coco500")
    assert torch.equal(coco.text, builtin.text) and torch.equal(coco.split("test").image, builtin.split("test").image)
    assert torch.equal(coco.split("test").label, torch.arange(400))
    assert torch.equal(coco.split("unlabeled").image, image[:HOLDOUT]) and coco.split("unlabeled").label is None
    pets = load_feature_dir("pets")
    assert pets.classnames == ["cat", "dog", "bird"] and pets.text.shape == (3, 7, 64)
    assert pets.split("test").label.tolist() == [0, 1, 2] * 3 and pets.split("train").label.tolist() == [0, 1, 2] * 4
    assert pets.split("unlabeled").label is None and pets.split("unlabeled").n == 20
    classes = load_feature_dir("caption-classes")
    assert classes.classnames[:2] == ["class 0", "class 1"] and classes.split("test").label.tolist() == list(range(40))
    ret = load_retrieval_split("coco-ret", "test")
    assert torch.equal(ret.text, caption[HOLDOUT:]) and torch.equal(ret.text_to_image, torch.arange(400))
    assert torch.equal(load_retrieval_split("coco-ret", "unlabeled").image, image[:HOLDOUT])
    flickr = load_retrieval_split("flickr-ret", "test")
    assert flickr.text.shape == (150, 64) and flickr.text_to_image.tolist() == np.repeat(np.arange(30), 5).tolist()
    emb = load_file("caption-emb.safetensors")
    assert {k: v.shape for k, v in emb.items()} == {"image": (30, 64), "caption": (150, 64), "reference": (60, 64)}


@pytest.mark.parametrize("spec, message", [
    ("test=embeddings.npz", "holds 3 arrays"),
    ("test=embeddings.npz:nope", "has no array 'nope'"),
    ("test=img.npy[5:5]", "select nothing"),
    ("test=img.npy:labels.txt", "labels.txt: label file not found"),
    ("test=img.npy[0:10]:range", "no-error"),
])
def test_spec_errors_name_the_spec_and_file(tmp_path, monkeypatch, coco500, capsys, spec, message):
    _write_inputs(tmp_path, coco500)
    monkeypatch.chdir(tmp_path)
    code = main(["import-features", "--out", "fd", "--text", "img.npy[0:10]", "--split", spec])
    if message == "no-error":
        assert code == 0 and load_feature_dir("fd").split("test").label.tolist() == list(range(10))
    else:
        assert code == 2 and message in capsys.readouterr().err


def test_retrieval_and_captions_kinds_say_what_they_need(tmp_path, capsys):
    assert main(["import-features", "--kind", "captions", "--out", str(tmp_path / "e.safetensors"), "--image",
                 "x.npy"]) == 2
    assert "--caption" in capsys.readouterr().err
    assert main(["import-features", "--out", str(tmp_path / "fd"), "--split", "test=x.npy"]) == 2
    assert "needs --text" in capsys.readouterr().err
