"""`bitnas train` and `bitnas eval`."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bitnas.common.launch import add_nproc_arg, maybe_launch
from bitnas.config import add_config_args, config_from_args, positive_int
from bitnas.errors import BitnasError
from bitnas.train.config import TrainConfig
from bitnas.common.files import to_json


def cmd_train(args: argparse.Namespace) -> int:
    from bitnas.train.job import train

    cfg = config_from_args(TrainConfig, args)
    launched = maybe_launch(args)
    if launched is not None:
        return launched
    result = train(cfg)
    line = f"train: done in {result['seconds']:.0f}s → {result['out']}"
    if result.get("parent_test_top1") is not None:
        line += f" | parent test top1 {result['parent_test_top1']:.2f}%"
    if result.get("val_top1") is not None:
        line += f" | val top1 {result['val_top1']:.2f}% (epoch {result['selected_epoch']} selected)"
    line += f" | test top1 {result['test_top1']:.2f}% top5 {result['test_top5']:.2f}%"
    logging.getLogger("bitnas").info(line)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if not Path(args.checkpoint).is_file():
        raise BitnasError(f"{args.checkpoint}: checkpoint not found")
    from bitnas.train.evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size, device=args.device,
                            genotype=args.genotype, precision=args.precision, engine=args.engine,
                            threads=args.threads)
    if args.json:
        print(to_json(r))
    else:
        print(f"{r['checkpoint']} on {r['data']} test ({r['num_images']} images): "
              f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a genotype's network from scratch (1-bit child, fp32 parent, CP / KD / two-stage)",
        description="Train the fixed network of a genotype. Settings: a recipe (--config), the flags below, then "
                    "KEY=VALUE for any other key (e.g. method=cp kd_weight=1 two_stage=true). Writes config.yaml, "
                    "metrics.jsonl, last.pt and best.pt to --out. Multi-process: --nproc N (or torchrun "
                    "--nproc_per_node=N -m bitnas train ...)")
    add_config_args(p, TrainConfig)
    add_nproc_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a training checkpoint on a dataset's test split",
                       description="Rebuild the network stored in CHECKPOINT and report test top-1, top-5 and loss.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a bitnas training checkpoint (last.pt, best.pt, parent.pt) or a `bitnas export` file "
                        "(.bitnas, .onnx, OpenVINO .xml)")
    p.add_argument("--data", required=True, help="dataset NAME[:PATH] whose test split is evaluated")
    p.add_argument("--json", action="store_true", help="print one JSON object (top1, top5, loss, num_images, ...)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--genotype", default=None, help="refuse the checkpoint unless it was trained for this genotype")
    p.add_argument("--precision", default=None, choices=("binary", "fp32"),
                   help="refuse the checkpoint unless it holds a network of this precision")
    p.add_argument("--engine", default="torch", choices=("torch", "bitpack", "onnxruntime", "openvino"),
                   help="bitpack: run an export's binary convs on the XNOR-popcount kernels (CPU); onnxruntime / "
                        "openvino: run an .onnx / OpenVINO .xml export (`bitnas export --format onnx|openvino`)")
    p.add_argument("--threads", type=positive_int, default=1, help="threads of the bitpack engine or runtime")
    p.set_defaults(func=cmd_eval)
