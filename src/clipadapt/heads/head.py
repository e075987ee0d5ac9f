"""`Head`: a fitted classifier (zero-shot, DN, Tip-Adapter/-F, Tip-X, TA++/TX++) with what it needs to be applied.

A head wraps the fitted estimator of `clipadapt.methods` — the very object `clipadapt fewshot` / `eval --method dn`
score the test split with — so `head.predict_logits(features)` is the estimator's `predict_logits` on the same
state and hyper-parameters, nothing re-implemented. Features are raw embeddings (N, D) or (N, V, D), as
everywhere in clipadapt; the estimator normalises as its formula says.

Tip-X (and TX++): ψ rescales the KL term over the rows scored together (docs/methods.md §4), so a row's logits
depend on the other rows of the same call — `predict_logits` of a whole split equals `fewshot`'s logits;
scoring it in pieces does not. DN uses the mean stored at fit time (docs/heads.md), so it scores one image alone.

The head's model: `model_id` (None when the features it was fitted on name no model clipadapt can build; such a
head predicts from features only). Images are encoded lazily by `head.encoder()` (plus the IMO adapter the head
stores, for TA++/TX++).
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from clipadapt.errors import ConfigError, HeadFileError, HeadMismatchError
from clipadapt.eval.fewshot import METHOD_TABLE
from clipadapt.fileio import atomic_path
from clipadapt.methods.dn import DistributionNormalizer

# method -> (estimator class, fitted on adapted (IMO) features)
ESTIMATORS: dict[str, tuple[type, bool]] = {
    **{name: (estimator, adapted) for name, (estimator, _, adapted) in METHOD_TABLE.items()},
    "dn": (DistributionNormalizer, False),
}

# The fitted tensors of every estimator, with their shapes in symbols: C classes, D embedding dim, N cache rows,
# A adapted embedding dim. Attributes ending in `_` that are not tensors (counts, the chosen epoch) go in metadata.
STATE_SHAPES: dict[str, tuple[str, ...]] = {
    "classifier_": ("C", "D"),
    "keys_": ("N", "D"),
    "values_": ("N", "C"),
    "adapted_keys_": ("N", "A"),
    "key_log_signatures_": ("N", "C"),
    "image_mean_": ("D",),
    "text_mean_": ("D",),
}
REQUIRED_STATE: dict[str, tuple[str, ...]] = {
    "ZeroShotClassifier": ("classifier_",),
    "DistributionNormalizer": ("classifier_", "image_mean_", "text_mean_"),
    "TipAdapter": ("classifier_", "keys_", "values_"),
    "TipAdapterF": ("classifier_", "keys_", "values_"),
    "TipX": ("classifier_", "keys_", "values_", "key_log_signatures_"),
}
STATE_PREFIX = "state."
ADAPTER_PREFIX = "adapter."


def estimator_state(estimator: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, other fitted values) of a fitted estimator: every attribute ending in `_` (None kept as null)."""
    tensors, other = {}, {}
    for name, value in vars(estimator).items():
        if not name.endswith("_") or name.startswith("_"):
            continue
        if isinstance(value, Tensor):
            tensors[name] = value.detach()
        else:
            other[name] = _json_value(value)
    return tensors, other


def _json_value(value: Any) -> Any:
    """NaN (an epoch scored without validation) as null, so the metadata is strict JSON."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: any edit of a head's tensors shows."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class Head:
    """A fitted classifier and its metadata; `clipadapt.load_head(path)` reads one, `clipadapt fit` writes one.

    `estimator`: the fitted method object; `meta`: the head's metadata (docs/heads.md: model, classes, method,
    chosen hyper-parameters and their validation accuracy, provenance); `adapter`: the IMO adapter tensors
    (`blocks.{i}.{down,up}.{weight,bias}`) for TA++/TX++ heads fitted through an adapter checkpoint.
    """

    def __init__(self, estimator: Any, meta: dict[str, Any], adapter: dict[str, Tensor] | None = None):
        self.estimator, self.meta, self.adapter = estimator, meta, adapter
        self._encoders: dict[tuple, Any] = {}

    # ------------------------------------------------------------------------------------------------ facts
    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def classnames(self) -> list[str]:
        return list(self.meta["classnames"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classnames"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def model_id(self) -> str | None:
        """The model images must be encoded with, or None when the head can predict from features only."""
        model = self.meta.get("model") or {}
        return model.get("id") if model.get("encodable") else None

    @property
    def needs_adapted(self) -> bool:
        """TA++/TX++: the cache affinity uses features through the IMO adapter."""
        return ESTIMATORS[self.method][1]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.meta.get("selection", {}).get("hyperparameters", {}))

    def __repr__(self) -> str:
        model = (self.meta.get("model") or {}).get("id") or "unknown model"
        return f"Head({self.method!r}, {self.num_classes} classes, {model}, D={self.dim})"

    # ------------------------------------------------------------------------------------------------ features
    def check_features(self, features: Tensor, what: str = "features") -> None:
        """HeadMismatchError unless `features` are (N, D) or (N, V, D) with this head's D."""
        if features.ndim not in (2, 3) or features.shape[-1] != self.dim:
            raise HeadMismatchError(
                f"{what} have shape {tuple(features.shape)} but this {self.method} head expects (N, {self.dim}) "
                f"embeddings of {(self.meta.get('model') or {}).get('id') or 'its model'}: were they computed with "
                "another model?"
            )

    def predict_logits(self, features: Tensor, adapted_features: Tensor | None = None) -> Tensor:
        """(N, C) logits of raw embeddings (N, D) or (N, V, D); `adapted_features`: the same images through the
        IMO adapter (TA++/TX++ heads only). Tip-X heads: score a whole set in one call (module docstring)."""
        self.check_features(features)
        device = self.estimator.classifier_.device  # features encoded on a GPU meet the head's (CPU) tensors
        features = features.to(device)
        adapted_features = adapted_features.to(device) if adapted_features is not None else None
        if self.needs_adapted:
            if adapted_features is None:
                raise ConfigError(f"this {self.method} head needs adapted_features too: the same images encoded "
                                  "through its IMO adapter (head.encode(images) returns both)")
            self.check_features(adapted_features, "adapted features")
            return self.estimator.predict_logits(features, adapted_features)
        if adapted_features is not None:
            raise ConfigError(f"a {self.method} head takes no adapted_features (only tip++/tipx++ heads do)")
        return self.estimator.predict_logits(features)

    def predict_proba(self, features: Tensor, adapted_features: Tensor | None = None) -> Tensor:
        """softmax of `predict_logits`."""
        return self.predict_logits(features, adapted_features).softmax(dim=-1)

    def check_feature_meta(self, meta: dict[str, Any], classnames: Sequence[str] | None, where: str,
                           labelled: bool = False) -> list[str]:
        """Features from a directory: HeadMismatchError when its meta.json names another model, or when its
        labelled split counts another number of classes; returns notes (other class names, unknown model)."""
        notes = []
        mine, theirs = (self.meta.get("model") or {}).get("id"), meta.get("model")
        if mine and theirs and str(mine) != str(theirs):
            raise HeadMismatchError(f"{where}: features of model {theirs} (meta.json) but the head was fitted on "
                                    f"{mine} features; encode the images with {mine}")
        if classnames is not None and list(classnames) != self.classnames:
            if labelled and len(classnames) != self.num_classes:
                raise HeadMismatchError(f"{where}: {len(classnames)} classes in meta.json but the head has "
                                        f"{self.num_classes}; its labels cannot be compared with the head's classes")
            if len(classnames) == self.num_classes:
                notes.append(f"{where}: class names differ from the head's; predictions use the head's names")
        return notes

    # ------------------------------------------------------------------------------------------------ images
    def encoder(self, *, device: str | None = None, adapted: bool = False, precision: str = "auto"):
        """The head's encoder (loaded once, lazily); `adapted=True`: the same model with the head's IMO adapter."""
        if self.model_id is None:
            raise HeadMismatchError(self.features_only_message())
        if adapted and self.adapter is None:
            raise HeadFileError(f"this {self.method} head stores no IMO adapter (it was fitted from adapted "
                                "features): it can only predict from features and adapted features")
        key = (device, adapted, precision)
        if key not in self._encoders:
            from clipadapt.encoders import load_encoder

            checkpoint = self.adapter_checkpoint() if adapted else None
            enc = load_encoder(self.model_id, device=device, precision=precision, adapter=checkpoint)
            self.check_encoder(enc)
            self._encoders[key] = enc
        return self._encoders[key]

    def features_only_message(self) -> str:
        model = (self.meta.get("model") or {}).get("id")
        named = f"model '{model}', which clipadapt cannot build" if model else "no model id"
        return (f"this head was fitted on features with {named}: it can only predict from precomputed features "
                "of that model (`clipadapt predict --features DIR:SPLIT`, head.predict_logits(features))")

    def check_encoder(self, encoder: Any) -> None:
        """HeadMismatchError unless `encoder` is the head's model (id, weights, preprocessing, D)."""
        model = self.meta.get("model") or {}
        if model.get("id") is None:
            raise HeadMismatchError(self.features_only_message())
        fp = encoder.fingerprint()
        if str(encoder.model_id) != str(model["id"]):
            raise HeadMismatchError(f"the encoder is {encoder.model_id} but the head was fitted on {model['id']} "
                                    "features; load the head's model (head.encoder())")
        for field in ("weights", "preprocessing"):
            if model.get(field) is not None and fp.get(field) != model[field]:
                raise HeadMismatchError(f"encoder {encoder.model_id}: {field} {fp.get(field)} differ from the head's "
                                        f"{model[field]}: the embeddings would not be the ones the head was fitted on")
        if encoder.embed_dim != self.dim:
            raise HeadMismatchError(f"encoder {encoder.model_id} gives D={encoder.embed_dim} embeddings but the head "
                                    f"expects D={self.dim}")

    def adapter_checkpoint(self, directory: str | Path | None = None) -> Path:
        """The stored IMO adapter written back as a checkpoint file (identical bytes: same sha256, so the
        feature cache reuses the adapted features encoded at fit time). In a temporary directory by default."""
        from clipadapt.adapters.imo_adapter import METADATA_KEY

        if self.adapter is None:
            raise HeadFileError(f"this {self.method} head stores no IMO adapter")
        info = self.meta["adapter"]
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="clipadapt-head-adapter-"))
        path = Path(directory) / "adapter.safetensors"
        if not path.is_file():
            tensors = {k: v.contiguous() for k, v in self.adapter.items()}
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(info["structure"], sort_keys=True)})
        return path

    def encode(self, images: Iterable[Any], *, device: str | None = None, batch_size: int = 64,
               progress: bool = False) -> tuple[Tensor, Tensor | None]:
        """(raw features (N, D), adapted features or None) of PIL images or image paths, with the head's model."""
        from clipadapt.data.dataset import open_rgb

        items = list(images)
        if not items:
            raise ConfigError("no images given")
        encoders = [self.encoder(device=device)]
        if self.needs_adapted:
            encoders.append(self.encoder(device=device, adapted=True))
        outs: list[list[Tensor]] = [[] for _ in encoders]
        for start in tqdm(range(0, len(items), batch_size), desc="encoding images", unit="batch", disable=not progress):
            pil = [x if not isinstance(x, (str, Path)) else open_rgb(x) for x in items[start:start + batch_size]]
            for enc, out in zip(encoders, outs):
                batch = torch.stack([enc.preprocess(im.convert("RGB")) for im in pil])
                out.append(enc.encode_images(batch))
        feats = [torch.cat(o) for o in outs]
        return feats[0], (feats[1] if self.needs_adapted else None)

    def image_logits(self, images: Iterable[Any], *, device: str | None = None, batch_size: int = 64) -> Tensor:
        """(N, C) logits of PIL images or paths (encoded with the head's model, loaded on first use)."""
        features, adapted = self.encode(images, device=device, batch_size=batch_size)
        return self.predict_logits(features, adapted)

    def predict(self, images: Iterable[Any], *, device: str | None = None, batch_size: int = 64) -> list[str]:
        """The top-1 class name of each image (PIL image or path)."""
        logits = self.image_logits(images, device=device, batch_size=batch_size)
        return [self.classnames[i] for i in logits.argmax(1).tolist()]

    def topk(self, logits: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per row, the k most probable (class name, probability), best first."""
        k = max(1, min(int(k), self.num_classes))
        probs, idx = logits.softmax(dim=-1).topk(k, dim=-1)
        return [[(self.classnames[i], float(p)) for i, p in zip(row_i, row_p)]
                for row_i, row_p in zip(idx.tolist(), probs.tolist())]

    # ------------------------------------------------------------------------------------------------ export
    def as_module(self, encoder: Any = None, adapted_encoder: Any = None) -> torch.nn.Module:
        """A `torch.nn.Module` mapping a preprocessed image batch (B, 3, H, W) to (B, C) logits: the encoder's image
        tower, then this head. `encoder`: an `Encoder` of the head's model (default: `self.encoder()`); TA++/TX++
        heads also run a copy of it with the head's IMO adapter. Exportable with torch.export and ONNX."""
        from clipadapt.heads.module import HeadModule

        encoder = encoder if encoder is not None else self.encoder()
        self.check_encoder(encoder)
        adapted_model = None
        if self.needs_adapted:
            if adapted_encoder is None:
                from clipadapt.adapters.imo_adapter import attach_adapter_checkpoint

                adapted_model = copy.deepcopy(encoder.model)
                attach_adapter_checkpoint(adapted_model, self.adapter_checkpoint())
                adapted_model.eval()
            else:
                adapted_model = adapted_encoder.model
        module = HeadModule(encoder.model, self.estimator, adapted_model=adapted_model)
        return module.to(next(encoder.model.parameters()).device).eval()
