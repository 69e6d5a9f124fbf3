"""Losses for training binary networks: CP-NAS kernel-level Child-Parent loss, centre loss, KD.

Kernel loss (CP-NAS, METHODS §4.4): L_Ĥ = Σ_layers MSE(H, Ĥ) over the binarised convs of the
child, Ĥ = α·sign(W) the reconstructed kernel actually used in the forward pass, and H either
the full-precision kernel of the parent's conv with the same module name (`target="parent"`,
a fixed tensor) or the child's own latent kernel W (`target="latent"`, the quantisation error;
the gradient then reaches W through both H and Ĥ).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bitnas.binary import BinaryConv2d, binarized_layers
from bitnas.errors import ConfigError

KERNEL_TARGETS = ("parent", "latent")


class KernelLoss:
    """Σ over the child's binarised convs of mean((H − Ĥ)²).

    `child`, `parent`: unwrapped models (not DDP). With target "parent" every binarised conv
    of the child must have a conv of the same module name and kernel shape in the parent,
    which holds by construction for the twins built by `build_network` with the same
    arguments but precision; anything else raises ConfigError naming the first mismatch.
    """

    def __init__(self, child: nn.Module, parent: nn.Module | None = None, target: str = "parent") -> None:
        if target not in KERNEL_TARGETS:
            raise ConfigError(f"cp_kernel_target '{target}' unknown; known: {', '.join(KERNEL_TARGETS)}")
        self.target = target
        self.layers = binarized_layers(child)
        if not self.layers:
            raise ConfigError("method cp: the child has no binarised convs (is precision fp32?)")
        self.parent_kernels: list[Tensor] = []
        if target == "parent":
            if parent is None:
                raise ConfigError("cp_kernel_target parent: a parent network is needed")
            self.parent_kernels = matching_parent_kernels(self.layers, parent)

    def __call__(self) -> Tensor:
        terms = []
        for k, (_, layer) in enumerate(self.layers):
            h = self.parent_kernels[k] if self.target == "parent" else layer.weight
            terms.append(F.mse_loss(layer.binary_weight(), h))
        return torch.stack(terms).sum()


def matching_parent_kernels(layers: list[tuple[str, BinaryConv2d]], parent: nn.Module) -> list[Tensor]:
    """The parent's (detached) kernel for each (name, child layer), checked by name and shape."""
    modules = dict(parent.named_modules())
    out = []
    for name, layer in layers:
        p = modules.get(name)
        if not isinstance(p, nn.Conv2d):
            raise ConfigError(f"kernel loss: the parent has no conv named '{name}' (child and parent must be "
                              "the same genotype and build arguments, differing only in precision)")
        if tuple(p.weight.shape) != tuple(layer.weight.shape):
            raise ConfigError(f"kernel loss: conv '{name}' has kernel shape {tuple(layer.weight.shape)} in the child "
                              f"but {tuple(p.weight.shape)} in the parent")
        out.append(p.weight.detach())
    return out


class CenterLoss(nn.Module):
    """Centre loss (Wen et al. 2016): ½·mean_i ‖f_i − c_{y_i}‖², centres kept as a buffer.

    After each training step `update` moves every centre seen in the batch towards the mean
    feature of its class: c_k ← c_k − α·(c_k − mean_{i: y_i=k} f_i). `reduce` (optional) sums
    tensors over processes so that all ranks keep identical centres.
    """

    def __init__(self, num_classes: int, dim: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.register_buffer("centers", torch.zeros(num_classes, dim))

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        c = self.centers[labels]
        return 0.5 * (features - c).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        k = self.centers.shape[0]
        f = features.detach().to(self.centers.dtype)
        sums = torch.zeros_like(self.centers).index_add_(0, labels, f)
        counts = torch.zeros(k, dtype=self.centers.dtype, device=self.centers.device)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=self.centers.dtype))
        if reduce is not None:
            packed = reduce(torch.cat([sums, counts[:, None]], dim=1))
            sums, counts = packed[:, :-1], packed[:, -1]
        # no boolean indexing (its size would be read by the host at every step): the centres of the
        # classes in the batch get the same update, the others are kept as they are
        seen = (counts > 0)[:, None]
        means = sums / counts.clamp_min(1.0)[:, None]
        self.centers.copy_(torch.where(seen, self.centers - self.alpha * (self.centers - means), self.centers))


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton KD: KL(softmax(t/T) ∥ softmax(s/T)) · T², batch mean; the teacher is detached."""
    t = float(temperature)
    log_q = F.log_softmax(student_logits / t, dim=1)
    log_p = F.log_softmax(teacher_logits.detach() / t, dim=1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (t * t)
