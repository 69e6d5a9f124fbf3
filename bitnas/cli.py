"""`bitnas` command line: search | train | eval | study | summary | genotypes | recipes | plot | demo | export | infer."""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import typing
from typing import Callable

from bitnas.common.launch import report_line
from bitnas.common.signals import Interrupted
from bitnas.errors import BitnasError

_KV = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*=")

# Each module has `register(subparsers)` adding its commands with `set_defaults(func=...)`.
COMMAND_MODULES = [
    "bitnas.cli",
    "bitnas.search.cli",
    "bitnas.train.cli",
    "bitnas.deploy.cli",
    "bitnas.study.cli",
]


def _summary_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--genotype", help="registered name, genotype JSON file, or pasted Genotype(...) text")
    p.add_argument("--checkpoint", help="summarise the network stored in a bitnas checkpoint instead")
    p.add_argument("--network", help="summarise a hand-designed network instead (bireal, reactnet)")
    p.add_argument("--precision", default="binary", choices=("binary", "fp32"))
    p.add_argument("--structure", default="cpnas", help="module structure of binary ops (default cpnas)")
    p.add_argument("--init-channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=None, help="input side (default 32 cifar, 224 imagenet)")
    p.add_argument("--style", default="cifar", choices=("cifar", "imagenet"))
    p.add_argument("--binary-preprocess", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--json", action="store_true", help="print one JSON object (totals and per-layer rows)")
    p.add_argument("--no-layers", action="store_true", help="totals only")


def cmd_summary(args: argparse.Namespace) -> int:
    from bitnas.nets import build_network, network_from_spec
    from bitnas.nets.limits import check_build_kwargs, check_input_size
    from bitnas.nets.network import tensor_elements
    from bitnas.space.genotypes import load_genotype
    from bitnas.summary import format_table, summarize
    from bitnas.common.checkpoint import load_checkpoint

    if sum(a is not None for a in (args.genotype, args.checkpoint, args.network)) != 1:
        raise BitnasError("summary: give exactly one of --genotype, --checkpoint or --network")
    if args.image_size is not None and args.image_size < 1:
        raise BitnasError(f"--image-size: must be at least 1, got {args.image_size}")
    if args.checkpoint is not None:
        ck = load_checkpoint(args.checkpoint)
        if "arch" not in ck:
            raise BitnasError(f"{args.checkpoint}: no architecture stored in this checkpoint")
        # every parameter takes at least one bit of the file: an architecture it cannot hold is refused
        stored = tensor_elements(ck["model"]) if isinstance(ck.get("model"), dict) else tensor_bits(ck)
        model_spec = ck["arch"]
        net = model_spec.get("network") if isinstance(model_spec, dict) else None
        net = net if isinstance(net, dict) else {}
        style, c_in, layers = net.get("style", "cifar"), net.get("in_channels", 3), net.get("layers", 20)
        blocks = net.get("blocks", "")
        size = args.image_size or ck.get("image_size") or (224 if style == "imagenet" else 32)
        model = network_from_spec(model_spec, args.checkpoint, stored=stored)
        where = f"{args.checkpoint}"
    else:
        g = load_genotype(args.genotype) if args.genotype is not None else None
        style, c_in, layers = args.style, args.in_channels, args.layers
        blocks = args.network or ""
        size = args.image_size or (224 if style == "imagenet" else 32)
        kw = dict(style=style, precision=args.precision, structure=args.structure, init_channels=args.init_channels,
                  layers=args.layers, num_classes=args.num_classes, in_channels=c_in, auxiliary=g is not None,
                  binary_preprocess=args.binary_preprocess, blocks=blocks)
        check_build_kwargs(kw, "summary", multiplier=len(g.normal_concat) if g is not None else 4)
        model = build_network(g, **kw)
        where = "--image-size"
    check_input_size(style, layers, size, where, blocks=blocks)
    s = summarize(model, (c_in, size, size))
    if args.json:
        print(json.dumps(s.to_dict(per_layer=not args.no_layers)))
    else:
        print(format_table(s, per_layer=not args.no_layers))
    if s.params_1bit:
        from bitnas.deploy.engine import deployment_note

        note = deployment_note()
        if note:
            print(f"bitnas: {note}", file=sys.stderr)
    return 0


def tensor_bits(obj: object) -> int:
    """Bits of tensor data in a (nested) object: an upper bound on the parameters it can describe."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size() * 8
    if isinstance(obj, dict):
        return sum(tensor_bits(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bits(v) for v in obj)
    return 0


def cmd_genotypes(args: argparse.Namespace) -> int:
    from bitnas.space.genotypes import GENOTYPES

    if args.json:
        print(json.dumps({n: GENOTYPES.get(n).to_dict() for n in GENOTYPES}))
        return 0
    for n in GENOTYPES:
        print(f"{n}: {GENOTYPES.get(n)}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    import re
    import textwrap

    import yaml

    from bitnas.config import RECIPES_DIR, find_recipe

    if args.name:
        print(find_recipe(args.name).read_text(), end="")
        return 0
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        first = re.split(r": |(?<! al)\. ", str(data.get("description", "")).strip())[0]
        desc = textwrap.shorten(first, 90, placeholder=" …")
        print(f"{path.stem:<26} {data.get('command', ''):<7} {desc}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bitnas.plots import plot_run

    run = Path(args.run_dir)
    if not run.is_dir():
        raise BitnasError(f"{run}: not a run directory")
    made = plot_run(run)
    if not made:
        raise BitnasError(f"{run}: nothing to plot (no genotype.json or metrics.jsonl)")
    for p in made:
        print(p)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bitnas.config import config_from_args
    from bitnas.demo import DemoConfig, format_table, run_demo

    res = run_demo(config_from_args(DemoConfig, args))
    print(format_table(res))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="parameters/memory by precision, BOPs, FLOPs, OPs of a network",
                       description="Bit-aware summary of a genotype's fixed network or a checkpoint. "
                                   "Counting conventions: see README 'Counting conventions'.")
    _summary_args(p)
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("genotypes", help="list the registered (published) genotypes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_genotypes)
    p = sub.add_parser("recipes", help="list the shipped recipes (or print one)",
                       description="Recipes are YAML files of config keys; use them with --config NAME.")
    p.add_argument("name", nargs="?", help="print this recipe")
    p.set_defaults(func=cmd_recipes)
    from bitnas.config import add_config_args
    from bitnas.demo import DemoConfig

    p = sub.add_parser("demo", help="search → train → evaluate → table, on the embedded data",
                       description="The whole pipeline at a size that runs in minutes on a laptop CPU: a search "
                                   "(CP-NAS by default), training of the found 1-bit network (plain cross-entropy; "
                                   "method=cp trains its fp32 parent first and the child with the Child-Parent loss), "
                                   "evaluation on the test split, a summary table and pictures in the run directory.")
    add_config_args(p, DemoConfig)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("plot", help="redraw the pictures of a run directory into RUN_DIR/plots")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)


class UsageError(BitnasError):
    """A command line argparse refuses (unknown option, bad value, missing argument)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is a UsageError: `main` prints it as the one
    `bitnas: error: …` line of every other refusal, not argparse's usage block. Subcommand parsers
    are made of this class too (argparse builds them with the parent's class)."""

    def error(self, message: str) -> typing.NoReturn:
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        raise UsageError(f"{where}{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bitnas", description="Neural architecture search for binary (1-bit) networks.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--traceback", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse a command line; KEY=VALUE overrides may stand anywhere among the flags (argparse keeps
    only the first run of them: the rest are gathered here)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all(_KV.match(t) for t in extra):
        args.overrides = list(args.overrides or []) + extra
    elif extra:
        command = getattr(args, "command", None)
        raise UsageError(f"{command + ': ' if command else ''}unrecognized arguments: {' '.join(extra)[:200]} "
                         f"(see `bitnas{' ' + command if command else ''} --help`)")
    return args


def main(argv: list[str] | None = None) -> int:
    from bitnas.run import setup_logging

    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except UsageError as e:
        print(f"bitnas: error: {e}", file=sys.stderr)
        return 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `--nproc` hands to the ranks
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args) or 0)
    except Interrupted as e:
        report_line(f"bitnas: {e}")
        return e.exit_code
    except BitnasError as e:
        if args.traceback:
            raise
        report_line(f"bitnas: error: {e}")
        return 2
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("bitnas: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from bitnas.common.distributed import is_lost_rank, lost_rank_error

        if args.traceback or not is_lost_rank(e):
            raise
        report_line(f"bitnas: error: {lost_rank_error(e)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
