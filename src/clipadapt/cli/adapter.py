"""`clipadapt adapter train|info`: train IMO adapters on a generic labelled image set; inspect a checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clipadapt.argtypes import COUNT, DROPOUT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, SEED
from clipadapt.cli._common import from_args
from clipadapt.cli._conventions import add_parser, run_provenance
from clipadapt.cli._outputs import RESUME, output_option

STATE_FILE = "train_state.pt"  # adapters.training.STATE_FILE (torch-free here: the parser imports this)
COMMAND = "adapter"
HELP = "train IMO adapters (supervised or DINO self-supervised) or show an adapter checkpoint"
EXAMPLES = """
clipadapt adapter train --model ViT-B-16@openai --data imagefolder:/data/openimages --out adapters/vitb16
clipadapt adapter info adapters/vitb16
"""
TRAIN_EXAMPLES = """
clipadapt adapter train --model ViT-B-16@openai --data imagefolder:/data/openimages --out adapters/vitb16
clipadapt adapter train --model ViT-B-16@openai --data imagefolder:/data/openimages --mode selfsup \\
    --batch-size 64 --out adapters/vitb16-dino
"""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)
    train = add_parser(sub, "train", help="train adapters; resumes when --out holds an unfinished run",
                       description="Train IMO bottleneck adapters in a frozen open_clip ViT (docs/methods.md §5).",
                       examples=TRAIN_EXAMPLES)
    train.add_argument("--model", required=True, help="model id, e.g. ViT-B-16@openai (ViT visual towers only)")
    train.add_argument("--data", required=True, help="generic labelled image set spec, e.g. imagefolder:/data/oi")
    train.add_argument("--split", default="train", help="split of --data to train on (default: train)")
    train.add_argument("--mode", choices=["supervised", "selfsup"], default="supervised")
    output_option(train.add_argument("--out", type=Path, required=True,
                                     help="checkpoint directory (adapter.safetensors, adapter.json, train_state.pt "
                                          "for resuming, train_log.json); an existing one is resumed, so a non-empty "
                                          "directory must hold train_state.pt"), RESUME, marker=STATE_FILE)
    g = train.add_argument_group("hyper-parameters (defaults: docs/methods.md §5)")
    g.add_argument("--width", type=COUNT, default=64, help="bottleneck width (default: 64)")
    g.add_argument("--scale", type=NON_NEGATIVE, default=None,
                   help="residual scale s (default: 0.03 supervised, 0.1 selfsup)")
    g.add_argument("--dropout", type=DROPOUT, default=0.1)
    g.add_argument("--lr", type=POSITIVE, default=None,
                   help="AdamW lr (default: 8e-3 supervised; 5e-4*batch/256 selfsup)")
    g.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.01)
    g.add_argument("--batch-size", type=COUNT, default=128)
    g.add_argument("--epochs", type=COUNT, default=None, help="default: 1 supervised, 10 selfsup")
    g.add_argument("--max-steps", type=COUNT, default=None, help="stop after this many steps in total")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--local-crops", type=NON_NEGATIVE_INT, default=10,
                   help="selfsup: local crops per image (default: 10)")
    g.add_argument("--dino-out-dim", type=COUNT, default=65536, help="selfsup: DINO head output dimension")
    r = train.add_argument_group("running")
    r.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    r.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto = bf16 autocast on cuda, fp32 on cpu")
    r.add_argument("--num-workers", type=NON_NEGATIVE_INT, default=0, help="DataLoader workers")
    r.add_argument("--save-every", type=COUNT, default=200, help="write a resumable checkpoint every k steps")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    info = add_parser(sub, "info", help="print an adapter checkpoint's config and weights sha256",
                      examples="clipadapt adapter info adapters/vitb16")
    info.add_argument("checkpoint", type=Path, help="checkpoint directory or adapter .safetensors file")


def run(args: argparse.Namespace) -> int:
    return _train(args) if args.adapter_command == "train" else _info(args)


def _info(args: argparse.Namespace) -> int:
    from clipadapt.adapters.imo_adapter import checkpoint_paths, load_adapter_checkpoint
    from clipadapt.fileio import file_sha256

    tensors, config = load_adapter_checkpoint(args.checkpoint)
    weights, _ = checkpoint_paths(args.checkpoint)
    config["weights_sha256"] = file_sha256(weights)
    config["parameters"] = sum(t.numel() for t in tensors.values())
    print(json.dumps(config, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from clipadapt.adapters.training import AdapterTrainConfig, train_adapters
    from clipadapt.data import build_dataset
    from clipadapt.encoders import load_encoder

    config = from_args(AdapterTrainConfig, args).resolved()  # the hyper-parameter group, --seed, --save-every, ...
    dataset = build_dataset(args.data, args.split)
    encoder = load_encoder(args.model, device=args.device, precision="fp32")  # weights stay fp32; autocast below
    use_bf16 = args.precision == "bf16" or (args.precision == "auto" and encoder.device.type == "cuda")
    print(f"training {args.mode} IMO adapters in {encoder.model_id} on {args.data} ({args.split}, "
          f"{len(dataset)} images, {len(dataset.classnames)} classes) on {encoder.device}")
    fingerprint = dataset.fingerprint()
    result = train_adapters(
        encoder.model, dataset, args.out, config=config, num_classes=len(dataset.classnames),
        preprocess=encoder.preprocess, model_name=encoder.model_id,
        extra_config={"arch": encoder.model_id, "data": args.data, "split": args.split,
                      "dataset_fingerprint": fingerprint, "precision": "bf16" if use_bf16 else "fp32",
                      "provenance": run_provenance(args, model=encoder.model_id, data=f"{args.data} ({args.split})",
                                                   fingerprint=f"dataset-sha256:{fingerprint}")},
        progress=not args.no_progress, autocast_dtype=torch.bfloat16 if use_bf16 else None,
    )
    if result.start_step >= result.total_steps:
        print(f"already complete: {result.step} steps in {args.out}")
    elif result.start_step:
        print(f"resumed at step {result.start_step}")
    tail = result.losses[-20:]
    if tail:
        print(f"step {result.step}/{result.total_steps}: mean loss of the last {len(tail)} steps "
              f"{sum(tail) / len(tail):.4f}")
    print(f"wrote {result.checkpoint} (+ adapter.json)")
    return 0
