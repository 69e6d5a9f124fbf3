"""Zero-cost estimators (METHODS §7): a score of an untrained network from at most a few batches of
training images, no training at all. Higher is better for every one of them.

On a 1-bit network (`precision=binary`) θ is the *latent* weight of a binarised conv — the
parameter the optimiser trains, binarised to α·sign(θ) in the forward pass (α = mean|θ| per
channel, detached) and reached by the weight quantizer's straight-through gradient — and the
full-precision weight of the stem conv and the classifier. The auxiliary head is never scored.

- `params`: parameter count n_1bit + n_32bit (every parameter, as `bitnas summary` counts them).
- `synflow` (Tanaka et al. 2020, as the reference implementation of Abdelfattah et al. 2021 runs
  it): every parameter replaced by |θ|, in float64 (no overflow), BatchNorm layers passed through
  (the reference builds the network without BN), one all-ones input; R = Σ logits and the score
  is Σ_θ |θ · ∂R/∂θ| over conv and linear weights. The forward pass is the 1-bit network's own
  (α·sign(|θ|) kernels, sign activations); the activations' sign passes the gradient straight
  through (identity), because the surrogate gradients (ApproxSign: max(0, 2 − 2|x|)) are zero
  on the large positive pre-activations of this linearised network and would cut every path.
- `grad_norm` (Abdelfattah et al.): Σ over conv and linear layers of ‖∂L/∂θ‖₂, L the mean
  cross-entropy of one batch, BatchNorm on batch statistics (training mode).
- `naswot` (Mellor et al. 2021): over one batch of N images, the binary code of an image is the
  sign pattern of every activation quantizer's output — the ±1 inputs of the binary convs, read
  as 1 for +1 (sign(0) = +1); with c_i the codes, K_H[i, j] = N_A − d_Hamming(c_i, c_j) and the
  score is log|det K_H|. A network without activation quantizers (fp32) takes the codes of its
  ReLU inputs (x > 0), as the reference does.
- `zico` (Li et al. ICLR 2023): the gradients g of every conv / linear weight on each of B ≥ 2
  batches (mean cross-entropy, training mode); per layer log Σ_θ mean_b|g| / std_b(g), the sum
  over θ with non-zero std (population std), layers whose sum is 0 skipped; summed over layers.

`get(name)` returns an `Estimator`; `score_network` computes several on one network.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bitnas.binary.layers import BinaryConv2d
from bitnas.binary.quantizers import Quantizer
from bitnas.errors import BitnasError, ConfigError
from bitnas.registry import Registry
from bitnas.summary import in_auxiliary_head, params_by_precision

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Estimator:
    """A zero-cost estimator: `fn(model, batches)` → score (higher = better), how many training
    batches it is given (0: none, -1: all, at least `min_batches`) and whether it reads their
    images (synflow only takes the input shape of one)."""

    name: str
    fn: Callable[[nn.Module, Sequence[Batch]], float]
    batches: int
    min_batches: int = 0
    what: str = ""
    reads_images: bool = True

    def __call__(self, model: nn.Module, batches: Sequence[Batch]) -> float:
        return self.fn(model, self.take(batches))

    def take(self, batches: Sequence[Batch]) -> Sequence[Batch]:
        """The batches this estimator reads of `batches`."""
        if len(batches) < self.min_batches:
            raise ConfigError(f"zero-cost estimator {self.name}: needs at least {self.min_batches} batches, "
                              f"got {len(batches)}")
        return batches if self.batches < 0 else batches[: self.batches]


ZERO_COST: Registry[Estimator] = Registry("zero-cost estimator")


def get(name: str) -> Estimator:
    return ZERO_COST.get(name)


def _register(name: str, batches: int, what: str, min_batches: int = 0, reads_images: bool = True) -> Callable:
    def add(fn: Callable[[nn.Module, Sequence[Batch]], float]) -> Callable[[nn.Module, Sequence[Batch]], float]:
        ZERO_COST.register(name, Estimator(name, fn, batches, max(min_batches, batches, 0), what, reads_images))
        return fn

    return add


# ---------------------------------------------------------------------------- what the estimators read

def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    """The logits of a network that may also return auxiliary logits."""
    out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d | nn.Linear]]:
    """(name, layer) of every conv (binarised or not) and linear layer outside the auxiliary head."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not in_auxiliary_head(n)]


def activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """Every quantizer module that binarises activations (the weight quantizers of binarised convs
    are left out), outside the auxiliary head."""
    weight_q = {id(m.weight_quantizer) for m in model.modules() if isinstance(m, BinaryConv2d)}
    return [m for n, m in model.named_modules()
            if isinstance(m, Quantizer) and id(m) not in weight_q and not in_auxiliary_head(n)]


class _Hooks:
    """Forward hooks removed on exit."""

    def __init__(self, modules: Sequence[nn.Module], hook: Callable) -> None:
        self.handles = [m.register_forward_hook(hook) for m in modules]

    def __enter__(self) -> "_Hooks":
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


def _weight_grads(model: nn.Module, batch: Batch) -> list[tuple[str, Tensor | None]]:
    """Cross-entropy gradients of every weight layer on `batch` (training mode, batch statistics)."""
    model.train()
    model.zero_grad(set_to_none=True)
    x, y = batch
    F.cross_entropy(logits_of(model, x), y).backward()
    return [(n, m.weight.grad) for n, m in weight_layers(model)]


# ---------------------------------------------------------------------------- the estimators

@_register("params", 0, "parameter count, 1-bit + 32-bit")
def params(model: nn.Module, batches: Sequence[Batch]) -> float:
    """n_1bit + n_32bit."""
    p1, p32 = params_by_precision(model)
    return float(p1 + p32)


@_register("synflow", 1, "Σ|θ·∂R/∂θ| of the |θ| network on an all-ones input, float64, BN passed through",
           reads_images=False)
def synflow(model: nn.Module, batches: Sequence[Batch]) -> float:
    """SynFlow on a float64 copy with |θ| (the model itself is untouched); see the module docstring."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    bns = [m for m in net.modules() if isinstance(m, _BatchNorm)]
    signs = activation_quantizers(net)
    shape = tuple(batches[0][0].shape[1:])
    with _Hooks(bns, lambda m, inp, out: inp[0]), \
            _Hooks(signs, lambda m, inp, out: inp[0] + (out - inp[0]).detach()):
        net.zero_grad(set_to_none=True)
        logits_of(net, torch.ones(1, *shape, dtype=torch.float64)).sum().backward()
    with torch.no_grad():
        return float(sum(float((m.weight * m.weight.grad).abs().sum())
                         for _, m in weight_layers(net) if m.weight.grad is not None))


@_register("grad_norm", 1, "Σ over layers of ‖∂L/∂θ‖₂ on one batch")
def grad_norm(model: nn.Module, batches: Sequence[Batch]) -> float:
    """Sum of the per-layer gradient norms of the cross-entropy of one batch."""
    return float(sum(float(g.norm()) for _, g in _weight_grads(model, batches[0]) if g is not None))


@_register("naswot", 1, "log|det K_H| of the sign codes of one batch")
def naswot(model: nn.Module, batches: Sequence[Batch]) -> float:
    """log|det K_H| with K_H = N_A − Hamming distance of the images' activation codes."""
    x, _ = batches[0]
    n = len(x)
    kernel = torch.zeros(n, n, dtype=torch.float64)
    signs = activation_quantizers(model)

    def add(codes: Tensor) -> None:
        c = codes.reshape(n, -1).to(torch.float64)
        kernel.add_(c @ c.T).add_((1.0 - c) @ (1.0 - c).T)

    if signs:
        modules, hook = signs, (lambda m, inp, out: add(out > 0))
    else:
        modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        hook = (lambda m, inp, out: add(inp[0] > 0))
    if not modules:
        raise BitnasError("naswot: the network has neither activation quantizers nor ReLUs to take codes from")
    model.train()
    with _Hooks(modules, hook), torch.no_grad():
        logits_of(model, x)
    return float(torch.linalg.slogdet(kernel).logabsdet)


@_register("zico", -1, "Σ over layers of log Σ mean|g| / std g over the batches", min_batches=2)
def zico(model: nn.Module, batches: Sequence[Batch]) -> float:
    """ZiCo over the given batches (at least 2)."""
    per_layer: dict[str, list[Tensor]] = {}
    for batch in batches:
        for name, g in _weight_grads(model, batch):
            if g is not None:
                per_layer.setdefault(name, []).append(g.detach().reshape(-1).to(torch.float64).clone())
    total = 0.0
    for gs in per_layer.values():
        if len(gs) < 2:
            continue
        g = torch.stack(gs)
        std = g.std(dim=0, unbiased=False)
        keep = std != 0
        s = float((g.abs().mean(dim=0)[keep] / std[keep]).sum())
        if s > 0:
            total += math.log(s)
    return total


# ---------------------------------------------------------------------------- several on one network

def check_names(names: Sequence[str], where: str) -> tuple[str, ...]:
    """Canonical estimator names, refused when unknown or repeated."""
    try:
        out = tuple(ZERO_COST.canonical(str(n)) for n in names)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ConfigError(f"{where}: zero-cost estimator '{dup[0]}' listed twice")
    return out


def batches_needed(names: Sequence[str]) -> int:
    """The fewest batches that serve every estimator in `names` (0 when none reads data)."""
    return max([get(n).min_batches for n in names] + [0])


def images_read(names: Sequence[str], batches: Sequence[Batch]) -> int:
    """Training images the estimators in `names` read from `batches`."""
    return sum(sum(len(x) for x, _ in get(n).take(batches)) for n in names if get(n).reads_images)


def score_network(model: nn.Module, batches: Sequence[Batch], names: Sequence[str]) -> dict[str, float]:
    """Each estimator of `names` on its own copy of `model` (they change gradients and BatchNorm
    statistics), so a score never depends on which others were computed."""
    return {n: get(n)(copy.deepcopy(model), batches) for n in names}
