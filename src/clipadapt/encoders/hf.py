"""Hugging Face `transformers` backbones (`hf:ORG/REPO[@REVISION]` or `hf:/path/to/dir`): CLIPModel, SiglipModel,
Siglip2Model and any model with the same `get_image_features` / `get_text_features` API (MetaCLIP, …).

The model's own preprocessing (`preprocessor_config.json`: resize, crop, mean/std, interpolation) becomes a torchvision
transform (the same PIL resize/crop steps as open_clip's, so extraction's fast PIL stage and the V-view
augmentation apply), its own tokenizer pads to the text tower's context length, and embeddings are its projected,
raw (unnormalised) features. Weights and their identity (docs/encoders-and-cache.md):

- a hub repo is loaded from its snapshot in the HF hub cache (`HF_HOME`, `CLIPADAPT_WEIGHTS_DIR`) with
  `local_files_only=True` (no request at all); only when it is not there is it downloaded, after the same fast
  offline check as open_clip weights (`weights.download_blocked`, a 3 s probe); the cache key holds the repo and
  the snapshot's **commit hash**;
- a local directory (as written by `save_pretrained`) is loaded from there; the key holds the sha256 of every file.

`transformers` is the optional extra `clipadapt[hf]`; without it `require_transformers` names the install command.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clipadapt.encoders.ids import ModelId
from clipadapt.encoders.weights import (
    HF_HOST,
    download_blocked,
    file_sha256,
    hf_cache_home,
    hf_cached,
    hub_offline,
    weights_dir,
)
from clipadapt.errors import ConfigError, MissingDependencyError, WeightsUnavailableError

CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
DOWNLOAD_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken", "model*.safetensors*")
INSTALL_HINT = "pip install 'clipadapt[hf]'"
_INTERPOLATIONS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def require_transformers():
    """The `transformers` module, or MissingDependencyError naming the extra that installs it."""
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"Hugging Face transformers models (hf:...) need the 'transformers' package, which is not installed: "
            f"{INSTALL_HINT}"
        ) from e
    return transformers


# ----------------------------------------------------------------------------------------- locating the files
def _snapshot_commit(directory: Path) -> str | None:
    """The commit hash of an HF hub cache snapshot directory (`.../snapshots/<commit>/`), else None."""
    return directory.name if directory.parent.name == "snapshots" and len(directory.name) == 40 else None


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    """The hub cache snapshot holding config.json, preprocessor_config.json and weights of `repo`, or None."""
    config = hf_cached(repo, CONFIG_NAME, revision)
    if config is None or hf_cached(repo, PREPROCESSOR_NAME, revision) is None:
        return None
    return config.parent if any(hf_cached(repo, name, revision) is not None for name in WEIGHT_NAMES) else None


def _unavailable(model_id: ModelId, reason: str) -> WeightsUnavailableError:
    repo, cache = model_id.transformers, weights_dir() or hf_cache_home()
    return WeightsUnavailableError(
        f"no weights for model '{model_id}' on this machine (looked in the HF hub cache, HF_HOME: {cache}, "
        f"for {repo}) and {reason}. To provide them: download once on a machine with network "
        f"(`hf download {repo}`; they land in $HF_HOME/hub) and copy that cache here or point HF_HOME "
        f"(or CLIPADAPT_WEIGHTS_DIR) at it; or save the model and its processor with save_pretrained into a "
        f"directory and pass it as 'hf:/path/to/dir'."
    )


def _download(model_id: ModelId) -> Path:
    """Fail fast unless a download can be attempted (weights.download_blocked: policy + probe), then fetch the
    snapshot."""
    reason = download_blocked({HF_HOST})
    if reason is not None:
        raise _unavailable(model_id, reason)
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(model_id.transformers, revision=model_id.revision, cache_dir=weights_dir(),
                                 allow_patterns=list(DOWNLOAD_PATTERNS))
    except Exception as e:  # noqa: BLE001 - hub errors: repository not found, gated, network
        raise WeightsUnavailableError(f"could not download model '{model_id}': {type(e).__name__}: {e}") from e
    directory = Path(path)
    if not any((directory / name).is_file() for name in WEIGHT_NAMES):
        raise WeightsUnavailableError(
            f"model '{model_id}': the repository has no safetensors weights ({', '.join(WEIGHT_NAMES[:2])}); "
            "convert it (save_pretrained(safe_serialization=True)) and pass the directory as 'hf:/path/to/dir'"
        )
    return directory


@lru_cache(maxsize=32)
def model_dir(model_id: ModelId) -> Path:
    """The directory holding the model's files: the local directory, the cached hub snapshot, or a fresh download
    (WeightsUnavailableError within seconds when offline with nothing cached)."""
    if model_id.hf_dir is not None:
        return model_id.hf_dir
    found = _cached_snapshot(model_id.transformers, model_id.revision)
    return found if found is not None else _download(model_id)


# ----------------------------------------------------------------------------------------- identity
def _dir_digest(directory: Path) -> dict[str, str]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and not any(s.startswith(".") for s in
                                                                                 p.relative_to(directory).parts))
    return {str(p.relative_to(directory)): file_sha256(p) for p in files}


def weights_fingerprint(model_id: ModelId) -> dict[str, Any]:
    """Hub repo: {'kind': 'hf', 'repo', 'revision', 'commit'}; local directory: {'kind': 'hf-dir', 'files': {name:
    sha256}} (every file: weights, config, processor and tokenizer files)."""
    directory = model_dir(model_id)
    if model_id.hf_dir is not None:
        return {"kind": "hf-dir", "files": _dir_digest(directory)}
    commit = _snapshot_commit(directory)
    if commit is None:  # a hub cache without the snapshots layout: identify it by its files
        return {"kind": "hf", "repo": model_id.transformers, "revision": model_id.revision,
                "files": _dir_digest(directory)}
    return {"kind": "hf", "repo": model_id.transformers, "revision": model_id.revision, "commit": commit}


def model_config(model_id: ModelId) -> dict[str, Any]:
    path = model_dir(model_id) / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WeightsUnavailableError(f"model '{model_id}': {path} is not a readable config.json ({e})") from e


def architecture(model_id: ModelId) -> str:
    """The transformers class named by config.json (e.g. 'CLIPModel'), else its model_type."""
    config = model_config(model_id)
    names = config.get("architectures") or []
    return str(names[0] if names else config.get("model_type", "unknown"))


# ----------------------------------------------------------------------------------------- preprocessing
def _processor_config(model_id: ModelId) -> dict[str, Any]:
    path = model_dir(model_id) / PREPROCESSOR_NAME
    if not path.is_file():
        raise WeightsUnavailableError(
            f"model '{model_id}': {path.name} not found in {path.parent}; save the image processor with the model "
            "(processor.save_pretrained(DIR))"
        )
    return json.loads(path.read_text())


def _size(value: Any) -> tuple[int, int]:
    if isinstance(value, dict):
        return int(value["height"]), int(value["width"])
    return (int(value), int(value)) if isinstance(value, (int, float)) else (int(value[0]), int(value[1]))


def static_preprocess(model_id: ModelId) -> dict[str, Any]:
    """The eval preprocessing of the model's image processor as clipadapt's canonical dict: size [H, W] of the
    model input, mean, std, interpolation, resize_mode ('shortest' = resize the short side to `resize` then
    centre-crop, 'squash' = resize to size), plus `resize` and `processor` (the processor's class)."""
    cfg = _processor_config(model_id)
    kind = str(cfg.get("image_processor_type", "")).removesuffix("Fast")
    rescale = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
    if not math.isclose(float(rescale), 1 / 255, rel_tol=1e-6):
        raise ConfigError(f"model '{model_id}': image processor rescale_factor {rescale} is not 1/255; not supported")
    normalize = cfg.get("do_normalize", True)
    mean = list(cfg.get("image_mean", (0.5, 0.5, 0.5))) if normalize else [0.0, 0.0, 0.0]
    std = list(cfg.get("image_std", (0.5, 0.5, 0.5))) if normalize else [1.0, 1.0, 1.0]
    resample = cfg.get("resample", 3)
    interpolation = _INTERPOLATIONS.get(int(resample), "bicubic") if isinstance(resample, int) else str(resample)
    out: dict[str, Any] = {"mode": "RGB", "mean": mean, "std": std, "interpolation": interpolation,
                           "fill_color": 0, "processor": kind or "unknown"}
    if "max_num_patches" in cfg:  # Siglip2 (NaFlex): square input of max_num_patches patches (see module docs)
        side = int(cfg.get("patch_size", 16)) * math.isqrt(int(cfg["max_num_patches"]))
        out.update(size=[side, side], resize=[side, side], resize_mode="squash",
                   patch_size=int(cfg.get("patch_size", 16)))
        return out
    size = cfg.get("size", 224)
    if isinstance(size, dict) and "shortest_edge" in size:
        crop = _size(cfg.get("crop_size", size["shortest_edge"])) if cfg.get("do_center_crop", True) else None
        if crop is None:
            raise ConfigError(f"model '{model_id}': a shortest-edge resize without a centre crop gives images of "
                              "varying size; not supported")
        out.update(size=list(crop), resize=int(size["shortest_edge"]), resize_mode="shortest")
        return out
    h, w = _size(size)
    crop = _size(cfg["crop_size"]) if cfg.get("do_center_crop") and cfg.get("crop_size") else None
    out.update(size=list(crop or (h, w)), resize=[h, w], resize_mode="squash")
    return out


class CenterCropFloor:
    """transformers' centre crop: offsets (H − h) // 2 and (W − w) // 2 (torchvision's CenterCrop rounds them,
    one pixel off for odd differences). PIL images in, PIL images out; images smaller than the crop are an error."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image):
        h, w = self.size
        if image.height < h or image.width < w:
            raise ValueError(f"image {image.width}x{image.height} is smaller than the {w}x{h} crop")
        top, left = (image.height - h) // 2, (image.width - w) // 2
        return image.crop((left, top, left + w, top + h))

    def __repr__(self) -> str:
        return f"CenterCropFloor(size={self.size})"


def eval_transform(cfg: dict[str, Any]):
    """The torchvision eval transform of a `static_preprocess` dict: Resize (PIL, as transformers' slow
    processors; its torchvision processors differ by at most one uint8 level), transformers' centre crop, RGB,
    ToTensor, Normalize."""
    from open_clip.transform import MaybeConvertMode, MaybeToTensor
    from torchvision.transforms import Compose, InterpolationMode, Normalize, Resize

    interpolation = InterpolationMode(cfg["interpolation"])
    resize = cfg["resize"]
    steps: list[Any] = [Resize(resize if isinstance(resize, int) else tuple(resize), interpolation=interpolation,
                               antialias=True)]
    resized = [resize, resize] if isinstance(resize, int) else list(resize)
    if cfg["resize_mode"] == "shortest" or list(cfg["size"]) != resized:
        steps.append(CenterCropFloor(tuple(cfg["size"])))
    steps += [MaybeConvertMode("RGB"), MaybeToTensor(), Normalize(mean=cfg["mean"], std=cfg["std"])]
    return Compose(steps)


# ----------------------------------------------------------------------------------------- the model
def _features(out: Any) -> Tensor:
    """transformers 4 returns the projected features, 5 a model output whose pooler_output holds them."""
    return out if isinstance(out, Tensor) else out.pooler_output


class HFVisual(nn.Module):
    """The image side of a transformers dual encoder as open_clip's `visual`: `forward(pixels)` = the model's
    `get_image_features` (projected image embedding). Its sub-modules are the model's own `vision_model` (and
    `visual_projection` where there is one), so `named_parameters`, IMO adapters (docs/imo.md) and
    `functional_call` act on the weights `get_image_features` uses."""

    def __init__(self, hf_model: nn.Module, image_size: tuple[int, int], patch_size: int | None = None):
        super().__init__()
        self.vision_model = hf_model.vision_model
        if isinstance(getattr(hf_model, "visual_projection", None), nn.Module):
            self.visual_projection = hf_model.visual_projection
        self.image_size = tuple(image_size)
        self.patch_size = patch_size  # Siglip2 (NaFlex): images are patchified here
        self._image_features = hf_model.get_image_features  # a bound method: not registered as a sub-module

    def naflex_inputs(self, pixels: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) -> Siglip2's (B, N, p·p·3) patches, all-ones attention mask and (nh, nw) shapes, as its
        processor lays them out (patch rows, then columns; each patch row-major, channels last)."""
        p = int(self.patch_size)
        b, c, h, w = pixels.shape
        patches = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        patches = patches.reshape(b, (h // p) * (w // p), -1)
        mask = torch.ones(b, patches.shape[1], dtype=torch.int32, device=pixels.device)
        shapes = torch.tensor([[h // p, w // p]] * b, dtype=torch.long, device=pixels.device)
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def forward(self, pixels: Tensor) -> Tensor:
        if self.patch_size is not None:
            return _features(self._image_features(**self.naflex_inputs(pixels)))
        return _features(self._image_features(pixel_values=pixels))


class HFDualEncoder(nn.Module):
    """A transformers dual encoder behind open_clip's interface: `encode_image(pixels)`, `encode_text(tokens)`,
    `logit_scale` (log-scale parameter) and `logit_bias` (or None), `visual` (HFVisual, with `image_size`)."""

    def __init__(self, hf_model: nn.Module, image_size: tuple[int, int], patch_size: int | None = None):
        super().__init__()
        self.hf = hf_model
        self.visual = HFVisual(hf_model, image_size, patch_size)
        self.logit_scale = hf_model.logit_scale
        self.logit_bias = getattr(hf_model, "logit_bias", None)

    def encode_image(self, pixels: Tensor) -> Tensor:
        return self.visual(pixels)

    def encode_text(self, tokens: dict[str, Tensor]) -> Tensor:
        return _features(self.hf.get_text_features(**tokens))


class TokenBatch(dict):
    """The tokenizer's tensors (input_ids, attention_mask, …), movable like a tensor: `.to(device)`."""

    def to(self, device, non_blocking: bool = False) -> TokenBatch:
        return TokenBatch({k: v.to(device, non_blocking=non_blocking) for k, v in self.items()})


class HFTokenizer:
    """The model's own tokenizer, padded to the text tower's context length (as SigLIP was trained) and truncated."""

    def __init__(self, tokenizer: Any, context_length: int):
        self.tokenizer, self.context_length = tokenizer, int(context_length)

    def __call__(self, texts: list[str]) -> TokenBatch:
        out = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.context_length,
                             return_tensors="pt")
        return TokenBatch({k: v for k, v in out.items() if k in ("input_ids", "attention_mask")})


@contextlib.contextmanager
def _quiet_transformers(transformers) -> Iterator[None]:
    """No per-tensor 'Loading weights' progress bar and no info/warning chatter while loading (restored after)."""
    hf_logging = transformers.utils.logging
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_random(model_id: ModelId, device: str | torch.device = "cpu") -> HFDualEncoder:
    """The model's architecture (config.json only, no weights read) with random weights, created on `device`
    ('meta' for FLOP counting) — for cost estimates."""
    transformers = require_transformers()
    cfg = static_preprocess(model_id)
    with hub_offline(), _quiet_transformers(transformers):
        config = transformers.AutoConfig.from_pretrained(str(model_dir(model_id)), local_files_only=True)
        with torch.device(device):
            model = transformers.AutoModel.from_config(config)
    patch = cfg.get("patch_size") if cfg.get("processor", "").startswith("Siglip2") else None
    return HFDualEncoder(model, tuple(cfg["size"]), patch_size=patch).eval()


def load(model_id: ModelId, preprocess_cfg: dict[str, Any]) -> tuple[HFDualEncoder, HFTokenizer]:
    """The wrapped model (float32, eval mode, on the CPU) and its tokenizer, from local files only."""
    transformers = require_transformers()
    directory = model_dir(model_id)
    with hub_offline(), _quiet_transformers(transformers):
        try:
            model = transformers.AutoModel.from_pretrained(str(directory), local_files_only=True, dtype=torch.float32)
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise WeightsUnavailableError(f"could not load model '{model_id}' from {directory}: {e}") from e
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")
            and hasattr(model, "vision_model") and hasattr(model, "logit_scale")):
        raise ConfigError(
            f"model '{model_id}' is a {type(model).__name__}, not a CLIP-style dual encoder: clipadapt's hf: backend "
            "supports CLIPModel, SiglipModel, Siglip2Model and models with their get_image_features / "
            "get_text_features API (e.g. MetaCLIP)"
        )
    text_config = getattr(model.config, "text_config", None)
    context = getattr(text_config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", 77)
    patch = preprocess_cfg.get("patch_size") if preprocess_cfg.get("processor", "").startswith("Siglip2") else None
    wrapped = HFDualEncoder(model, tuple(preprocess_cfg["size"]), patch_size=patch).eval()
    # open_clip's preprocess_cfg fields, read by adapter training (its crops use size, mean, std)
    wrapped.visual.preprocess_cfg = {k: preprocess_cfg[k] for k in
                                     ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")}
    return wrapped, HFTokenizer(tokenizer, context)
