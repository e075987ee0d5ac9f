"""`HeadModule`: image tower + fitted head as one `torch.nn.Module` (preprocessed batch -> logits), for export.

The head's fitted tensors become buffers; `forward` hands them to a shallow copy of the estimator and calls its
own `predict_logits`, so the exported graph computes the same formula as `head.predict_logits` (no second
implementation). Tip-X's ψ range is taken over the batch, as in `predict_logits`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from clipadapt.heads.head import estimator_state


class HeadModule(nn.Module):
    """`model.encode_image` (and, for TA++/TX++, `adapted_model.encode_image`) followed by the estimator."""

    def __init__(self, model: nn.Module, estimator: Any, *, adapted_model: nn.Module | None = None):
        super().__init__()
        self.model, self.adapted_model = model, adapted_model
        self._estimator = estimator
        tensors, _ = estimator_state(estimator)
        self._state_names = sorted(tensors)
        for name in self._state_names:
            self.register_buffer(f"head_{name.rstrip('_')}", tensors[name].detach().clone().float())

    def _fitted(self) -> Any:
        est = copy.copy(self._estimator)
        for name in self._state_names:
            setattr(est, name, getattr(self, f"head_{name.rstrip('_')}"))
        return est

    def forward(self, pixels: Tensor) -> Tensor:
        features = self.model.encode_image(pixels).float()
        est = self._fitted()
        if self.adapted_model is not None:
            return est.predict_logits(features, self.adapted_model.encode_image(pixels).float())
        return est.predict_logits(features)


def export_onnx(module: nn.Module, example: Tensor, path: str, *, dynamic_batch: bool = True) -> None:
    """ONNX file of `module` (input 'pixels' (B, 3, H, W), output 'logits' (B, C)); needs the `onnx` extra."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        from clipadapt.errors import ConfigError

        raise ConfigError(f"ONNX export needs the onnx extra: pip install 'clipadapt[onnx]' ({e})") from e
    dynamic = {"pixels": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(module, (example,), path, input_names=["pixels"], output_names=["logits"],
                          dynamic_shapes=dynamic, dynamo=True, verbose=False)


def export_program(module: nn.Module, example: Tensor, path: str, *, dynamic_batch: bool = True) -> None:
    """A `torch.export` program (.pt2, loaded with `torch.export.load`) of `module`."""
    dynamic = {"pixels": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    torch.export.save(program, path)
