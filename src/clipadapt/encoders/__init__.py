"""Backbone adapters: open_clip models by id ARCH@TAG, batched encoding, device chosen once."""

from clipadapt.encoders.augment import ViewAugment
from clipadapt.encoders.encoder import Encoder, encoder_fingerprint, load_encoder, resolve_device, resolve_precision
from clipadapt.encoders.ids import ModelId, parse_model_id

__all__ = [
    "Encoder",
    "ModelId",
    "ViewAugment",
    "encoder_fingerprint",
    "load_encoder",
    "parse_model_id",
    "resolve_device",
    "resolve_precision",
]
