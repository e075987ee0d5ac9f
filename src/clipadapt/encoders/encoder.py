"""`load_encoder`: an open_clip model by id, on a device chosen once, encoding batches with autocast."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import pickle
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor

from clipadapt.adapters.imo_adapter import adapter_checkpoint_sha256, attach_adapter_checkpoint
from clipadapt.encoders.augment import ViewAugment
from clipadapt.encoders.configs import register_model_configs
from clipadapt.encoders.ids import ModelId, parse_model_id
from clipadapt.encoders.weights import (
    RANDOM_INIT_SEED,
    canonical_preprocess,
    hf_cache_home,
    hub_offline,
    needs_quick_gelu,
    resolve_weights,
    static_preprocess,
    weights_dir,
    weights_fingerprint,
)
from clipadapt.errors import ConfigError, MissingDependencyError, WeightsFileError, WeightsUnavailableError
from clipadapt.ops import CLIP_LOGIT_SCALE

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TEXT_BATCH = 256


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device, chosen once: the one given, else cuda when available, else cpu."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device '{device}': not a torch device ({e})") from e


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 (or fp16) autocast on cuda, fp32 on cpu; explicit values pass through."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def encoder_fingerprint(
    model_id: str | ModelId,
    *,
    device: str | torch.device | None = None,
    precision: str = "auto",
    adapter: str | Path | None = None,
) -> dict[str, Any]:
    """What determines the embeddings of `model_id`, computed WITHOUT building the model (for cache keys).

    arch, weights (tag / checkpoint sha256 / hub id / random-init seed), preprocessing (size, mean, std,
    interpolation, resize mode), QuickGELU, autocast precision, adapter checkpoint sha256, open_clip version.
    """
    import open_clip

    register_model_configs()
    mid = model_id if isinstance(model_id, ModelId) else parse_model_id(model_id)
    prec = resolve_precision(precision, resolve_device(device))
    adapter_hash = adapter_checkpoint_sha256(adapter) if adapter is not None else None
    if mid.is_transformers:  # hf:: repo + commit (or a local directory's file hashes), the processor's preprocessing
        from clipadapt.encoders import hf

        library = {"transformers": hf.require_transformers().__version__}  # first: the named install hint
        model = {"arch": hf.architecture(mid), "weights": hf.weights_fingerprint(mid),
                 "preprocessing": hf.static_preprocess(mid), "quick_gelu_forced": False}
    else:
        library = {"open_clip": open_clip.__version__}
        model = {"arch": mid.arch or mid.open_clip_name, "weights": weights_fingerprint(mid),
                 "preprocessing": static_preprocess(mid), "quick_gelu_forced": needs_quick_gelu(mid)}
    return {"model_id": str(mid), **model, "precision": prec, "adapter": adapter_hash, **library}


def _create_model(mid: ModelId, device: torch.device, where: dict[str, Any]) -> torch.nn.Module:
    """Build the open_clip model from local files when they exist (no network), else let open_clip download."""
    import open_clip

    kwargs: dict[str, Any] = {"device": "cpu", "precision": "fp32", "cache_dir": weights_dir()}
    if needs_quick_gelu(mid):
        kwargs["force_quick_gelu"] = True
    try:
        if mid.kind == "random-init":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_INIT_SEED)
                with warnings.catch_warnings(), _quiet_open_clip():
                    warnings.simplefilter("ignore")
                    model = open_clip.create_model(mid.arch, pretrained=None, **kwargs)
        elif mid.kind == "hf-hub":
            if where["local"] is not None:
                with hub_offline():
                    model = open_clip.create_model(f"local-dir:{where['local']}", **kwargs)
            else:
                model = open_clip.create_model(mid.open_clip_name, require_pretrained=True, **kwargs)
        elif where["local"] is not None:
            tag_cfg = where["tag_cfg"]
            preprocess = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
            with hub_offline():
                model = open_clip.create_model(
                    mid.arch, pretrained=str(where["local"]), force_preprocess_cfg=preprocess,
                    require_pretrained=True, **kwargs
                )
        else:
            model = open_clip.create_model(mid.arch, pretrained=mid.tag, require_pretrained=True, **kwargs)
    except WeightsUnavailableError:
        raise
    except SafetensorError as e:
        raise WeightsFileError(f"{where['local'] or mid}: not a weights file: safetensors cannot read it ({e}); "
                               f"give a state-dict checkpoint or a .safetensors file for model '{mid}'") from e
    except pickle.UnpicklingError as e:  # weights-only loading refused it: it was never executed
        raise WeightsFileError(
            f"{where['local'] or mid}: not a weights file: it is a pickle holding code or objects other than tensors "
            "and plain containers, and clipadapt never executes those (weights-only loading refused it); give a "
            f"state-dict checkpoint (tensors only) or a .safetensors file for model '{mid}'") from e
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        if where["download"]:
            raise WeightsUnavailableError(f"could not download weights for model '{mid}': {e}") from e
        raise WeightsUnavailableError(f"could not load weights for model '{mid}' from {where['local']}: {e}") from e
    return model.to(device).eval()


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs a warning for every random-init model; that is the point of the test models."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def model_logit_params(model: torch.nn.Module) -> dict[str, float | None]:
    """The learned logit scale and bias of an open_clip (or wrapped transformers) model; see Encoder.logit_params."""
    log_scale = getattr(model, "logit_scale", None)
    bias = getattr(model, "logit_bias", None)
    scale = float(f"{math.exp(log_scale.item()):.6g}") if isinstance(log_scale, Tensor) else CLIP_LOGIT_SCALE
    return {"logit_scale": scale, "logit_bias": float(f"{bias.item():.6g}") if isinstance(bias, Tensor) else None}


class Encoder:
    """A loaded CLIP backbone: `encode_images` / `encode_texts` return raw float32 embeddings on the CPU."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        *,
        device: torch.device,
        model_id: str,
        precision: str,
        fingerprint: dict[str, Any],
        adapter_id: str | None = None,
    ):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.model_id, self.precision = device, model_id, precision
        self.adapter_id = adapter_id
        self._fingerprint = fingerprint
        self._embed_dim: int | None = None

    def __repr__(self) -> str:
        return f"Encoder({self.model_id!r}, device={self.device}, precision={self.precision})"

    @property
    def embed_dim(self) -> int:
        """D, the joint embedding dimension."""
        if self._embed_dim is None:
            dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
            self._embed_dim = int(dim) if dim else int(self.encode_texts(["a"]).shape[-1])
        return self._embed_dim

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        return dict(self._fingerprint["preprocessing"])

    def logit_params(self) -> dict[str, float | None]:
        """{'logit_scale': s, 'logit_bias': b or None}: the model's learned logit scale (exp of its stored log-scale,
        to 6 significant digits, so CLIP's float32 ln 100 gives exactly 100) and bias (SigLIP's; None without)."""
        return model_logit_params(self.model)

    def fingerprint(self) -> dict[str, Any]:
        """What determines the embeddings (a copy; see `encoder_fingerprint`)."""
        return copy.deepcopy(self._fingerprint)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for the chosen precision (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AMP_DTYPES[self.precision])

    def encode_images(self, batch: Tensor) -> Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) raw float32 embeddings on the CPU."""
        with torch.inference_mode(), self.autocast():
            out = self.model.encode_image(batch.to(self.device, non_blocking=True))
        return out.float().cpu()

    def encode_texts(self, texts: list[str], batch_size: int = TEXT_BATCH) -> Tensor:
        """Strings -> (B, D) raw float32 embeddings on the CPU (tokenised and encoded in chunks)."""
        if not texts:
            raise ConfigError("encode_texts: empty list of texts")
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]))
            with torch.inference_mode(), self.autocast():
                out = self.model.encode_text(tokens.to(self.device, non_blocking=True))
            chunks.append(out.float().cpu())
        return torch.cat(chunks)

    def train_transform(self, seed: int | None = None) -> ViewAugment:
        """The V-view augmentation: RandomResizedCrop(size, scale=(0.5, 1)) + flip + CLIP normalisation.

        With `seed` the transform owns a seeded generator; `aug(image, generator)` overrides it per call.
        """
        cfg = self._fingerprint["preprocessing"]
        return ViewAugment(cfg["size"], cfg["mean"], cfg["std"], interpolation=cfg["interpolation"], seed=seed)


def load_encoder(
    model_id: str,
    *,
    device: str | torch.device | None = None,
    precision: str = "auto",
    adapter: str | Path | None = None,
) -> Encoder:
    """Load a backbone by id (see `parse_model_id`): open_clip, or transformers for `hf:` ids (the `[hf]` extra),
    optionally with an IMO adapter checkpoint.

    Raises WeightsUnavailableError within seconds when the weights are neither local nor downloadable.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    register_model_configs()
    mid = parse_model_id(model_id)
    dev = resolve_device(device)
    if mid.is_transformers:
        from clipadapt.encoders import hf

        hf.require_transformers()  # before any file lookup: the named install hint first
    fingerprint = encoder_fingerprint(mid, device=dev, precision=precision, adapter=adapter)
    if mid.is_transformers:  # model_dir was resolved (or failed fast) by the fingerprint
        model, tokenizer = hf.load(mid, fingerprint["preprocessing"])
        model = model.to(dev).eval()
        preprocess = hf.eval_transform(fingerprint["preprocessing"])
    else:
        where = resolve_weights(mid)  # fails fast when offline with nothing local
        model = _create_model(mid, dev, where)
        actual = canonical_preprocess(open_clip.get_model_preprocess_cfg(model))
        expected = {k: fingerprint["preprocessing"].get(k) for k in actual}
        if actual != expected:  # the static computation mirrors open_clip's factory; trust the model if they differ
            log.warning("model %s: preprocessing %s differs from the expected %s; using the model's", mid,
                        actual, expected)
            fingerprint["preprocessing"] = actual
        preprocess = image_transform_v2(PreprocessCfg(**actual), is_train=False)
        tokenizer = _tokenizer(mid, where)
    adapter_id = None
    if adapter is not None:
        adapter_id = attach_adapter_checkpoint(model, Path(adapter))
        model = model.to(dev).eval()
        if adapter_id != fingerprint["adapter"]:  # the hash the adapter package reports is the one that counts
            log.warning("adapter %s: attach returned hash %s, expected %s", adapter, adapter_id, fingerprint["adapter"])
            fingerprint["adapter"] = adapter_id
    return Encoder(
        model, preprocess, tokenizer, device=dev, model_id=str(mid), precision=fingerprint["precision"],
        fingerprint=fingerprint, adapter_id=adapter_id,
    )


def _tokenizer(mid: ModelId, where: dict[str, Any]) -> Callable:
    """open_clip's tokenizer (`_open_clip_tokenizer`); a Hugging Face text tokenizer (SigLIP's, …) without
    `transformers` installed is a MissingDependencyError naming the extra, one missing offline a
    WeightsUnavailableError naming the HF cache."""
    import open_clip

    try:
        return _open_clip_tokenizer(mid, where)
    except ImportError as e:
        raise MissingDependencyError(
            f"model '{mid}': its text tokenizer is a Hugging Face tokenizer, which needs the 'transformers' package "
            f"(not installed): pip install 'clipadapt[hf]'"
        ) from e
    except OSError as e:
        name = (open_clip.get_model_config(mid.arch) or {}).get("text_cfg", {}).get("hf_tokenizer_name", "?") \
            if mid.arch else mid.open_clip_name
        raise WeightsUnavailableError(
            f"model '{mid}': its Hugging Face tokenizer '{name}' is not in the HF hub cache (HF_HOME: "
            f"{hf_cache_home()}) and cannot be downloaded here ({e}); download it once with network "
            f"(`hf download {name}`) and copy the cache here or point HF_HOME at it"
        ) from e


def _open_clip_tokenizer(mid: ModelId, where: dict[str, Any]) -> Callable:
    """open_clip's tokenizer for the model; from the local snapshot / hub cache when the weights are local."""
    import open_clip

    if mid.kind == "hf-hub" and where["local"] is not None:
        with hub_offline():
            return open_clip.get_tokenizer(f"local-dir:{where['local']}")
    if mid.kind == "hf-hub":
        return open_clip.get_tokenizer(mid.open_clip_name, cache_dir=weights_dir())
    if where["local"] is not None or mid.kind == "random-init":
        with hub_offline():  # HF text tokenizers (e.g. SigLIP's) come from the hub cache, no retries
            return open_clip.get_tokenizer(mid.arch)
    return open_clip.get_tokenizer(mid.arch)
