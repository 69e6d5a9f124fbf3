"""Search strategies: a base class, a registry, and the shared context they run in.

A strategy advances in *units* (an epoch, a CP-NAS sample, …): `run_unit()` does one and
returns its metrics record; the runner checkpoints after every unit, so a killed search
resumes exactly (all strategy state is in `state_dict()`, RNG states in the checkpoint).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bitnas.common.distributed import DistInfo, broadcast_buffers
from bitnas.common.layout import CHANNELS_LAST_CHOICES
from bitnas.common.signals import StopRequest
from bitnas.common.steps import Steps
from bitnas.data import BatchLoader, ImageDataset
from bitnas.errors import ConfigError
from bitnas.registry import Registry
from bitnas.run import RunDir
from bitnas.search.config import SearchConfig
from bitnas.search.supernet import SuperNetwork
from bitnas.space.config import OpConfig
from bitnas.space.genotypes import Genotype
from bitnas.space.spaces import SearchSpace, get_space

STRATEGIES: Registry[type["SearchStrategy"]] = Registry("search strategy")


@dataclass
class SearchContext:
    """What every strategy gets: config, device, process group, data splits, run directory."""

    cfg: SearchConfig
    device: torch.device
    train_set: ImageDataset
    val_set: ImageDataset
    run: RunDir
    rank: int = 0
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    stop: StopRequest = field(default_factory=StopRequest)

    @property
    def info(self) -> DistInfo:
        """This process's place in the process group."""
        return DistInfo(self.rank, self.world_size, device=self.device)

    @property
    def in_channels(self) -> int:
        return int(self.train_set.images.shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.train_set.num_classes)

    @property
    def image_size(self) -> int:
        return int(self.train_set.images.shape[-1])

    def loader(self, which: str, shuffle: bool = True, seed_offset: int = 0, batch_size: int | None = None) -> BatchLoader:
        """Sharded in-memory loader over the train or val split (no augmentation while searching)."""
        ds = self.train_set if which == "train" else self.val_set
        return BatchLoader(ds, batch_size or self.cfg.batch_size, shuffle=shuffle, seed=self.cfg.seed + seed_offset,
                           augment=None, drop_last=False, rank=self.rank, world_size=self.world_size)

    def sync_grads(self, params: list[Tensor]) -> None:
        """Average gradients over ranks so every rank applies the identical update.

        Parameters without a gradient are left alone; every rank must have gradients for the
        same parameters (true when all ranks run the same path).
        """
        self.average([p.grad for p in params if p.grad is not None])

    def average(self, tensors: list[Tensor]) -> None:
        """Average tensors in place over ranks, in one all-reduce per dtype (bitwise equal on all ranks)."""
        if self.world_size <= 1 or not tensors:
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(self.world_size)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
        broadcast_buffers(module, self.info)

    def reduce_sums(self, values: list[float]) -> list[float]:
        """Sum scalars over ranks (metric totals)."""
        if self.world_size <= 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()


# Keys every strategy reads (data, split, supernet size and ops, execution).
COMMON_KEYS = frozenset({
    "strategy", "space", "data", "train_subset", "batch_size", "seed", "device", "out", "init_channels", "layers",
    "structure", "activation", "weight_quantizer", "weight_scale", "pad_value", "binary_preprocess", "num_workers",
    "progress", "val_fraction", "channels_last", "threads", "force",
})
WEIGHT_KEYS = frozenset({"w_optimizer", "w_lr", "w_lr_min", "w_momentum", "w_weight_decay", "grad_clip", "amp"})


def keys_read(strategy: type["SearchStrategy"]) -> frozenset[str]:
    """Every config key `strategy` reads."""
    return COMMON_KEYS | strategy.reads


def unread_keys(cfg: SearchConfig, strategy: type["SearchStrategy"]) -> list[str]:
    """Keys set to a non-default value that `strategy` never reads (they would be silently ignored)."""
    default = SearchConfig()
    readable = keys_read(strategy)
    return [k for k in vars(default) if k not in readable and getattr(cfg, k) != getattr(default, k)]


def check_strategy_keys(cfg: SearchConfig, strategy: type["SearchStrategy"]) -> None:
    """Refuse keys the strategy ignores, listing those it reads."""
    unread = unread_keys(cfg, strategy)
    if unread:
        own = sorted(strategy.reads)
        raise ConfigError(f"strategy {strategy.name} does not read {', '.join(unread)}; its own keys are "
                          f"{', '.join(own)} (besides the data, network and run keys every strategy reads)")


class UnitInterrupted(Exception):
    """Raised by `run_unit` at a safe point inside a unit when a stop was requested: the strategy's
    `state_dict()` then holds the partial unit, which `run_unit` continues after a resume."""


def make_op_config(cfg: SearchConfig, space: SearchSpace, precision: str) -> OpConfig:
    """The space's defaults (structure, activation) overridden by explicit config values."""
    return OpConfig(
        precision=precision, structure=cfg.structure or space.structure, activation=cfg.activation or space.activation,
        weight_quantizer=cfg.weight_quantizer, weight_scale=cfg.weight_scale, pad_value=cfg.pad_value, affine=False,
        binary_preprocess=cfg.binary_preprocess,
    )


class SearchStrategy:
    """Base class. Subclasses set `name`, `default_space`, `reads` (the config keys they use beyond
    `COMMON_KEYS`) and implement the abstract methods."""

    name = "strategy"
    default_space = "darts"
    reads: frozenset[str] = frozenset()

    def __init__(self, ctx: SearchContext) -> None:
        self.check_config(ctx.cfg)
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.steps = Steps("search.step", ctx.info, ctx.cfg.progress, ctx.stop)
        self.stop_reason = ""

    @classmethod
    def resolve_space(cls, name: str = "") -> SearchSpace:
        """The space a search with `space=name` uses: that one, or the strategy's default when empty."""
        return get_space(name or cls.default_space)

    @classmethod
    def check_config(cls, cfg: SearchConfig) -> None:
        """Refuse settings this strategy cannot run (unknown space, structure, quantizer, …) before any
        data is loaded or file written. Subclasses extend it with their own keys."""
        space = cls.resolve_space(cfg.space)
        for precision in cls.precisions(cfg):
            make_op_config(cfg, space, precision)

    @classmethod
    def precisions(cls, cfg: SearchConfig) -> tuple[str, ...]:
        """The precisions of the supernets the strategy builds."""
        return (cfg.precision,)

    @property
    def space(self) -> SearchSpace:
        return self.resolve_space(self.cfg.space)

    def op_config(self, precision: str) -> OpConfig:
        """The space's defaults (structure, activation) overridden by explicit config values."""
        return make_op_config(self.cfg, self.space, precision)

    def build_supernet(self, precision: str, k_normal: int = 1, k_reduce: int = 1, edge_norm: bool = False) -> SuperNetwork:
        net = SuperNetwork(
            self.space, self.op_config(precision), init_channels=self.cfg.init_channels,
            num_classes=self.ctx.num_classes, layers=self.cfg.layers, in_channels=self.ctx.in_channels,
            k_normal=k_normal, k_reduce=k_reduce, edge_norm=edge_norm,
        ).to(self.ctx.device)
        net.channels_last = CHANNELS_LAST_CHOICES[self.cfg.channels_last]
        return net

    @property
    def images(self) -> int:
        """Images processed so far (all ranks): weight and α steps, evaluations, scoring."""
        return self.steps.images

    @property
    def step(self) -> int:
        """Weight steps taken so far."""
        return self.steps.step

    def end_weight_step(self, batch: int, loader: BatchLoader) -> None:
        """After a weight step on `batch` images of `loader`'s epoch: count them, mark the step for
        fault injection, and stop here if a stop was requested — a safe point inside the unit, whose
        partial state the strategy's `state_dict()` holds (never after the epoch's last batch)."""
        self.steps.done(images=batch * self.ctx.world_size)
        if loader.position < len(loader) and self.steps.stop_requested():
            raise UnitInterrupted

    # -- to implement -------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        raise NotImplementedError

    def run_unit(self) -> dict[str, Any]:
        """Do the next unit of work and return its metrics record (JSON-serialisable)."""
        raise NotImplementedError

    def genotype(self) -> Genotype:
        """The genotype the search has found (so far)."""
        raise NotImplementedError

    def best_genotype(self) -> Genotype | None:
        """The genotype of the best-validation unit, if the strategy tracks one."""
        return None

    def estimate(self, genotype: Genotype) -> dict[str, float]:
        """The search's own estimate of how good `genotype` is (`score`: higher is better), from its
        current state: what its decisions rank architectures by. Rank fidelity compares it with the
        genotype's stand-alone accuracy (`bitnas.study.estimators.search`, `bitnas.study.fidelity`)."""
        raise NotImplementedError(f"strategy {self.name} has no architecture estimator")

    # Attributes that have their own state_dict()/load_state_dict() (models, optimizers,
    # schedulers, loaders...): saved and restored by the base class under their names.
    stateful: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {**self.steps.state_dict(), "stop_reason": self.stop_reason}
        st.update({name: getattr(self, name).state_dict() for name in self.stateful})
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps.load_state_dict(state)
        self.stop_reason = str(state["stop_reason"])
        for name in self.stateful:
            getattr(self, name).load_state_dict(state[name])

    def result_info(self) -> dict[str, Any]:
        """Extra JSON-serialisable fields for genotype.json (e.g. stop epoch, scored samples)."""
        return {}

    def models(self) -> dict[str, nn.Module]:
        """Named models whose weights the checkpoint stores (for `bitnas plot` and inspection)."""
        return {}
