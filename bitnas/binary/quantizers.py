"""1-bit quantizers: sign forward (sign(0) = +1), surrogate gradients backward.

Found by name through one registry, as in Larq: `get("approx_sign")`, `get(SteSign(0.5))`
or `get(callable)`. `None` means full precision (identity).
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor, nn

from bitnas.binary.fused import (approx_sign_grad, scaled_sign, scaled_ste_sign_grad, shared_sign, sign, sign_grad_add,
                                 ste_sign_grad)
from bitnas.errors import ConfigError
from bitnas.registry import Registry


class _SteSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, clip: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.clip = clip
        return shared_sign(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return ste_sign_grad(x, g, ctx.clip), None


class _ApproxSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return shared_sign(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return approx_sign_grad(x, g)


class _SignResidualFn(torch.autograd.Function):
    """(sign(x), x) for a block whose input feeds its sign and its residual add and nothing else:
    one node takes both output gradients and returns their sum in one pass (`sign_grad_add`),
    the value autograd's accumulation of the two terms gives. `clip` None: ApproxSign's
    gradient, else the clipped STE's."""

    @staticmethod
    def forward(ctx, x: Tensor, clip: float | None) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x)
        ctx.clip = clip
        return shared_sign(x), x

    @staticmethod
    def backward(ctx, gs: Tensor | None, gr: Tensor | None):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        clip = ctx.clip
        if gs is None:
            return gr, None
        if gr is None:
            return (approx_sign_grad(x, gs) if clip is None else ste_sign_grad(x, gs, clip)), None
        return sign_grad_add(x, gs, gr, clip), None


class _ScaledSteSignFn(torch.autograd.Function):
    """α · sign(W) with a detached α per output channel, the clipped STE backward: one node and one
    pass each way for what the product of α and `SteSign` takes two nodes and three passes."""

    @staticmethod
    def forward(ctx, w: Tensor, alpha: Tensor, clip: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w, alpha)
        ctx.clip = clip
        return scaled_sign(w, alpha)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        w, alpha = ctx.saved_tensors
        return scaled_ste_sign_grad(w, g, alpha, ctx.clip), None, None


class _SwishSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, beta: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.beta = beta
        return sign(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        b = ctx.beta
        bx = x * b
        # g · β(2 − βx·tanh(βx/2)) / (1 + cosh(βx)), in place on two buffers
        grad = torch.div(bx, 2.0).tanh_().mul_(bx).neg_().add_(2.0).mul_(b)
        return grad.div_(torch.cosh(bx).add_(1.0)).mul_(g), None


class Quantizer(nn.Module):
    """Base class: a module mapping real tensors to {-1, +1}."""

    name = "quantizer"
    # True when forward returns only ±1 (every sign quantizer here): a conv may then accumulate
    # ±1 products as exact integers (`BinaryConv2d`, eval mode).
    signs = True

    def extra_repr(self) -> str:
        return ""

    def with_residual(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """(q(x), x) through one node that sums the two gradients of x in one pass (for an input
        that feeds this quantizer and a residual add only), or None where not offered."""
        return None

    def scaled(self, w: Tensor, alpha: Tensor) -> Tensor:
        """α · q(W) for a detached α shaped C_out×1×…: the product, or one fused node where offered."""
        return alpha * self(w)


class SteSign(Quantizer):
    """BNN straight-through sign: gradient 1 where |x| <= clip, else 0."""

    name = "ste_sign"

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = float(clip)

    def forward(self, x: Tensor) -> Tensor:
        return _SteSignFn.apply(x, self.clip)

    def with_residual(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        return _SignResidualFn.apply(x, self.clip)

    def scaled(self, w: Tensor, alpha: Tensor) -> Tensor:
        return _ScaledSteSignFn.apply(w, alpha, self.clip)

    def extra_repr(self) -> str:
        return f"clip={self.clip}"


class ApproxSign(Quantizer):
    """Bi-Real Net ApproxSign: gradient max(0, 2 - 2|x|) (UBNAS's activation quantizer)."""

    name = "approx_sign"

    def forward(self, x: Tensor) -> Tensor:
        return _ApproxSignFn.apply(x)

    def with_residual(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        return _SignResidualFn.apply(x, None)


class SwishSign(Quantizer):
    """BNN+ SwishSign: gradient β(2 − βx·tanh(βx/2)) / (1 + cosh(βx))."""

    name = "swish_sign"

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: Tensor) -> Tensor:
        return _SwishSignFn.apply(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class LearnableBiasSign(Quantizer):
    """ReActNet RSign: a learned per-channel threshold before an ApproxSign."""

    name = "rsign"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return _ApproxSignFn.apply(x + self.bias)


class CallableQuantizer(Quantizer):
    """Wraps a user callable so it can live inside a module tree (its values unknown: `signs`
    is False)."""

    signs = False

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "__name__", "callable")

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


QUANTIZERS: Registry[type[Quantizer]] = Registry("quantizer")
QUANTIZERS.register("ste_sign", SteSign)
QUANTIZERS.register("approx_sign", ApproxSign)
QUANTIZERS.register("swish_sign", SwishSign)

QuantizerLike = Union[str, Quantizer, Callable[[Tensor], Tensor], None]


def get(identifier: QuantizerLike) -> Quantizer | None:
    """Resolve a quantizer from a name, an instance or a callable; None stays None."""
    if identifier is None or identifier == "none" or identifier == "fp32":
        return None
    if isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, str):
        return QUANTIZERS.get(identifier)()
    if callable(identifier):
        return CallableQuantizer(identifier)
    raise ConfigError(
        f"cannot interpret {identifier!r} as a quantizer; known: {', '.join(QUANTIZERS.names())}"
    )
