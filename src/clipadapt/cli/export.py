"""`clipadapt export`: a head plus its model's image tower as one ONNX file or torch.export program."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipadapt.argtypes import COUNT
from clipadapt.cli._outputs import FILE, output_option
from clipadapt.constants import HEAD_EXPORT_FORMATS

COMMAND = "export"
HELP = "export a head with its image encoder (preprocessed images -> logits) as ONNX or a torch.export program"
EXAMPLES = """
clipadapt export --head pets-tip.safetensors --format onnx --out pets-tip.onnx   # pip install 'clipadapt[onnx]'
clipadapt export --head pets-tip.safetensors --format torch-export --out pets-tip.pt2
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--head", type=Path, required=True, help="a head file written by `clipadapt fit`")
    parser.add_argument("--format", required=True, choices=HEAD_EXPORT_FORMATS,
                        help="onnx (input 'pixels' (B, 3, H, W), output 'logits' (B, C)) or torch-export (.pt2)")
    output_option(parser.add_argument("--out", type=Path, required=True, metavar="FILE",
                                      help="the file to write"), FILE)
    parser.add_argument("--device", default="cpu", help="device the model is traced on (default cpu)")
    parser.add_argument("--static-batch", type=COUNT, default=None, metavar="B",
                        help="export for a fixed batch size B instead of a dynamic batch dimension")


def run(args: argparse.Namespace) -> int:
    import torch

    from clipadapt.fileio import atomic_path
    from clipadapt.heads.io import load_head
    from clipadapt.heads.module import export_onnx, export_program

    head = load_head(args.head)
    encoder = head.encoder(device=args.device, precision="fp32")
    module = head.as_module(encoder)
    h, w = encoder.preprocess_cfg["size"]
    example = torch.zeros(args.static_batch or 2, 3, h, w, device=encoder.device)
    export = export_onnx if args.format == "onnx" else export_program
    with atomic_path(args.out) as tmp:
        export(module, example, str(tmp), dynamic_batch=args.static_batch is None)
    mean, std = encoder.preprocess_cfg["mean"], encoder.preprocess_cfg["std"]
    print(f"{head.method} head on {head.model_id}: input 'pixels' (B, 3, {h}, {w}) preprocessed as the model's eval "
          f"transform (resize {encoder.preprocess_cfg['resize_mode']}, {encoder.preprocess_cfg['interpolation']}, "
          f"mean {mean}, std {std}); output 'logits' (B, {head.num_classes}) over the head's classes")
    if head.method in ("tipx", "tipx++"):
        print("note: Tip-X's psi range is taken over the batch: score a whole set in one call")
    print(f"wrote {args.out}")
    return 0
