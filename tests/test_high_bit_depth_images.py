"""High-bit-depth images are scaled to 8 bits, not clipped (issue 12, item 3): Pillow's convert("RGB") saturated
99.8 % of a 16-bit PNG's pixels to 255. Each high-bit-depth file must give the same pixels, and the same
embeddings with the tiny model, as the picture saved as 8-bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipadapt.data.dataset import open_rgb


@pytest.fixture
def picture():
    """An 8-bit grey picture using the whole 0..255 range (a gradient plus texture)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:56]
    grey = (x * 255 / 55 * 0.7 + rng.integers(0, 77, size=(48, 56))).clip(0, 255)
    return grey.astype(np.uint8)


def _write(tmp_path, picture):
    p8 = picture.astype(np.int64)
    files = {"8bit": tmp_path / "p8.png"}
    Image.fromarray(picture, mode="L").save(files["8bit"])
    files["I;16"] = tmp_path / "p16.png"  # 16-bit PNG: Pillow opens it as I;16
    Image.fromarray((p8 * 257).astype(np.uint16)).save(files["I;16"])
    files["I"] = tmp_path / "pI.tif"  # 32-bit integer TIFF holding 16-bit values
    Image.fromarray((p8 * 257).astype(np.int32)).save(files["I"])
    files["F"] = tmp_path / "pF.tif"  # 32-bit float TIFF in [0, 1]
    Image.fromarray((p8 / 255.0).astype(np.float32)).save(files["F"])
    # 12-bit samples stored in a 16-bit PNG, scaled to the full range as the PNG spec requires (bit replication)
    v12 = np.rint(p8 * 4095 / 255).astype(np.int64)
    files["12bit"] = tmp_path / "p12.png"
    Image.fromarray(((v12 << 4) | (v12 >> 8)).astype(np.uint16)).save(files["12bit"])
    return files


def test_modes_are_what_the_test_claims(tmp_path, picture):
    files = _write(tmp_path, picture)
    modes = {k: Image.open(p).mode for k, p in files.items()}
    assert modes == {"8bit": "L", "I;16": "I;16", "I": "I", "F": "F", "12bit": "I;16"}


def test_high_bit_depth_pixels_match_the_8bit_picture(tmp_path, picture):
    files = _write(tmp_path, picture)
    reference = np.asarray(open_rgb(files["8bit"])).astype(int)
    assert reference[..., 0].tolist() == picture.astype(int).tolist()
    for kind in ("I;16", "I", "F", "12bit"):
        got = np.asarray(open_rgb(files[kind])).astype(int)
        assert got.shape == reference.shape
        diff = np.abs(got - reference).max()
        assert diff <= (1 if kind == "12bit" else 0), f"{kind}: max pixel difference {diff}"
    # before the fix, Pillow's clip made almost the whole 16-bit picture white
    assert (np.asarray(Image.open(files["I;16"]).convert("RGB")) == 255).mean() > 0.9


def test_high_bit_depth_embeddings_match_the_8bit_picture(tmp_path, picture):
    from clipadapt.encoders import load_encoder

    files = _write(tmp_path, picture)
    enc = load_encoder("clipadapt-test-tiny-vit", device="cpu")
    with torch.no_grad():
        emb = {k: enc.encode_images(enc.preprocess(open_rgb(p)).unsqueeze(0))[0] for k, p in files.items()}
    for kind in ("I;16", "I", "F", "12bit"):
        cos = torch.nn.functional.cosine_similarity(emb[kind], emb["8bit"], dim=0)
        assert float(cos) > 0.999, kind
    clipped = enc.encode_images(enc.preprocess(Image.open(files["I;16"]).convert("RGB")).unsqueeze(0))[0]
    assert float(torch.nn.functional.cosine_similarity(clipped, emb["8bit"], dim=0)) < 0.999


def test_float_images_with_nan_are_a_named_error(tmp_path):
    from clipadapt.errors import DatasetError

    path = tmp_path / "nan.tif"
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)).save(path)
    with pytest.raises(DatasetError, match="nan"):
        open_rgb(path)
