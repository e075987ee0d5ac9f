"""PilEvalStage: the eval resize/crop run as direct PIL calls is pixel-identical to the torchvision transforms it
replaces, for every input size in a range, every open_clip resize mode and image mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

from clipadapt.encoders.augment import PilEvalStage, resized_size, split_eval_transform

SIZES = range(1, 71, 3)  # every (width, height) pair: smaller than, equal to and larger than the targets


def _image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.mode == b.mode and np.array_equal(np.asarray(a), np.asarray(b))


def _outcome(transform, image: Image.Image):
    """The output image, or the error type (an extreme aspect ratio under max_size resizes to 0 pixels)."""
    try:
        return transform(image)
    except ValueError as e:
        return type(e)


def _same_outcome(a, b) -> bool:
    return a is b if isinstance(a, type) or isinstance(b, type) else _same(a, b)


STAGES = {
    "shortest bicubic": [Resize(32, interpolation=InterpolationMode.BICUBIC), CenterCrop(32)],
    "squash": [Resize((32, 32), interpolation=InterpolationMode.BICUBIC)],
    "max_size": [Resize(24, interpolation=InterpolationMode.BILINEAR, max_size=40), CenterCrop(24)],
    "non-square crop": [Resize([20]), CenterCrop((18, 26))],
    "crop larger than resize (pads)": [Resize(16), CenterCrop(32)],
}


@pytest.mark.parametrize("name", list(STAGES))
def test_pil_stage_equals_torchvision_for_every_size(name):
    reference = Compose(STAGES[name])
    fast = PilEvalStage(STAGES[name])
    mismatched = [(w, h) for w in SIZES for h in SIZES
                  if not _same_outcome(_outcome(fast, _image(w, h)), _outcome(reference, _image(w, h)))]
    assert mismatched == []


def test_resized_size_matches_the_torchvision_rule_written_out():
    # shorter side -> 32, longer side truncated: 48x100 -> 32x66 (32*100/48 = 66.67); [h, w] taken as is
    assert resized_size(48, 100, 32) == (32, 66)
    assert resized_size(100, 48, [32]) == (66, 32)
    assert resized_size(100, 48, (20, 30)) == (30, 20)
    assert resized_size(10, 100, 32, max_size=64) == (6, 64)  # capped: short = int(64 * 32 / 320)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_open_clip_eval_transforms_keep_their_pixels(resize_mode, mode):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(size=(32, 32), resize_mode=resize_mode), is_train=False)
    stage, mean, std = split_eval_transform(preprocess)
    assert isinstance(stage, PilEvalStage)
    reference = Compose(preprocess.transforms[:-2])
    for w, h in [(48, 48), (31, 90), (90, 31), (32, 32), (7, 5)]:
        assert _same(stage(_image(w, h, mode)), reference(_image(w, h, mode))), (w, h)


def test_pil_stage_pickles_for_spawned_dataloader_workers():
    """DataLoader workers started by spawn/forkserver (macOS, Windows, Python >= 3.14) get the stage pickled; the
    round trip must give the same pixels as torchvision's transforms."""
    import pickle

    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(size=(32, 32), resize_mode="shortest"), is_train=False)
    stage = pickle.loads(pickle.dumps(split_eval_transform(preprocess)[0]))
    reference = Compose(preprocess.transforms[:-2])
    for w, h in [(48, 40), (20, 70)]:
        assert _same(stage(_image(w, h, "L")), reference(_image(w, h, "L"))), (w, h)
