"""An exported 1-bit network as a standard ONNX graph whose binary convolutions stay exact.

The graph is built from the plans of `plan.py` (the one place that says what each module means)
and the export's packed kernels and folded constants, never by tracing. A binary conv becomes:

    x ─(x·scale + shift: a BN before the sign, ReActNet's RSign)─ GreaterOrEqual 0 ─ Where(+1, −1)
      ─ [Pad with 1 when pad_value = 1] ─ QuantizeLinear(int8, scale 1) ─ DequantizeLinear ─┐
    W: ±1 int8 initializer ─ DequantizeLinear(scale 1) ──────────────────────────────────── Conv
      ─ ·mul + add (α and the BN after the conv, folded in float64) ─ [+ shortcut] ─ [act] ─ [+ addend]

sign(0) = +1 as in training. The conv's inputs are ±1 (0 in a zero-padded border) and its output
stays float: no requantisation, so the count is the exact integer dot product (|dot| < 2²⁴) in
every runtime, which may run the Q/DQ'd conv on its int8 kernels (OpenVINO does; `form="float"`
keeps ±1 float weights instead, for runtimes that leave the Q/DQ form on a slow path). A conv
whose output only feeds the next sign gives that sign directly by the engine's exact integer
threshold (`engine.thresholds`). Stem, pools and classifier are ordinary ONNX ops (BN folded into
the stem conv). Batch size is free; the spatial size is the export's image size when it holds
one. Input normalisation, class names and the architecture are in `metadata_props`.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from torch import nn

from bitnas.deploy.engine import thresholds
from bitnas.deploy.fold import bn_affine
from bitnas.deploy.graph import fold_conv_bn
from bitnas.deploy.plan import (ChainPlan, ConcatPlan, IdentityPlan, Plan, PostAddPlan, ReducePlan, SequencePlan,
                                SignTransform, Step, ZeroPlan, act_params, describe, folded, neg_bits)
from bitnas.errors import BitnasError
from bitnas.space.operations import Zero

OPSET = 17  # ONNX Runtime and OpenVINO both read it; QuantizeLinear per tensor, GreaterOrEqual, Pad with a value
FORMS = ("qdq", "float")
INPUT, OUTPUT = "input", "logits"
META_PREFIX = "bitnas."
BCONV = "bconv:"  # node and output name prefix of a binary conv (the OpenVINO BinaryConvolution pass finds them)
_INT64_MAX = np.iinfo(np.int64).max


class OnnxBuilder:
    """Accumulates nodes and initializers; every method returns the name of its output tensor."""

    def __init__(self, exp: dict[str, Any], form: str = "qdq") -> None:
        import onnx
        from onnx import helper

        if form not in FORMS:
            raise BitnasError(f"ONNX form '{form}': expected one of {', '.join(FORMS)}")
        self.onnx, self.helper = onnx, helper
        self.exp, self.form = exp, form
        self.rows = {row["name"]: row for row in exp["binary"]}
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.consts: dict[tuple, str] = {}
        self.n = 0
        self.binary_convs = 0

    # ---------------------------------------------------------------- primitives

    def fresh(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value: np.ndarray | float | list, dtype: Any = np.float32, hint: str = "c") -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 16 else None
        if key is not None and key in self.consts:
            return self.consts[key]
        name = self.fresh(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(arr, name))
        if key is not None:
            self.consts[key] = name
        return name

    def channel(self, v: np.ndarray, hint: str) -> str:
        """A per-channel float32 constant shaped (1, C, 1, 1)."""
        return self.const(np.asarray(v, np.float64).reshape(1, -1, 1, 1), hint=hint)

    def op(self, kind: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        out = name or self.fresh(kind.lower())
        self.nodes.append(self.helper.make_node(kind, inputs, [out], name=name or out, **attrs))
        return out

    # ---------------------------------------------------------------- binary convs

    def sign(self, x: str, transform: SignTransform | None = None) -> str:
        """±1 float of sign(x·scale + shift), sign(0) = +1."""
        if transform is not None and transform.scale is not None:
            x = self.op("Mul", [x, self.channel(transform.scale, "sign_scale")])
        if transform is not None and transform.shift is not None:
            x = self.op("Add", [x, self.channel(transform.shift, "sign_shift")])
        ge = self.op("GreaterOrEqual", [x, self.const(0.0)])
        return self.op("Where", [ge, self.const(1.0), self.const(-1.0)])

    def bconv(self, signs: str, layer: nn.Module, name: str, pads: list[int] | None = None) -> str:
        """The integer dot product (as float) of ±1 `signs` with the stored ±1 kernel of `name`."""
        row = self.rows[name]
        w = np.where(neg_bits(row, self.exp["bits"]), -1, 1).astype(np.int8)
        ph, pw = (int(p) for p in row["padding"])
        if pads is None:
            pads = [ph, pw, ph, pw]
            if row["pad_value"] == 1.0 and (ph or pw):
                pad_spec = self.const([0, 0, ph, pw, 0, 0, ph, pw], np.int64, "pads")
                signs = self.op("Pad", [signs, pad_spec, self.const(1.0)], mode="constant")
                pads = [0, 0, 0, 0]
        if self.form == "qdq":
            one, zero = self.const(1.0, hint="scale"), self.const(0, np.int8, hint="zero_point")
            q = self.op("QuantizeLinear", [signs, one, zero])
            signs = self.op("DequantizeLinear", [q, one, zero])
            weight = self.op("DequantizeLinear", [self.const(w, np.int8, f"{name}.weight"), one, zero])
        else:
            weight = self.const(w.astype(np.float32), hint=f"{name}.weight")
        self.binary_convs += 1
        return self.op("Conv", [signs, weight], name=f"{BCONV}{name}", kernel_shape=list(w.shape[2:]),
                       strides=[int(s) for s in row["stride"]], pads=pads,
                       dilations=[int(d) for d in row["dilation"]], group=int(row["groups"]))

    def affine(self, x: str, mul: np.ndarray, add: np.ndarray) -> str:
        return self.op("Add", [self.op("Mul", [x, self.channel(mul, "mul")]), self.channel(add, "add")])

    def act(self, x: str, act: nn.Module | None, c: int) -> str:
        p = act_params(act, c)
        if p["act"] == "relu":
            return self.op("Relu", [x])
        if p["act"] == "rprelu":
            x = self.op("Sub", [x, self.channel(p["shift_in"], "shift_in")])
        if p["act"] in ("prelu", "rprelu"):
            x = self.op("PRelu", [x, self.const(p["slope"].reshape(-1, 1, 1), hint="slope")])
        if p["act"] == "rprelu":
            x = self.op("Add", [x, self.channel(p["shift_out"], "shift_out")])
        return x

    def chain(self, steps: list[Step], x: str, post: str | None = None) -> str:
        """The chain's float output; `post` is added last."""
        prev, signs = x, None
        for i, st in enumerate(steps):
            nxt = steps[i + 1] if i + 1 < len(steps) else None
            if signs is None:
                signs = self.sign(prev, st.sign)
            dot = self.bconv(signs, st.layer, st.name)
            row = self.rows[st.name]
            mul, add = folded(self.exp, row)
            if nxt is not None and nxt.shortcut is None and st.shortcut is None and st.act is None:
                s = nxt.sign.scale.astype(np.float64) if nxt.sign is not None and nxt.sign.scale is not None else 1.0
                t = nxt.sign.shift.astype(np.float64) if nxt.sign is not None and nxt.sign.shift is not None else 0.0
                sgn, thr = thresholds(s * mul, s * add + t, int(np.prod(row["shape"][1:])))
                less = self.op("Less", [self.op("Mul", [dot, self.channel(sgn, "thr_sign")]), self.channel(thr, "thr")])
                signs = self.op("Where", [less, self.const(-1.0), self.const(1.0)])
                continue
            out = self.affine(dot, mul, add)
            if st.shortcut == "identity":
                out = self.op("Add", [out, prev])
            elif st.shortcut == "avgpool":
                out = self.op("Add", [out, self.torch_module(st.pool, prev)])
            out = self.act(out, st.act, row["shape"][0])
            if nxt is None and post is not None:
                out = self.op("Add", [out, post])
            prev, signs = out, None
        return prev

    def reduce(self, p: ReducePlan, x: str, post: str | None = None) -> str:
        """Factorised reduce: 1×1 stride-2 convs on x and on x shifted by one pixel, concatenated;
        the shifted branch's missing last row/column (odd sizes) is a zero count, as in training."""
        signs = self.sign(x)
        shifted = self.op("Slice", [signs, self.const([1, 1], np.int64), self.const([_INT64_MAX] * 2, np.int64),
                                    self.const([2, 3], np.int64)])
        shifted = self.op("Pad", [shifted, self.const([0, 0, 0, 0, 0, 0, 1, 1], np.int64, "pads"), self.const(0.0)],
                          mode="constant")
        halves = []
        for conv, src in (("conv_1", signs), ("conv_2", shifted)):
            name = f"{p.name}.{conv}"
            halves.append(self.affine(self.bconv(src, getattr(p.module, conv), name, [0, 0, 0, 0]),
                                      *folded(self.exp, self.rows[name])))
        out = self.op("Concat", halves, axis=1)
        return out if post is None else self.op("Add", [out, post])

    # ---------------------------------------------------------------- everything else

    def zero(self, x: str, stride: int) -> str:
        if stride != 1:
            x = self.op("Slice", [x, self.const([0, 0], np.int64), self.const([_INT64_MAX] * 2, np.int64),
                                  self.const([2, 3], np.int64), self.const([stride, stride], np.int64)])
        return self.op("Mul", [x, self.const(0.0)])

    def torch_module(self, m: nn.Module, x: str) -> str:
        """A full-precision module (stem, pools, fp32 convs with their BN folded in)."""
        m = fold_conv_bn(m)
        if isinstance(m, nn.Sequential):
            for child in m:
                x = self.torch_module(child, x)
            return x
        if isinstance(m, nn.Identity):
            return x
        if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            ph, pw = m.padding
            inputs = [x, self.const(m.weight.detach().numpy(), hint="weight")]
            if m.bias is not None:
                inputs.append(self.const(m.bias.detach().numpy(), hint="bias"))
            return self.op("Conv", inputs, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                           pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            return self.affine(x, *bn_affine(m))
        if isinstance(m, nn.ReLU):
            return self.op("Relu", [x])
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s, pad = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
            attrs: dict[str, Any] = dict(kernel_shape=k, strides=s, pads=pad + pad, ceil_mode=int(m.ceil_mode))
            if isinstance(m, nn.MaxPool2d):
                if _pair(m.dilation) != [1, 1]:
                    raise BitnasError("ONNX export: dilated max pooling is not supported")
                return self.op("MaxPool", [x], **attrs)
            if m.divisor_override:
                raise BitnasError("ONNX export: average pooling with divisor_override is not supported")
            return self.op("AveragePool", [x], count_include_pad=int(m.count_include_pad), **attrs)
        if isinstance(m, Zero):
            return self.zero(x, m.stride)
        raise BitnasError(f"ONNX export: no ONNX form for module {type(m).__name__}")

    def plan(self, p: Plan, x: str, post: str | None = None) -> str | None:
        """The output of plan `p` on `x` (+ `post`), or None for a zero op without `post`."""
        if isinstance(p, ZeroPlan):
            return post
        if isinstance(p, IdentityPlan):
            out = x
        elif isinstance(p, ChainPlan):
            return self.chain(p.steps, x, post)
        elif isinstance(p, ReducePlan):
            return self.reduce(p, x, post)
        elif isinstance(p, PostAddPlan):
            return self.chain(p.main.steps, x, self.torch_module(p.side, x))
        elif isinstance(p, ConcatPlan):
            h = self.plan(p.first, x)
            outs = [self.chain(c.steps, h) for c in p.chains]
            out = outs[0] if len(outs) == 1 else self.op("Concat", outs, axis=1)
        elif isinstance(p, SequencePlan):
            out = x
            for q in p.parts:
                out = self.plan(q, out)
        else:
            out = self.torch_module(p.module, x)
        return out if post is None else self.op("Add", [out, post])

    def cell(self, cell: nn.Module, name: str, s0: str, s1: str) -> str:
        states = [self.plan(describe(cell.preprocess0, f"{name}.preprocess0"), s0),
                  self.plan(describe(cell.preprocess1, f"{name}.preprocess1"), s1)]
        for i in range(cell.steps):
            a, b = 2 * i, 2 * i + 1
            pa = describe(cell.ops[a], f"{name}.ops.{a}")
            pb = describe(cell.ops[b], f"{name}.ops.{b}")
            ha = self.plan(pa, states[cell.indices[a]])
            h = self.plan(pb, states[cell.indices[b]], ha)
            if h is None:  # both ops are `none`: zeros of the op's shape
                h = self.zero(states[cell.indices[b]], cell.ops[b].stride)
            states.append(h)
        return self.op("Concat", [states[k] for k in cell.concat], axis=1)

    def network(self, model: nn.Module) -> str:
        x = INPUT
        if hasattr(model, "stem_forward"):
            if hasattr(model, "stem0"):
                s0 = self.torch_module(model.stem0, x)
                s1 = self.torch_module(model.stem1, s0)
            else:
                s0 = s1 = self.torch_module(model.stem, x)
            for i, cell in enumerate(model.cells):
                s0, s1 = s1, self.cell(cell, f"cells.{i}", s0, s1)
            h = s1
        else:
            h = self.torch_module(model.stem, x)
            for i, cell in enumerate(model.cells):
                h = self.plan(describe(cell, f"cells.{i}"), h)
        pooled = self.op("Flatten", [self.op("GlobalAveragePool", [h])], axis=1)
        fc = model.classifier
        return self.op("Gemm", [pooled, self.const(fc.weight.detach().numpy(), hint="classifier.weight"),
                                self.const(fc.bias.detach().numpy(), hint="classifier.bias")], transB=1)


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def metadata(exp: dict[str, Any], form: str) -> dict[str, str]:
    """The model's metadata_props: input normalisation, classes, architecture, form (JSON values)."""
    return {f"{META_PREFIX}input": json.dumps(exp["input"]), f"{META_PREFIX}arch": json.dumps(exp["arch"]),
            f"{META_PREFIX}ops": json.dumps(exp["ops"]), f"{META_PREFIX}form": form,
            f"{META_PREFIX}classes": json.dumps(exp["input"].get("classes")),
            f"{META_PREFIX}mean": json.dumps(exp["input"].get("mean")),
            f"{META_PREFIX}std": json.dumps(exp["input"].get("std"))}


def onnx_model(exp: dict[str, Any], model: nn.Module, form: str = "qdq") -> Any:
    """The ONNX ModelProto of export `exp` whose float network is `model`; checked with full shape
    inference before it is returned."""
    from onnx import TensorProto, checker, helper

    b = OnnxBuilder(exp, form)
    logits = b.network(model.eval())
    if b.binary_convs != len(exp["binary"]):
        raise BitnasError(f"ONNX export: {len(exp['binary']) - b.binary_convs} binary convs have no exact ONNX form "
                          "(a user-defined quantizer?)")
    inp = exp["input"]
    size = inp.get("image_size")
    shape = ["batch", inp["in_channels"], size or "height", size or "width"]
    num_classes = int(model.classifier.out_features)
    b.nodes[-1].output[0] = OUTPUT
    del logits
    graph = helper.make_graph(b.nodes, "bitnas", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", num_classes])],
                              b.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="bitnas",
                          doc_string="1-bit network exported by bitnas: binary convs exact (±1 int8 inputs and "
                                     "weights, float count), input normalised with metadata bitnas.mean/std")
    m.ir_version = 8
    helper.set_model_props(m, metadata(exp, form))
    checker.check_model(m, full_check=True)
    return m
