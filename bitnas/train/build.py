"""What a run builds from its config: the network's build arguments, the optimizer (no weight decay
on 1-bit latent weights by default), and the check that a checkpoint can be resumed."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bitnas.config import check_resume_config
from bitnas.data import ImageDataset
from bitnas.errors import BitnasError, ConfigError
from bitnas.train.config import TrainConfig
from bitnas.train.data import TrainData

CHECKPOINT_FORMAT = "bitnas-train/1"


def build_kwargs(cfg: TrainConfig, data: TrainData | ImageDataset, precision: str) -> dict[str, Any]:
    """build_network kwargs of the run (stored in checkpoints through `arch_spec`); `data`: the
    run's splits, or just its training images."""
    kw: dict[str, Any] = dict(
        style=cfg.style, precision=precision, structure=cfg.structure or "cpnas",
        init_channels=cfg.init_channels, layers=cfg.layers, num_classes=data.num_classes,
        in_channels=data.input_shape[0], auxiliary=cfg.auxiliary, weight_quantizer=cfg.weight_quantizer,
        weight_scale=cfg.weight_scale, pad_value=cfg.pad_value, binary_preprocess=cfg.binary_preprocess,
    )
    if cfg.activation:
        kw["activation"] = cfg.activation
    if cfg.network:
        kw["blocks"] = cfg.network
    return kw


def make_optimizer(cfg: TrainConfig, model: nn.Module, binary_layers: list[tuple[str, nn.Module]]) -> torch.optim.Optimizer:
    """SGD or Adam over the trainable parameters; the latent weights of `binary_layers` get
    `binary_weight_decay`, everything else `weight_decay`. `foreach`: one multi-tensor kernel
    per update term instead of a Python loop over ~100 tensors, on CPU too (bitwise the same
    result; the Adam step of the C=8 DARTS_V2 network took 9 ms instead of 19 ms)."""
    latent = {id(m.weight) for _, m in binary_layers}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in latent], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if id(p) in latent], "weight_decay": cfg.binary_weight_decay},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    return torch.optim.Adam(groups, lr=cfg.lr, foreach=True)


def check_resumable(state: dict[str, Any], cfg: TrainConfig, arch: dict[str, Any], source: str) -> None:
    """A training checkpoint made by this run: the format, the network and every result-shaping key match."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise BitnasError(f"{source}: not a bitnas training checkpoint (format {state.get('format')!r})")
    if state.get("arch") != arch:
        raise ConfigError(f"{source}: made for another network (genotype/precision/size/data differ); "
                          "resume needs the same settings, or use another --out")
    check_resume_config(state.get("config") or {}, cfg, source)
