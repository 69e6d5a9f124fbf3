"""Evaluation: a network on a split (summed over ranks), and `bitnas eval` of a checkpoint or an export.

`bitnas eval` imports this module, the data and the networks, not the training loop.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.common.distributed import DistInfo, all_reduce_sum, broadcast_buffers, unwrap
from bitnas.data import BatchLoader, load_dataset
from bitnas.errors import BitnasError, ConfigError, DataError
from bitnas.nets import network_from_checkpoint
from bitnas.nets.limits import check_image_side
from bitnas.space.genotypes import Genotype, load_genotype
from bitnas.train.data import Loader, checkpoint_test_loader
from bitnas.common.checkpoint import load_checkpoint
from bitnas.common.distributed import resolve_device

def top_hits(logits: Tensor, y: Tensor, k: int = 5) -> Tensor:
    """Boolean (batch, k): whether the label is each sample's i-th highest logit, k capped at the
    number of classes (column 0: top-1 correct; any of the row: top-k correct)."""
    k = min(k, logits.shape[1])
    return logits.topk(k, dim=1).indices.eq(y[:, None])


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: Loader | None, info: DistInfo, device: torch.device,
                   prefix: str = "test") -> dict[str, float]:
    """`{prefix}_loss`, `{prefix}_top1`, `{prefix}_top5` (in %) and `{prefix}_images` over all ranks.

    `loader` is this rank's share (None when the rank has no samples of the split)."""
    model = unwrap(model)
    broadcast_buffers(model, info)  # each rank's share is judged with the statistics rank 0 saves
    was_training = model.training
    model.eval()
    # sums kept on the device (float64, the order of the host's sums) and read once at the end
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    if loader is not None:
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits, _ = model(x)
            hits = top_hits(logits, y)
            sums += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(), hits[:, 0].sum().double(),
                                 hits.any(dim=1).sum().double(), torch.tensor(float(y.shape[0]), dtype=torch.float64,
                                                                              device=device)])
    model.train(was_training)
    packed = all_reduce_sum(sums.cpu(), info)
    total = max(1.0, float(packed[3]))
    return {f"{prefix}_loss": float(packed[0]) / total, f"{prefix}_top1": 100.0 * float(packed[1]) / total,
            f"{prefix}_top5": 100.0 * float(packed[2]) / total, f"{prefix}_images": int(packed[3])}


def _evaluate_runtime_file(path: str, data: str, batch_size: int, engine: str, threads: int) -> dict[str, Any]:
    """`evaluate_checkpoint` for an `.onnx` / OpenVINO `.xml` export on ONNX Runtime or OpenVINO."""
    from bitnas.deploy.export import load_export
    from bitnas.deploy.runtimes import file_kind

    if file_kind(path) == "bitnas" or file_kind(path) is None:
        raise ConfigError(f"{path}: --engine {engine} runs `bitnas export --format onnx|openvino` files (.onnx, .xml)")
    model = load_export(path, engine if engine != "torch" else "auto", threads=threads)
    net = (model.meta.get("arch") or {}).get("network")
    net = net if isinstance(net, dict) else {}
    size = (model.meta.get("input") or {}).get("image_size") or 0
    kw = {"image_size": size} if size and data.split(":", 1)[0].strip() in ("imagefolder", "image-folder") else {}
    test = load_dataset(data, "test", **kw)
    c = test.input_shape[0]
    if net and (c != net.get("in_channels") or test.num_classes != net.get("num_classes")):
        raise DataError(f"{data}: {c} channel(s) and {test.num_classes} classes, but the network in {path} takes "
                        f"{net.get('in_channels')} channel(s) and has {net.get('num_classes')} classes")
    info = DistInfo(device=torch.device("cpu"))
    m = evaluate_model(model, BatchLoader(test, batch_size, shuffle=False, seed=0), info, info.device, "test")
    return {"top1": m["test_top1"], "top5": m["test_top5"], "loss": m["test_loss"], "num_images": m["test_images"],
            "checkpoint": str(path), "data": data, "dataset": test.name, "precision": net.get("precision"),
            "epoch": None, "engine": model.engine}


def evaluate_checkpoint(path: str, data: str, batch_size: int = 256, device: str = "auto",
                        genotype: str | None = None, precision: str | None = None, engine: str = "torch",
                        threads: int = 1) -> dict[str, Any]:
    """Rebuild the network stored in checkpoint `path` and evaluate it on the test split of `data`.

    `genotype` / `precision`, when given, must agree with the checkpoint (else ConfigError).
    `engine="bitpack"` runs an export's binary convs on the XNOR-popcount kernels (`threads`).
    Returns top1, top5 (in %), loss (mean cross-entropy), num_images, plus what was evaluated.
    """
    from bitnas.deploy.export import is_export_file, network_from_export, read_export
    from bitnas.deploy.runtimes import RUNTIMES, file_kind

    if engine in RUNTIMES or file_kind(path) in ("onnx", "openvino"):
        return _evaluate_runtime_file(path, data, batch_size, engine, threads)
    exported = is_export_file(path)
    if engine not in ("torch", "bitpack"):
        raise ConfigError(f"--engine '{engine}': expected torch, bitpack, onnxruntime or openvino")
    if engine == "bitpack" and not exported:
        raise ConfigError(f"{path}: --engine bitpack runs `bitnas export` files; export this checkpoint first")
    ck = read_export(path) if exported else load_checkpoint(path)
    spec = ck.get("arch") if isinstance(ck, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("network"), dict) or not (exported or "model" in ck):
        raise BitnasError(f"{path}: not a bitnas training checkpoint or export (no stored architecture/weights)")
    net = spec["network"]
    stored = Genotype.from_dict(spec["genotype"], f"{path} genotype") if spec.get("genotype") is not None else None
    if genotype is not None and load_genotype(genotype) != stored:
        raise ConfigError(f"{path}: this checkpoint was trained for another genotype than --genotype {genotype} "
                          f"(it holds {stored})")
    if precision is not None and precision != net.get("precision"):
        raise ConfigError(f"{path}: this checkpoint holds a {net.get('precision')} network, not --precision {precision}")
    size = (ck["input"].get("image_size") if exported else ck.get("image_size")) or 0
    if size:
        check_image_side(size, f"{path}: image_size")
    info = DistInfo(device=resolve_device(device))
    streamed = None if exported else checkpoint_test_loader(data, ck, batch_size, info.device)
    if streamed is not None:
        test = streamed.files
    else:
        kw = {"image_size": size} if size and data.split(":", 1)[0].strip() in ("imagefolder", "image-folder") else {}
        test = load_dataset(data, "test", **kw)
    c = test.input_shape[0]
    if c != net.get("in_channels") or test.num_classes != net.get("num_classes"):
        raise DataError(f"{data}: {c} channel(s) and {test.num_classes} classes, but the network in {path} takes "
                        f"{net.get('in_channels')} channel(s) and has {net.get('num_classes')} classes")
    if size and tuple(test.input_shape[1:]) != (size, size):
        h, w = test.input_shape[1:]
        raise DataError(f"{data}: {h}×{w} images, but the network in {path} was trained on {size}×{size} images; "
                        "evaluate it on data of that size (imagefolder data is resized to it)")
    if engine == "bitpack" and info.device.type != "cpu":
        raise ConfigError(f"--engine bitpack runs on the CPU, not --device {device}")
    model = (network_from_export(ck, str(path)) if exported else network_from_checkpoint(ck, str(path))).to(info.device)
    if engine == "bitpack":
        from bitnas.deploy.network import EngineNetwork

        model = EngineNetwork(model, ck, threads=threads)
    loader = streamed if streamed is not None else BatchLoader(test, batch_size, shuffle=False, seed=0)
    m = evaluate_model(model, loader, info, info.device, "test")
    return {"top1": m["test_top1"], "top5": m["test_top5"], "loss": m["test_loss"], "num_images": m["test_images"],
            "checkpoint": str(path), "data": data, "dataset": test.name, "precision": net.get("precision"),
            "epoch": ck.get("epoch"), "engine": engine}
