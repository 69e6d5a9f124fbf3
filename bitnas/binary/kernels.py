"""The binarised kernels α·sign(W) of all of a network's binary convs in one node per training step.

Each binary conv with the clipped STE and a per-channel α (mean |W|, detached) binarises its
weights in its own autograd node (`SteSign.scaled`): ~78 nodes per step in the protocol network,
each a Python call forward and backward on a tensor of a few hundred floats. `batched_kernels`
computes them all before the network's forward in one node (one C++ call each way) and hands
each conv its kernel on its first use; the values and gradients are bit for bit those of the
per-conv nodes (the same α expression, the same kernels, each weight's gradient computed alone
as before), only the number of nodes changes. Convs it does not serve (other quantizers or
scales, frozen kernels, eval mode, no gradient, the extension not built) binarise as before.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from bitnas.binary.fused import rows_fusable, extension, scaled_ste_sign_grad
from bitnas.binary.layers import BinaryConv2d
from bitnas.binary.quantizers import SteSign

_CONVS = "_bitnas_binary_convs"


class _ScaledSteSignMany(torch.autograd.Function):
    """α·sign(W) for many (W, α, clip) at once; the backward computes each W's STE gradient
    alone, as `_ScaledSteSignFn` does, in one C++ call for those the kernel takes."""

    @staticmethod
    def forward(ctx, alphas: tuple[Tensor, ...], clips: tuple[float, ...],  # type: ignore[override]
                *weights: Tensor) -> tuple[Tensor, ...]:
        outs = tuple(torch.empty_like(w) for w in weights)
        extension().scaled_sign_many([w.data_ptr() for w in weights], [a.data_ptr() for a in alphas],
                                     [o.data_ptr() for o in outs], [w.shape[0] for w in weights],
                                     [w.numel() // w.shape[0] for w in weights])
        ctx.save_for_backward(*weights)
        ctx.alphas, ctx.clips = alphas, clips
        return outs

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        weights = ctx.saved_tensors
        outs: list[Tensor | None] = [None] * len(weights)
        batch: list[int] = []
        for i, (w, g, a, clip) in enumerate(zip(weights, grads, ctx.alphas, ctx.clips)):
            if g is None:
                continue
            if rows_fusable(w, a, g):
                outs[i] = torch.empty_like(w)
                batch.append(i)
            else:
                outs[i] = scaled_ste_sign_grad(w, g, a, clip)
        if batch:
            extension().scaled_ste_sign_grad_many(
                [weights[i].data_ptr() for i in batch], [grads[i].data_ptr() for i in batch],
                [ctx.alphas[i].data_ptr() for i in batch], [outs[i].data_ptr() for i in batch],
                [weights[i].shape[0] for i in batch], [weights[i].numel() // weights[i].shape[0] for i in batch],
                [ctx.clips[i] for i in batch])
        return (None, None, *outs)


def _served(conv: BinaryConv2d) -> bool:
    """True when `conv` binarises through `SteSign.scaled` with a detached per-channel α."""
    return (conv.training and conv.frozen_kernel is None and conv.weight_scale == "channel"
            and type(conv.weight_quantizer) is SteSign and conv.weight.requires_grad)


def _binary_convs(net: nn.Module) -> tuple[BinaryConv2d, ...]:
    """The binary convs of `net`, found once (the list is kept on the network; a conv added
    later binarises on its own, one removed later is binarised for nothing)."""
    found = net.__dict__.get(_CONVS)
    if found is None:
        found = tuple(m for m in net.modules() if isinstance(m, BinaryConv2d) and m.is_binary)
        net.__dict__[_CONVS] = found
    return found


@contextmanager
def batched_kernels(net: nn.Module) -> Iterator[None]:
    """Within the block, the binary convs of `net` that `_served` accepts take their kernels from
    one node computed here (each on its first `binary_weight()` call; a second call binarises
    anew, as before). Nothing happens without gradients, in eval mode or without the extension."""
    if not (net.training and torch.is_grad_enabled()) or extension() is None:
        yield
        return
    convs = [c for c in _binary_convs(net) if _served(c)]
    alphas = [c.alpha() for c in convs]
    keep = [i for i, (c, a) in enumerate(zip(convs, alphas)) if rows_fusable(c.weight, a)]
    convs = [convs[i] for i in keep]
    if not convs:
        yield
        return
    kernels = _ScaledSteSignMany.apply(tuple(alphas[i] for i in keep),
                                       tuple(c.weight_quantizer.clip for c in convs), *(c.weight for c in convs))
    for c, k in zip(convs, kernels):
        c.ready_kernel = k
    try:
        yield
    finally:
        for c in convs:
            c.ready_kernel = None
