"""Named search spaces: an ordered op list plus the default module structure of its binary ops."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from bitnas.registry import Registry
from bitnas.space.operations import OPS

SPACES: Registry["SearchSpace"] = Registry("search space")


@dataclass(frozen=True)
class SearchSpace:
    """Candidate ops on every edge; `structure` is the default binary module structure."""

    name: str
    ops: tuple[str, ...]
    structure: str
    activation: str = "ste_sign"
    description: str = ""
    zero_op: str | None = field(default="none")

    def __post_init__(self) -> None:
        for op in self.ops:
            OPS.canonical(op)

    def without_zero(self) -> tuple[str, ...]:
        return tuple(o for o in self.ops if o != self.zero_op)

    def with_ops(self, ops: tuple[str, ...], name: str | None = None) -> "SearchSpace":
        return replace(self, name=name or self.name, ops=tuple(ops))


DARTS_OPS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)

SPACES.register("darts", SearchSpace(
    "darts", DARTS_OPS, structure="darts",
    description="the 8 DARTS ops; binary form = DARTS op with ReLU dropped, convs binarised"))
SPACES.register("cpnas", SearchSpace(
    "cpnas", DARTS_OPS, structure="cpnas",
    description="CP-NAS: zero, identity, max/avg pool, binarised dil 3/5 and sep 3/5 "
                "(binary depthwise → BN → binary 1×1 → BN)"))
UBNAS_OPS = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "conv_3x3", "conv_5x5", "dil_full_conv_3x3", "dil_full_conv_5x5",
)
SPACES.register("ubnas", SearchSpace(
    "ubnas", UBNAS_OPS, structure="ebnas", activation="approx_sign",
    description="UBNAS binary-friendly ops: skip, pools, binary conv 3/5 and dilated conv 3/5 "
                "(rate 2), ApproxSign, module structure configurable"))
SPACES.register("ubnas_nozero", SPACES.get("ubnas").with_ops(UBNAS_OPS[1:], name="ubnas_nozero"))


def get_space(name: str) -> SearchSpace:
    return SPACES.get(name)
