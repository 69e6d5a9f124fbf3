"""`bitnas export`: bit-pack a trained network for deployment."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bitnas.errors import BitnasError


def cmd_export(args: argparse.Namespace) -> int:
    from bitnas.deploy.export import export_checkpoint

    if not Path(args.checkpoint).is_file():
        raise BitnasError(f"{args.checkpoint}: checkpoint not found")
    out = args.out or str(Path(args.checkpoint).with_suffix(".bitnas"))
    r = export_checkpoint(args.checkpoint, out)
    if args.json:
        print(json.dumps(r))
    else:
        ratio = r["fp32_model_bytes"] / max(r["packed_bytes"] + r["fp32_bytes"], 1)
        print(f"wrote {r['out']}: {r['binary_layers']} binarised convs, {r['binary_weights']:,} 1-bit weights in "
              f"{r['packed_bytes']:,} bytes (bits + α), {r['fp32_bytes']:,} bytes of fp32 tensors; "
              f"{ratio:.1f}x smaller than the same network in fp32 (file {r['file_bytes']:,} bytes)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="bit-pack a trained network (1-bit kernels 8 per byte) for inference",
                       description="Write the network of a training checkpoint with its binarised kernels packed 8 "
                                   "signs per byte plus per-channel α, everything else fp32, no auxiliary head or "
                                   "optimiser state. `bitnas eval FILE` and bitnas.deploy.load_export read it.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a bitnas training checkpoint (last.pt, best.pt)")
    p.add_argument("--out", default=None, help="output file (default: CHECKPOINT with suffix .bitnas)")
    p.add_argument("--json", action="store_true", help="print the sizes as one JSON object")
    p.set_defaults(func=cmd_export)
