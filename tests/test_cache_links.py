"""Hard links in the cache and in feature directories: `fileio.link_or_copy` leaves no temp file behind when it fails,
and an image entry (itself a feature directory) never keeps serving class text its text entry re-encoded after a
failed verification (the two names share one file, so an in-place corruption reaches both)."""

from __future__ import annotations

import shutil

import pytest
import torch
from _imagedata import make_images

import clipadapt.fileio as fileio
from clipadapt.encoders import load_encoder
from clipadapt.encoders.configs import register_model_configs
from clipadapt.features.io import load_feature_dir
from clipadapt.features.pipeline import clear_encoder_memo, get_feature_set
from clipadapt.fileio import link_or_copy

MODEL = "clipadapt-test-tiny-vit"


# ----------------------------------------------------------------------------------------- link_or_copy
def test_link_or_copy_onto_a_directory_fails_without_leaving_its_temp_file(tmp_path):
    (tmp_path / "src").write_bytes(b"new")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep").write_bytes(b"old")
    with pytest.raises(OSError):
        link_or_copy(tmp_path / "src", tmp_path / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no '.dst.<pid>.tmp'
    assert (tmp_path / "dst" / "keep").read_bytes() == b"old"


def test_a_copy_cut_short_leaves_the_target_and_no_temp_file(tmp_path, monkeypatch):
    """Where hard links are impossible the file is copied; a copy that fails half-way (disk full) must not leave
    its partial temp file in the directory, and the previous target stays as it was."""
    (tmp_path / "src").write_bytes(b"0123456789")
    (tmp_path / "dst").write_bytes(b"previous")

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    def half_copy(src, dst):
        with open(dst, "wb") as f:
            f.write(b"01234")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "link", no_link)
    monkeypatch.setattr(fileio.shutil, "copyfile", half_copy)
    with pytest.raises(OSError, match="No space left"):
        link_or_copy(tmp_path / "src", tmp_path / "dst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]
    assert (tmp_path / "dst").read_bytes() == b"previous"


# ----------------------------------------------------------------------------------------- the entry's text
def _prompt_embeddings(enc, ds) -> torch.Tensor:
    """The literal class text: every 'template.format(class)' encoded, class-major, as (C, T, D)."""
    texts = [t.format(c) for c in ds.classnames for t in ds.templates]
    return enc.encode_texts(texts).view(len(ds.classnames), len(ds.templates), -1)


def test_image_entry_text_is_relinked_after_its_text_entry_is_reencoded(tmp_path):
    register_model_configs()
    ds = make_images(tmp_path / "img", 4)
    cache = tmp_path / "c"
    get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, progress=False)
    (text_file,) = (cache / "text").glob("*/text.safetensors")
    (entry_text,) = (cache / "images").glob("*/text.safetensors")
    assert text_file.stat().st_ino == entry_text.stat().st_ino  # one file, two names
    raw = bytearray(text_file.read_bytes())
    raw[-8] ^= 0xFF  # in place: the bytes of both names change; only the text entry's manifest can tell
    with open(text_file, "r+b") as f:
        f.write(raw)
    clear_encoder_memo()
    fs = get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, progress=False)
    expected = _prompt_embeddings(load_encoder(MODEL, device="cpu"), ds)
    torch.testing.assert_close(fs.text, expected, rtol=0, atol=1e-5)  # the text entry was re-encoded
    entry_dir = entry_text.parent
    torch.testing.assert_close(load_feature_dir(entry_dir).text, expected, rtol=0, atol=1e-5)
    assert (entry_dir / "text.safetensors").read_bytes() == text_file.read_bytes()


def test_entry_text_copied_instead_of_linked_is_refreshed_when_it_differs_and_kept_when_equal(tmp_path, monkeypatch):
    """Without hard links (copies) the check compares bytes: an equal copy is not rewritten, a stale one is."""
    register_model_configs()
    monkeypatch.setattr(fileio.os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(18, "cross-device")))
    ds = make_images(tmp_path / "img", 4)
    cache = tmp_path / "c"
    get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, progress=False)
    (text_file,) = (cache / "text").glob("*/text.safetensors")
    (entry_text,) = (cache / "images").glob("*/text.safetensors")
    assert text_file.stat().st_ino != entry_text.stat().st_ino
    inode = entry_text.stat().st_ino
    get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, progress=False)
    assert entry_text.stat().st_ino == inode  # same bytes: left alone
    shutil.copyfile(text_file, tmp_path / "good")
    entry_text.write_bytes(b"stale")  # the copy no longer matches its source
    get_feature_set(MODEL, {"test": ds}, ["test"], cache_dir=cache, progress=False)
    assert entry_text.read_bytes() == (tmp_path / "good").read_bytes()
