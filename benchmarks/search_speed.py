"""Search speed and memory of the bitnas strategies, optionally beside the public PC-DARTS code.

One iteration = one α step on a validation batch + one weight step on a training batch (random
search: one single-path weight step). Images/second counts every image through the supernet
(training + validation batch) per second, the median over the timed iterations after warm-up.
All contenders of a configuration run interleaved, iteration by iteration, in this one process,
so machine load affects them equally. Peak memory is measured per contender in a fresh
subprocess: the growth of the high-water RSS over 3 iterations on CPU (Linux VmHWM), or
`torch.cuda.max_memory_allocated` on CUDA.

The public PC-DARTS implementation (Xu et al.) is loaded at run time from the git directory of a
clone given as `--reference-git DIR` or $BITNAS_PCDARTS_GIT (model_search.py, operations.py,
genotypes.py, architect.py exported to a temp directory, with `.cuda()` shimmed to a no-op); it is
never copied into this repository. Without the clone that part is skipped with a message.

    .venv/bin/python benchmarks/search_speed.py                      # everything, full size
    .venv/bin/python benchmarks/search_speed.py --configs cifar --strategies pcdarts \\
        --reference --reference-git PC-DARTS/.git --iters 5 --warmup 2 --threads 1   # quick side-by-side
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REFERENCE_GIT_ENV = "BITNAS_PCDARTS_GIT"
REFERENCE_FILES = ("model_search.py", "operations.py", "genotypes.py", "architect.py")

CONFIGS = {
    "cifar": dict(init_channels=16, layers=8, batch=64, size=32, in_channels=3, classes=10),
    "small": dict(init_channels=8, layers=5, batch=32, size=16, in_channels=3, classes=10),
}


def scratch_dir(prefix: str) -> str:
    """A temp directory removed when the benchmark exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@dataclass
class Contender:
    """A named search iteration: `step()` does one iteration and returns the images it processed."""

    name: str
    step: Callable[[], int]


def random_batch(cfg: dict, gen: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(cfg["batch"], cfg["in_channels"], cfg["size"], cfg["size"], generator=gen).to(device)
    y = torch.randint(cfg["classes"], (cfg["batch"],), generator=gen).to(device)
    return x, y


def build_ours(strategy: str, cfg: dict, device: torch.device, precision: str, channels_last: str) -> Contender:
    """A bitnas strategy on random data, stepped through its own architect / weight step."""
    from bitnas.data import ImageDataset
    from bitnas.run import RunDir
    from bitnas.search import darts, pcdarts, random_search, ubnas  # noqa: F401 - registers strategies
    from bitnas.search.config import SearchConfig
    from bitnas.search.steps import weight_step
    from bitnas.search.supernet import genotype_paths
    from bitnas.search.strategy import STRATEGIES, SearchContext

    n = 2 * cfg["batch"]
    c = cfg["in_channels"]
    ds = ImageDataset(images=torch.randint(0, 256, (n, c, cfg["size"], cfg["size"]), dtype=torch.uint8),
                      labels=torch.arange(n) % cfg["classes"], num_classes=cfg["classes"], mean=(0.5,) * c,
                      std=(0.25,) * c, name="random", source="random")
    scfg = SearchConfig(strategy=strategy, init_channels=cfg["init_channels"], layers=cfg["layers"],
                        batch_size=cfg["batch"], precision=precision, device=str(device), epochs=50,
                        warmup_epochs=0, channels_last=channels_last, progress="off")
    tmp = scratch_dir("bitnas-bench-")
    ctx = SearchContext(cfg=scfg, device=device, train_set=ds, val_set=ds, run=RunDir(tmp, writer=False))
    strat = STRATEGIES.get(strategy)(ctx)
    strat.model.train()
    gen = torch.Generator().manual_seed(0)
    if strategy == "random":
        def step() -> int:
            x, y = random_batch(cfg, gen, device)
            paths = genotype_paths(strat.draw(strat.path_gen), strat.ops)
            weight_step(ctx, strat.model, strat.w_optimizer, strat.w_params, x, y, scfg.grad_clip, paths)
            return x.shape[0]
    else:
        def step() -> int:
            x, y = random_batch(cfg, gen, device)
            xv, yv = random_batch(cfg, gen, device)
            strat.architect.step((x, y), (xv, yv), scfg.w_lr, strat.w_optimizer, False)
            weight_step(ctx, strat.model, strat.w_optimizer, strat.w_params, x, y, scfg.grad_clip)
            return 2 * x.shape[0]
    return Contender(f"bitnas {strategy} ({precision})", step)


def load_reference(git_dir: str) -> Path | None:
    """Export the PC-DARTS search files from the bare snapshot into a temp dir (None if absent)."""
    if not Path(git_dir).exists():
        return None
    out = Path(scratch_dir("pcdarts-ref-"))
    for f in REFERENCE_FILES:
        text = subprocess.run(["git", "--git-dir", git_dir, "show", f"HEAD:{f}"], check=True, capture_output=True,
                              text=True).stdout
        (out / f).write_text(text)
    return out


def build_reference(ref_dir: Path, cfg: dict, device: torch.device) -> Contender:
    """Their Network + Architect, stepped exactly as the body of their train_search.py loop."""
    if device.type == "cpu":
        torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
        nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    if str(ref_dir) not in sys.path:
        sys.path.insert(0, str(ref_dir))
    model_search = importlib.import_module("model_search")
    architect_mod = importlib.import_module("architect")
    if cfg["in_channels"] != 3:
        raise ValueError("the reference network has a fixed 3-channel stem")
    criterion = nn.CrossEntropyLoss()
    model = model_search.Network(cfg["init_channels"], cfg["classes"], cfg["layers"], criterion).to(device)
    args = argparse.Namespace(momentum=0.9, weight_decay=3e-4, arch_learning_rate=6e-4, arch_weight_decay=1e-3)
    architect = architect_mod.Architect(model, args)
    optimizer = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    gen = torch.Generator().manual_seed(0)

    def step() -> int:
        model.train()
        x, y = random_batch(cfg, gen, device)
        xv, yv = random_batch(cfg, gen, device)
        architect.step(x, y, xv, yv, 0.025, optimizer, unrolled=False)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        return 2 * x.shape[0]

    return Contender("public PC-DARTS (fp32)", step)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(contenders: list[Contender], iters: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median images/second of each contender, run round-robin iteration by iteration."""
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    images: dict[str, int] = {}
    for it in range(warmup + iters):
        for c in contenders:
            sync(device)
            t0 = time.perf_counter()
            n = c.step()
            sync(device)
            if it >= warmup:
                times[c.name].append(time.perf_counter() - t0)
                images[c.name] = n
    return {name: images[name] / statistics.median(ts) for name, ts in times.items()}


def peak_memory(spec: dict) -> float:
    """MiB of peak memory growth of one contender, measured in a fresh subprocess."""
    out = subprocess.run([sys.executable, __file__, "--memory-probe", json.dumps(spec)], capture_output=True,
                         text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "memory probe failed")
    return float(out.stdout.strip().splitlines()[-1])


def _status_kib(field: str) -> int | None:
    """A /proc/self/status field in KiB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_probe(spec: dict) -> None:
    """Subprocess body: build one contender, run warm-up + 2 iterations, print peak MiB growth.

    CPU: the high-water RSS (VmHWM, reset through /proc/self/clear_refs) minus the RSS before the
    iterations. `ru_maxrss` is not used: Linux carries the parent's RSS at fork into the child's.
    """
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cfg = CONFIGS[spec["config"]]
    if spec["kind"] == "reference":
        c = build_reference(Path(spec["ref_dir"]), cfg, device)
    else:
        c = build_ours(spec["strategy"], cfg, device, spec["precision"], spec["channels_last"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        c.step()
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated() / 2**20)
    elif hwm_reset and before is not None:
        print((_status_kib("VmHWM") - before) / 1024)
    else:
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", default="darts,pcdarts,ubnas,random", help="comma-separated bitnas strategies")
    p.add_argument("--configs", default="cifar,small", help=f"comma-separated: {', '.join(CONFIGS)}")
    p.add_argument("--precision", default="default",
                   help="supernet precision of our strategies: default (binary), binary or fp32")
    p.add_argument("--reference", action="store_true", help="also time the public PC-DARTS code (fp32) beside "
                   "our pcdarts in fp32")
    p.add_argument("--reference-git", default=os.environ.get(REFERENCE_GIT_ENV, ""),
                   help=f"git dir (e.g. a bare clone) of yuhuixu1993/PC-DARTS (default: ${REFERENCE_GIT_ENV})")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--no-memory", action="store_true", help="skip the per-contender memory subprocesses")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_probe:
        memory_probe(json.loads(a.memory_probe))
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    device = torch.device(a.device)
    precision = "binary" if a.precision == "default" else a.precision
    ref_dir = load_reference(a.reference_git) if a.reference and a.reference_git else None
    if a.reference and ref_dir is None:
        print(f"reference: {a.reference_git or f'no --reference-git or ${REFERENCE_GIT_ENV}'} not found; skipping the "
              "public PC-DARTS timing")
    print(f"torch {torch.__version__}, {threads} thread(s), device {device}, {a.iters} timed iterations after "
          f"{a.warmup} warm-up, channels_last={a.channels_last}")
    for name in a.configs.split(","):
        cfg = CONFIGS[name]
        torch.manual_seed(0)
        specs: list[dict] = []
        contenders: list[Contender] = []
        for s in a.strategies.split(","):
            contenders.append(build_ours(s, cfg, device, precision, a.channels_last))
            specs.append(dict(kind="ours", strategy=s, precision=precision))
        if ref_dir is not None:
            if precision != "fp32" and "pcdarts" in a.strategies.split(","):
                contenders.append(build_ours("pcdarts", cfg, device, "fp32", a.channels_last))
                specs.append(dict(kind="ours", strategy="pcdarts", precision="fp32"))
            contenders.append(build_reference(ref_dir, cfg, device))
            specs.append(dict(kind="reference", ref_dir=str(ref_dir)))
        print(f"\n[{name}] C={cfg['init_channels']}, {cfg['layers']} cells, batch {cfg['batch']}, "
              f"{cfg['in_channels']}x{cfg['size']}x{cfg['size']}, {cfg['classes']} classes")
        rates = time_interleaved(contenders, a.iters, a.warmup, device)
        for c, spec in zip(contenders, specs):
            mem = ""
            if not a.no_memory:
                spec.update(config=name, threads=threads, device=str(device), channels_last=a.channels_last)
                try:
                    mem = f"{peak_memory(spec):9.1f} MiB peak"
                except RuntimeError as e:
                    mem = f"memory probe failed: {e}"
            print(f"  {c.name:34s} {rates[c.name]:9.1f} img/s  {mem}")
        ours = [n for n in rates if n.startswith("bitnas pcdarts (fp32)")]
        theirs = [n for n in rates if n.startswith("public PC-DARTS")]
        if ours and theirs:
            print(f"  ratio bitnas pcdarts / public PC-DARTS (fp32, same configuration): "
                  f"{rates[ours[0]] / rates[theirs[0]]:.2f}x")


if __name__ == "__main__":
    main()
