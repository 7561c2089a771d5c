"""Pointwise functions of one int8 tensor as a 256-entry table.

An element-wise function f of one quantized tensor x (Sigmoid, Tanh, GELU in its Erf or tanh form,
SiLU x * sigmoid(x), HardSwish x * clip(x + 3, 0, 6) / 6, Elu, Softplus, ... and any composition
of them with scalar constants) sees at most 256 distinct inputs. So

    Q(f(DQ(x))) = T[x - q_min]        T[i] = clamp(round(f(s_x * (q_min + i - z_x)) / s_y) + z_y, lo, hi)

with T computed at compile time in float32, as onnxruntime evaluates the QDQ graph (dequantize,
the float ops, quantize), and the whole chain becomes one gather from a constant table. The
clamp's [lo, hi] includes the activations folded at the quantize site.

The table is a fallback of the site (``also``): an Add or Clip heading the chain is first tried
as an affine sum, and only a chain that is not one becomes a table.
"""

from __future__ import annotations

import math

import numpy as np

from ... import compat
from ...compat import R
from ..ir import QRANGE, Plan, scalar
from ..registry import SiteRule, rule

_F = np.float32
_erf = np.vectorize(math.erf, otypes=[np.float64])


def _sigmoid(x):
    return (_F(1) / (_F(1) + np.exp(-x))).astype(_F)


def _gelu(x):
    return (_F(0.5) * x * (_F(1) + _erf(x.astype(np.float64) / math.sqrt(2.0)).astype(_F))).astype(_F)


def _gelu_tanh(x):
    inner = _F(math.sqrt(2.0 / math.pi)) * (x + _F(0.044715) * x * x * x)
    return (_F(0.5) * x * (_F(1) + np.tanh(inner))).astype(_F)


def _clip(call, x):
    lo, hi = compat.prim_value(call.args[1]), compat.prim_value(call.args[2])
    return np.clip(x, _F(lo), _F(hi))


def _leaky(call, x):
    a = _F(float(call.attrs.alpha))
    return np.where(x >= 0, x, a * x).astype(_F)


# Relax op -> float32 numpy function of (call, operand values): the ops a table may contain
UNARY = {
    "relax.sigmoid": _sigmoid, "relax.tanh": np.tanh, "relax.exp": np.exp, "relax.log": np.log,
    "relax.sqrt": np.sqrt, "relax.rsqrt": lambda x: _F(1) / np.sqrt(x), "relax.abs": np.abs,
    "relax.negative": np.negative, "relax.erf": lambda x: _erf(x.astype(np.float64)).astype(_F),
    "relax.nn.gelu": _gelu, "relax.nn.gelu_tanh": _gelu_tanh, "relax.nn.silu": lambda x: x * _sigmoid(x),
    "relax.nn.relu": lambda x: np.maximum(x, _F(0)), "relax.floor": np.floor, "relax.ceil": np.ceil,
    "relax.round": np.round, "relax.sin": np.sin, "relax.cos": np.cos, "relax.square": np.square,
    "relax.nn.softplus": lambda x: np.log1p(np.exp(x)),
}
WITH_CALL = {"relax.clip": _clip, "relax.nn.leakyrelu": _leaky}
BINARY = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide,
    "relax.power": np.power, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
    "call_tir:maximum": np.maximum, "call_tir:minimum": np.minimum,
}
MAX_NODES = 64


class _NotPointwise(Exception):
    pass


def pointwise_chain(low, g):
    """(leaf view, f) where g = f(DQ(leaf)) element-wise with scalar constants only, else a reason."""
    leaf: list = []
    memo: dict = {}
    count = [0]

    def build(expr):
        if isinstance(expr, compat.Var) and expr in memo:
            return memo[expr]
        count[0] += 1
        if count[0] > MAX_NODES:
            raise _NotPointwise(f"pointwise chain of more than {MAX_NODES} ops")
        fn = _build(expr)
        if isinstance(expr, compat.Var):
            memo[expr] = fn
        return fn

    def _build(expr):
        # (TVM objects: compare with ==, the same node can come back as another Python object)
        if isinstance(expr, compat.Var) and not expr.same_as(g) and low.view(expr) is not None:
            if leaf and not leaf[0].same_as(expr):
                raise _NotPointwise("a pointwise chain of two quantized tensors")
            leaf[:] = [expr]
            return lambda x: x
        c = low.cval(expr)
        if c is not None:
            v = scalar(c)
            if v is None:
                raise _NotPointwise("a pointwise chain with a non-scalar constant")
            return lambda x, v=_F(v): v
        call = low.value(expr)
        name = compat.op_name(call)
        if name in UNARY:
            a, f = build(call.args[0]), UNARY[name]
            return lambda x: f(a(x)).astype(_F)
        if name in WITH_CALL:
            a, f = build(call.args[0]), WITH_CALL[name]
            return lambda x: f(call, a(x)).astype(_F)
        if name in BINARY:
            args = compat.call_tir_args(call) if name.startswith("call_tir:") else list(call.args)
            if len(args) != 2:
                raise _NotPointwise(f"{name} with {len(args)} operands")
            a, b, f = build(args[0]), build(args[1]), BINARY[name]
            return lambda x: np.asarray(f(a(x), b(x)), _F)
        if name == "relax.astype" and str(call.attrs.dtype) == "float32":
            return build(call.args[0])
        raise _NotPointwise(f"{name or type(call).__name__} is not element-wise")

    try:
        f = build(g)
    except _NotPointwise as exc:
        return str(exc)
    if not leaf:
        return "constant expression"
    if compat.tensor_shape(g) != compat.tensor_shape(leaf[0]):
        return "the pointwise chain broadcasts its input"
    if low.view(leaf[0]).dtype not in ("int8", "uint8"):
        return f"pointwise chain of {low.view(leaf[0]).dtype} codes (tables are 256-entry, int8 / uint8 inputs)"
    return low.view(leaf[0]), f


def table(view, f, site) -> np.ndarray:
    """T[i] = Q(f(DQ(q_min + i))) over the input type's range (the module docstring)."""
    q_lo, q_hi = QRANGE[view.dtype]
    q = np.arange(q_lo, q_hi + 1, dtype=np.int32)
    x = (q - np.int32(view.zp)).astype(_F) * _F(view.scale)
    with np.errstate(all="ignore"):
        y = np.broadcast_to(np.asarray(f(x), _F), x.shape)
        r = np.round(y / _F(site.scale))
    # NaN (log / sqrt of a negative) quantizes to the type's minimum, as in onnxruntime
    r = np.clip(np.nan_to_num(r + site.zp, nan=-1e9, posinf=1e9, neginf=-1e9), site.lo, site.hi)
    return r.astype(site.dtype)


@rule
class PointwiseTable(SiteRule):
    """Q(f(DQ(x))) = T[x - q_min] for an element-wise f of one quantized tensor (module docstring)."""
    pattern = tuple(sorted(set(UNARY) - {"relax.nn.relu"} | {"relax.nn.leakyrelu", "relax.subtract", "relax.power"}))
    also = ("relax.add", "relax.multiply", "relax.divide", "relax.clip", "relax.nn.relu", "relax.maximum", "relax.minimum",
            "call_tir:maximum", "call_tir:minimum")
    onnx = ("Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Mish", "LeakyRelu", "Elu", "Selu",
            "Celu", "Softplus", "Softsign", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Sin", "Cos",
            "Floor", "Ceil", "Round", "Pow", "Div", "Sub", "Mul")
    lowers_to = "one `take` from a 256-entry int8/uint8 table computed at compile time"
    conditions = ("an element-wise chain (with scalar constants) of one tensor quantized per tensor, "
                  "feeding a QuantizeLinear: SiLU, HardSwish, GELU ... as one table")

    def check(self, low, call, var):
        found = pointwise_chain(low, var)
        return found if isinstance(found, str) else None

    def rewrite(self, low, call, var, site, absorbed) -> Plan:
        view, f = pointwise_chain(low, var)
        lut = compat.const(table(view, f, site))
        q_lo = QRANGE[view.dtype][0]

        def emit(e, view=view):
            idx = e.emit(R.astype(e.view_expr(view), "int32"))
            if q_lo:
                idx = e.emit(R.subtract(idx, compat.const(np.int32(q_lo))))
            return R.take(lut, idx, axis=0, mode="clip")   # in range by construction; "fast" warns

        inside = _chain_vars(low, var, view.var)
        chain = [v for v in low.index.order if v in inside]
        return Plan(site.var, emit, list(view.sources), absorbed + chain, ["lookup_table"])


def _chain_vars(low, top, leaf) -> set:
    """The vars of the chain from `leaf` (exclusive) up to `top` (the float chain the table replaces)."""
    out, stack = set(), [top]
    while stack:
        v = stack.pop()
        if not isinstance(v, compat.Var) or v.same_as(leaf) or v in out or v not in low.bindings:
            continue
        if low.cval(v) is not None or low.view(v) is not None:
            continue
        out.add(v)
        val = low.value(v)
        if isinstance(val, compat.Call):
            name = compat.op_name(val)
            stack.extend(compat.call_tir_args(val) if name and name.startswith("call_tir:") else list(val.args))
        elif isinstance(val, compat.Var):
            stack.append(val)
    return out
