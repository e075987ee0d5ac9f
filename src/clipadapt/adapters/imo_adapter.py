"""The IMO bottleneck adapter (docs/methods.md §5): insertion into a ViT-style tower, the on/off switch, checkpoints.

Each residual block of the visual transformer computes, after insertion,

    x <- x + MLP(LN2(x)) + s * Adapter(x),   Adapter = Linear(d->w) -> ReLU -> Dropout -> Linear(w->d)

where `x` is the block's input to its MLP sub-layer (after the attention residual). The adapter is attached
with two forward hooks on the block's own sub-modules, so the block code runs unchanged: a hook on the pre-MLP
norm sees `x` (its input) and computes `s * Adapter(x)`; a hook on the module that ends the MLP branch adds it
there, and the block then adds the branch to `x`. The up-projection and both biases start at zero, so an
untrained adapter adds exactly 0 and the embeddings are bit-for-bit the backbone's.

Supported towers (`BLOCK_LAYOUTS`; any other is a ConfigError that lists them and says why):
- open_clip VisionTransformer (CLIP ViTs): `visual.transformer.resblocks`, hooks on `ln_2` and `ls_2`;
- timm VisionTransformer trunks reached through open_clip (SigLIP, `timm/...` towers): `visual.trunk.blocks`
  of timm's pre-norm `Block`, hooks on `norm2` and `ls2`;
- transformers CLIP / SigLIP / SigLIP 2 vision encoders (`hf:` models, whose `visual` is
  clipadapt.encoders.hf.HFVisual): `visual.vision_model.encoder.layers`, hooks on `layer_norm2` and `mlp`.
Convolutional towers (ModifiedResNet, timm ConvNeXt/ResNet) have no such block, and post-norm or parallel
blocks put the MLP elsewhere: the adapter's definition does not apply to them.

Checkpoints hold only the adapter weights (safetensors, with the structural config in its metadata so the
file's sha256 covers width/scale) plus a JSON config (training hyper-parameters, steps, ...).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from clipadapt.errors import AdapterError, ConfigError
from clipadapt.fileio import atomic_path, atomic_write_json, file_sha256, read_json

WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter.json"
CHECKPOINT_FORMAT = "clipadapt-imo-adapter"
CHECKPOINT_VERSION = 1
METADATA_KEY = "clipadapt_imo_adapter"
_STRUCTURE_KEYS = ("format", "version", "dim", "num_blocks", "width", "scale", "dropout")


class BottleneckAdapter(nn.Module):
    """`Linear(d->width) -> ReLU -> Dropout -> Linear(width->d)`; up-projection and biases start at zero.

    `scale` is the residual factor s (0.03 supervised, 0.1 self-supervised); `enabled` is the on/off switch
    read by the block hooks (see `adapters_enabled`).
    """

    def __init__(self, dim: int, *, width: int = 64, scale: float = 0.03, dropout: float = 0.1):
        super().__init__()
        if dim < 1 or width < 1:
            raise ConfigError(f"BottleneckAdapter needs dim >= 1 and width >= 1, got dim={dim}, width={width}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"BottleneckAdapter dropout must lie in [0, 1), got {dropout}")
        self.dim, self.width, self.scale, self.dropout_p = dim, width, float(scale), float(dropout)
        self.down = nn.Linear(dim, width)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True
        self._pending: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """The bottleneck output Adapter(x) (without the factor s)."""
        return self.up(self.dropout(self.act(self.down(x))))

    # hooks installed on the host block; bound methods so `copy.deepcopy` of a model stays consistent
    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        self._pending = self.scale * self(inputs[0]) if self.enabled else None

    def _add(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        pending, self._pending = self._pending, None
        return None if pending is None else output + pending

    def extra_repr(self) -> str:
        return f"dim={self.dim}, width={self.width}, scale={self.scale}, dropout={self.dropout_p}"


def _visual(model: nn.Module) -> nn.Module:
    return getattr(model, "visual", model)


def _path(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


@dataclass(frozen=True)
class BlockLayout:
    """Where a tower keeps its transformer blocks and, in each, the pre-MLP norm (its input is `x`), the module
    ending the MLP branch (its output gets `s·Adapter(x)` added) and the MLP's first linear layer (its input
    width is d)."""

    name: str
    blocks: str  # dotted path from the visual tower
    norm: str
    branch_end: str
    first_linear: str


BLOCK_LAYOUTS = (
    BlockLayout("open_clip VisionTransformer", "transformer.resblocks", "ln_2", "ls_2", "mlp.c_fc"),
    BlockLayout("timm VisionTransformer (open_clip TimmModel trunk)", "trunk.blocks", "norm2", "ls2", "mlp.fc1"),
    BlockLayout("transformers CLIP/SigLIP/SigLIP 2 vision encoder (hf: models)", "vision_model.encoder.layers",
                "layer_norm2", "mlp", "mlp.fc1"),
)
SUPPORTED = "; ".join(layout.name for layout in BLOCK_LAYOUTS)


def _layout(visual: nn.Module) -> tuple[BlockLayout, list[nn.Module]] | None:
    """The layout whose blocks `visual` has (every block with the layout's sub-modules), or None."""
    for layout in BLOCK_LAYOUTS:
        blocks = _path(visual, layout.blocks)
        if isinstance(blocks, (nn.ModuleList, nn.Sequential)) and len(blocks) and all(
                all(_path(b, p) is not None for p in (layout.norm, layout.branch_end, layout.first_linear))
                for b in blocks):
            return layout, list(blocks)
    return None


def _vit_blocks(model: nn.Module, model_name: str | None = None) -> tuple[BlockLayout, list[nn.Module]]:
    """(layout, residual blocks) of a supported ViT-style visual tower, or a ConfigError that names the tower,
    the supported architectures and why."""
    visual = _visual(model)
    found = _layout(visual)
    if found is None:
        name = model_name or type(model).__name__
        inner = _path(visual, "trunk")
        what = type(visual).__name__ + (f" (trunk {type(inner).__name__})" if inner is not None else "")
        raise ConfigError(
            f"insert_adapters: the visual tower of {name} is {what}, which has no supported pre-norm transformer "
            f"blocks. The IMO adapter (docs/methods.md §5, docs/imo.md) runs parallel to each ViT block's MLP, "
            f"x + MLP(LN2(x)) + s·Adapter(x), so it needs blocks with a pre-MLP norm and an MLP branch; supported: "
            f"{SUPPORTED}. Convolutional towers (ResNet, ConvNeXt) have no such block — use a ViT model such as "
            "ViT-B-16@openai, ViT-B-16-SigLIP@webli or hf:openai/clip-vit-base-patch16"
        )
    return found


def _blocks_if_any(model: nn.Module) -> list[nn.Module]:
    found = _layout(_visual(model))
    return found[1] if found is not None else []


def find_adapters(model: nn.Module) -> list[BottleneckAdapter]:
    """The adapters inserted in `model`'s visual blocks, in block order (empty when none)."""
    blocks = _blocks_if_any(model)
    return [b.imo_adapter for b in blocks if isinstance(getattr(b, "imo_adapter", None), BottleneckAdapter)]


def insert_adapters(
    model: nn.Module,
    *,
    width: int = 64,
    scale: float = 0.03,
    dropout: float = 0.1,
    model_name: str | None = None,
) -> list[BottleneckAdapter]:
    """Put a BottleneckAdapter parallel to the MLP of every block of `model`'s ViT-style visual tower (open_clip
    ViT, timm ViT trunk, transformers CLIP/SigLIP vision encoder: `BLOCK_LAYOUTS`).

    Freezes everything but the adapters (`requires_grad=False`). The adapters are created on the device and
    dtype of each block's MLP. Raises ConfigError for other towers (e.g. ResNet), naming the supported ones, or
    when adapters are already present.
    """
    layout, blocks = _vit_blocks(model, model_name)
    if find_adapters(model):
        raise ConfigError(
            f"insert_adapters: {model_name or type(model).__name__} already has IMO adapters; "
            "use attach_adapter_checkpoint to load weights into them"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for block in blocks:
        ref = _path(block, layout.first_linear).weight  # (hidden, d): the MLP's input width is the stream's width d
        dim = ref.shape[1]
        adapter = BottleneckAdapter(dim, width=width, scale=scale, dropout=dropout).to(ref.device, ref.dtype)
        adapter.train(block.training)
        block.imo_adapter = adapter
        adapter._handles = (
            _path(block, layout.norm).register_forward_hook(adapter._capture),
            _path(block, layout.branch_end).register_forward_hook(adapter._add),
        )
        adapters.append(adapter)
    return adapters


def remove_adapters(model: nn.Module) -> None:
    """Take the adapters out again (hooks and sub-modules); parameters stay frozen."""
    for block in _blocks_if_any(model):
        adapter = getattr(block, "imo_adapter", None)
        if isinstance(adapter, BottleneckAdapter):
            for handle in getattr(adapter, "_handles", ()):
                handle.remove()
            del block.imo_adapter


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every adapter of `model` on or off (off = the original CLIP embeddings, exactly)."""
    for adapter in find_adapters(model):
        adapter.enabled = bool(enabled)


@contextlib.contextmanager
def adapters_enabled(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """The `apply_adapter` switch: within the block, the adapters are on/off; the previous states return after.

    `with adapters_enabled(model, False): original = model.encode_image(x)`
    """
    adapters = find_adapters(model)
    previous = [a.enabled for a in adapters]
    try:
        for a in adapters:
            a.enabled = bool(enabled)
        yield model
    finally:
        for a, state in zip(adapters, previous):
            a.enabled = state


def count_adapter_parameters(model: nn.Module) -> int:
    """Number of trainable adapter parameters in `model`."""
    return sum(p.numel() for a in find_adapters(model) for p in a.parameters())


# ----------------------------------------------------------------------------------------- checkpoints
def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Adapter weights only, keyed `blocks.{i}.{down,up}.{weight,bias}`."""
    adapters = find_adapters(model)
    if not adapters:
        raise ConfigError("the model has no IMO adapters: call insert_adapters(model) first")
    return {f"blocks.{i}.{k}": v for i, a in enumerate(adapters) for k, v in a.state_dict().items()}


def _structure(adapters: list[BottleneckAdapter]) -> dict[str, Any]:
    a = adapters[0]
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "dim": a.dim,
        "num_blocks": len(adapters),
        "width": a.width,
        "scale": a.scale,
        "dropout": a.dropout_p,
    }


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights file, JSON config file) for a checkpoint directory or a `.safetensors` file path."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / WEIGHTS_FILE, path / CONFIG_FILE


def save_adapter_checkpoint(path: str | Path, model: nn.Module, config: dict[str, Any] | None = None) -> Path:
    """Write the adapter weights (safetensors) and a JSON config; returns the weights file path.

    `path` is a directory (gets adapter.safetensors + adapter.json) or a `.safetensors` file (config beside it
    with the suffix `.json`). The structural config (dim, blocks, width, scale, dropout) is stored in the
    safetensors metadata too, so the weights file's sha256 changes whenever the computed features would.
    """
    from safetensors.torch import save_file

    weights_path, config_path = checkpoint_paths(path)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in adapter_state_dict(model).items()}
    structure = _structure(find_adapters(model))
    # one metadata key: safetensors writes metadata from a hash map, so several keys come out in varying
    # order and identical adapters would get different file hashes
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(structure, sort_keys=True)})
    extra = {k: v for k, v in (config or {}).items() if k not in _STRUCTURE_KEYS}
    atomic_write_json(config_path, {**structure, **extra, "weights_file": weights_path.name,
                                    "weights_sha256": file_sha256(weights_path)})
    return weights_path


def adapter_checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a checkpoint's weights file (directory or .safetensors path): the adapter's feature-cache key.

    Equals what `attach_adapter_checkpoint` returns, without building a model.
    """
    weights_path, _ = checkpoint_paths(path)
    if not weights_path.is_file():
        raise AdapterError(f"adapter checkpoint {path}: weights file {weights_path} is missing")
    return file_sha256(weights_path)


def load_adapter_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(adapter weights, config) of a checkpoint; AdapterError naming the file when missing or inconsistent."""
    from safetensors import safe_open

    weights_path, config_path = checkpoint_paths(path)
    if not weights_path.is_file():
        raise AdapterError(f"adapter checkpoint {path}: weights file {weights_path} is missing")
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise AdapterError(f"adapter checkpoint {weights_path} is unreadable: {e}") from e
    try:
        stored = json.loads(metadata[METADATA_KEY])
        structure = {k: stored[k] for k in _STRUCTURE_KEYS}
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise AdapterError(
            f"{weights_path} is not a clipadapt IMO adapter checkpoint (metadata {METADATA_KEY!r}: field {e} "
            "missing or malformed)"
        ) from e
    if structure["format"] != CHECKPOINT_FORMAT:
        raise AdapterError(f"{weights_path}: metadata format is {structure['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    config: dict[str, Any] = {}
    if config_path.is_file():
        config = read_json(config_path, what="adapter config", error=AdapterError)
        for k in _STRUCTURE_KEYS:
            if k in config and config[k] != structure[k]:
                raise AdapterError(
                    f"adapter config {config_path} says {k}={config[k]!r} but the weights file {weights_path.name} "
                    f"was saved with {k}={structure[k]!r}; the weights file is authoritative — fix or delete the JSON"
                )
    expected = {f"blocks.{i}.{p}" for i in range(structure["num_blocks"])
                for p in ("down.weight", "down.bias", "up.weight", "up.bias")}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise AdapterError(f"{weights_path}: adapter tensors do not match its config (missing {missing[:4]}, unexpected {extra[:4]})")
    d, w = structure["dim"], structure["width"]
    shapes = {"down.weight": (w, d), "down.bias": (w,), "up.weight": (d, w), "up.bias": (d,)}
    for key, t in sorted(tensors.items()):
        want = shapes[key.split(".", 2)[2]]
        if tuple(t.shape) != want:
            raise AdapterError(
                f"{weights_path}: tensor {key!r} has shape {tuple(t.shape)}, expected {want} for the saved "
                f"dim={d}, width={w}; the file is corrupt or was not written by save_adapter_checkpoint"
            )
    return tensors, {**config, **structure}


def attach_adapter_checkpoint(model: nn.Module, path: str | Path, *, model_name: str | None = None) -> str:
    """Insert adapters as the checkpoint describes (or reuse matching ones) and load its weights.

    Returns the sha256 of the adapter weights file (it enters the feature-cache key). The adapters are left
    enabled and in eval mode when the model is.
    """
    tensors, config = load_adapter_checkpoint(path)
    weights_path, _ = checkpoint_paths(path)
    name = model_name or type(model).__name__
    _, blocks = _vit_blocks(model, model_name)
    if len(blocks) != config["num_blocks"]:
        raise AdapterError(
            f"adapter checkpoint {weights_path} has {config['num_blocks']} blocks but {name}'s visual transformer "
            f"has {len(blocks)}: was it trained for another architecture (config arch: {config.get('arch', '?')})?"
        )
    adapters = find_adapters(model) or insert_adapters(
        model, width=config["width"], scale=config["scale"], dropout=config["dropout"], model_name=model_name
    )
    if adapters[0].dim != config["dim"] or adapters[0].width != config["width"]:
        raise AdapterError(
            f"adapter checkpoint {weights_path} is for width d={config['dim']} (bottleneck {config['width']}) but "
            f"{name}'s adapters have d={adapters[0].dim} (bottleneck {adapters[0].width}) "
            f"(config arch: {config.get('arch', '?')})"
        )
    with torch.no_grad():
        for i, adapter in enumerate(adapters):
            adapter.scale = float(config["scale"])
            for key, param in adapter.state_dict().items():
                param.copy_(tensors[f"blocks.{i}.{key}"].to(param.device, param.dtype))
    return file_sha256(weights_path)
