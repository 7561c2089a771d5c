"""QDQ -> integer: qcc's rewrite of TVM's fake-quantized Relax into integer Relax.

TVM's ONNX frontend imports a QDQ graph literally: every quantized layer is

    x_f = R.dequantize(x_q, s_x, zp_x)             (int8 / uint8 activation -> float)
    w_f = R.dequantize(w_q, s_w, 0, axis=0)        (constant int8 weight, per-channel scales)
    b_f = R.dequantize(b_q, s_x * s_w, 0)          (constant int32 bias)
    y_f = R.nn.conv2d(x_f, w_f) + b_f  (-> relu / clip)
    y_q = R.quantize(y_f, s_y, zp_y)

so all arithmetic runs in float. This pass walks the bindings of ``main`` and replaces every
``R.quantize`` whose float input it can express exactly in integers by integer code:

    acc = R.nn.conv2d(x_q, w_q, out_dtype="int32")         (uint8/int8 x int8 -> int32)
    acc = acc + (b_q - zp_x * sum(w_q))                     (int32 bias; zero point folded in)
    y_q = clamp(round_half_even(float32(acc) * float32(m)) + zp_y, lo, hi)   (fixedpoint.py)

with ``m = s_x * s_w[c] / s_y`` and the activation folded into the clamp (Relu: lo = zp_y; Clip(a, b):
lo/hi = Q(a)/Q(b)); sums of several requantized terms (residual Add) use int64 fixed point instead.
The float chain is left in place and removed by dead-code elimination. A float tensor known to be
``dequantize(int tensor)`` is a *view*; layout ops and max pooling of a view are views too, so
``Q(reshape(DQ(x)))`` with equal parameters becomes ``reshape(x)`` on integers. The value a rule
computes is an *affine sum* ``sum_i m_i * (t_i + k_i) + offset`` of integer terms ``t_i`` with real
multipliers ``m_i``, integer constants ``k_i`` and a real ``offset``; a quantize site requantizes it,
and a quantized layer whose output is consumed in float (the final Gemm of a classifier) converts
it to float32 instead (``float(acc + k) * m + offset``). Whatever matches no rule keeps TVM's
dequantize -> float op -> quantize and is reported as a float fallback.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import compat
from .compat import R, relax
from .fixedpoint import (common_shift_multipliers, float_scale, offset_fixed, quantize_multiplier,
                         quantize_scalar)

QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}
# Single-term requantize in float32, in the order of onnxruntime's MLAS (fixedpoint.py); False: int64
# fixed point (31-bit multipliers) everywhere: the same results within one step, a slower epilogue.
FLOAT_REQUANTIZE = True

# The rules of the rewrite, keyed by the Relax op TVM's frontend makes of each ONNX op. The dispatch
# below reads these tables, and docs/operator_coverage.md is generated from them (coverage.py).
#
# Views: ops that only move data (or take a max). With a positive scale they commute with
# dequantize, so op(DQ(x)) == DQ(op(x)) exactly and run on the integers.
VIEW_RULES = {
    "relax.reshape": (("Reshape", "Flatten"), "on int8/uint8 (same scale and zero point)"),
    "relax.permute_dims": (("Transpose",), "on int8/uint8"),
    "relax.expand_dims": (("Unsqueeze",), "on int8/uint8"),
    "relax.squeeze": (("Squeeze",), "on int8/uint8"),
    "relax.flatten": (("Flatten",), "on int8/uint8"),
    "relax.strided_slice": (("Slice",), "on int8/uint8"),
    "relax.nn.max_pool2d": (("MaxPool",), "on int8/uint8 (max commutes with a positive scale)"),
    "relax.image.resize2d": (("Resize", "Upsample"), "mode=nearest on int8/uint8; linear / cubic stay float"),
}
VIEW_OPS = set(VIEW_RULES)
# Activations folded into the requantization clamp: Q(relu(v)) = max(Q(v), zp_y), Q(clip(v, a, b)) =
# clip(Q(v), Q(a), Q(b)) (Q is monotone). Clip imports as maximum / minimum call_tir.
CLAMP_RULES = {
    "relax.nn.relu": (("Relu",), "folded into the clamp: low bound zp_y"),
    "relax.clip": (("Clip",), "folded into the clamp: [Q(a), Q(b)]"),
    "relax.maximum": (("Max",), "with a constant scalar: folded into the clamp"),
    "relax.minimum": (("Min",), "with a constant scalar: folded into the clamp"),
    "call_tir:maximum": (("Clip",), "Clip(min) as the frontend emits it: folded into the clamp"),
    "call_tir:minimum": (("Clip",), "Clip(max) as the frontend emits it: folded into the clamp"),
}
CLAMP_OPS = set(CLAMP_RULES)
# Arithmetic: ops whose result is an integer affine sum (requantized at a QuantizeLinear, or
# converted to float32 when the layer's output is consumed in float, e.g. the logits Gemm).
AFFINE_RULES = {
    "relax.nn.conv2d": (("Conv",), "uint8/int8 x int8 -> int32 conv2d, incl. depthwise / grouped; "
                        "zp_x * sum(w) folded into the int32 bias (input padded with zp_x where "
                        "needed); per-channel float32 requantization (MLAS order)"),
    "relax.nn.conv2d_transpose": (("ConvTranspose",), "uint8/int8 x int8 -> int32 (int32 x int32 after "
                                  "subtracting zp_x when zp_x != 0)"),
    "relax.matmul": (("MatMul", "Gemm"), "activation x constant int8 weight -> int32 (zp_x * colsum(w) in "
                     "the bias); activation x activation -> int32 with row / column-sum zero-point "
                     "corrections (attention)"),
    "relax.add": (("Add",), "two quantized inputs: one int64 fixed-point sum with a shared shift; a "
                  "constant addend (bias of MatMul, paddle's Add(conv, c)): int32 bias or fixed-point offset"),
    "relax.mean": (("GlobalAveragePool", "ReduceMean"), "int32 sum over static axes, requantized by "
                   "s_x / (s_y * N)"),
    "relax.nn.avg_pool2d": (("AveragePool",), "int32 window sum (depthwise conv with a ones kernel), "
                            "per-position divisor (count_include_pad / padding / ceil_mode) in the "
                            "fixed-point multiplier"),
    "relax.concat": (("Concat",), "each input requantized to the output scale (a no-op when equal)"),
}
SHAPE_ONLY_DTYPES = {"int64", "int32", "bool"}
# FP8 QDQ graphs: qcc's encode / decode calls (fp8.py); the ops between them compute in float
FP8_OP_PREFIX = "call_tir:qcc_fp8_"
FP8_FLOAT = "FP8 fake quantization: float compute between qcc's exact FP8 encode / decode"


class NoMatch(Exception):
    """A rule does not apply; the message says why (it ends up in the float-fallback report)."""


@dataclass
class View:
    """A float tensor that equals dequantize(int tensor) exactly (scalar scale and zero point)."""
    var: object                   # the original Relax var holding the float value
    emit: Callable                # (emitter) -> integer Relax expr
    scale: float
    zp: int
    dtype: str
    sources: list                 # original int vars the emission reads
    ops: list = field(default_factory=list)   # layout ops applied on the way (for the op counts)


@dataclass
class Term:
    emit: Callable                # (emitter) -> integer Relax expr (int32 accumulator or a view)
    m: np.ndarray                 # real multiplier, broadcastable to the output (float64)
    k: np.ndarray                 # integer offset in term units, broadcastable (int64)
    sources: list
    kind: str                     # conv2d / matmul / view / mean / ...


@dataclass
class Affine:
    """real value = sum_i m_i * (t_i + k_i) + offset"""
    terms: list
    offset: np.ndarray | None     # real, broadcastable (float64)
    rank: int                     # output rank (for broadcasting the constant arrays)
    absorbed: list                # float vars this affine sum replaces


@dataclass
class Plan:
    var: object
    emit: Callable                # (emitter) -> Relax expr with the same type as var
    sources: list
    absorbed: list
    kinds: list                   # integer op kinds, for info["integer_ops"]


def _rank_array(a, rank: int) -> np.ndarray:
    """Left-pad the shape of a constant with 1s to `rank` dims (numpy broadcasting from the right)."""
    a = np.asarray(a)
    if a.ndim > rank:
        squeezed = a.reshape(a.shape[a.ndim - rank:]) if all(d == 1 for d in a.shape[:a.ndim - rank]) else None
        if squeezed is None:
            raise NoMatch(f"constant of shape {a.shape} does not broadcast to rank {rank}")
        return squeezed
    return a.reshape((1,) * (rank - a.ndim) + a.shape)


def _trim(a: np.ndarray) -> np.ndarray:
    """Drop leading broadcast dims of a constant (keeps the emitted constants small)."""
    a = np.asarray(a)
    while a.ndim > 0 and a.shape[0] == 1:
        a = a.reshape(a.shape[1:])
    return a


def _scalar(a) -> float | None:
    a = np.asarray(a)
    if a.size == 1:
        return a.reshape(()).item()
    if a.size > 1 and np.all(a == a.reshape(-1)[0]):
        return a.reshape(-1)[0].item()
    return None


def _conv_transpose_ones(wq: np.ndarray, groups: int, attrs: dict, in_hw, out_hw) -> np.ndarray:
    """conv2d_transpose(ones[C, H, W], w) as an int64 [O, Ho, Wo] map (numpy)."""
    I, Og, kh, kw = wq.shape
    wsum = wq.astype(np.int64).reshape(groups, I // groups, Og, kh, kw).sum(axis=1).reshape(groups * Og, kh, kw)
    (H, W), (Ho, Wo) = in_hw, out_hw
    sh, sw = attrs["strides"]
    dh, dw = attrs["dilation"]
    top, left = attrs["padding"][0], attrs["padding"][1]
    out = np.zeros((groups * Og, Ho, Wo), np.int64)
    for a in range(kh):
        ys = np.arange(H) * sh + a * dh - top
        ys = ys[(ys >= 0) & (ys < Ho)]
        for b in range(kw):
            xs = np.arange(W) * sw + b * dw - left
            xs = xs[(xs >= 0) & (xs < Wo)]
            out[:, ys[:, None], xs[None, :]] += wsum[:, a, b][:, None, None]
    return out


class Lowering:
    """Analysis of one Relax module: which bindings become integer code, and how."""

    def __init__(self, mod):
        self.mod = mod
        self.func = mod["main"]
        self.bindings: dict = {}          # var -> bound value
        self.order: list = []             # vars in binding order
        self.uses: Counter = Counter()
        self._const_cache: dict = {}
        self._view_cache: dict = {}
        self.plans: dict = {}             # var -> Plan
        self.reasons: dict = {}           # var -> why its quantize (or the op feeding it) stays float
        for block in self.func.body.blocks:
            for b in block.bindings:
                self.bindings[b.var] = b.value
                self.order.append(b.var)
                self._count_uses(b.value)
        self._count_uses(self.func.body.body)

    # ------------------------------------------------------------------ generic helpers
    def _count_uses(self, expr) -> None:
        if isinstance(expr, compat.Var):
            self.uses[expr] += 1
        elif isinstance(expr, compat.Call):
            for a in expr.args:
                self._count_uses(a)
        elif isinstance(expr, relax.Tuple):
            for f in expr.fields:
                self._count_uses(f)
        elif isinstance(expr, relax.TupleGetItem):
            self._count_uses(expr.tuple_value)
        elif isinstance(expr, relax.MatchCast):
            self._count_uses(expr.value)

    def value(self, expr):
        """The bound value of a var (following var-to-var aliases), else the expr itself."""
        seen = 0
        while isinstance(expr, compat.Var) and expr in self.bindings and seen < 64:
            nxt = self.bindings[expr]
            if not isinstance(nxt, (compat.Var, compat.Call, relax.Tuple, compat.Constant)):
                break
            expr = nxt
            seen += 1
        return expr

    def op_of(self, expr) -> str | None:
        return compat.op_name(self.value(expr))

    def single_use(self, var) -> bool:
        return not isinstance(var, compat.Var) or self.uses[var] == 1

    def cval(self, expr, depth: int = 0) -> np.ndarray | None:
        """Evaluate a constant sub-expression with numpy (None if it is not constant)."""
        if depth > 32:
            return None
        key = expr if isinstance(expr, compat.Var) else None
        if key is not None and key in self._const_cache:
            return self._const_cache[key]
        out = self._cval(expr, depth)
        if key is not None:
            self._const_cache[key] = out
        return out

    def _cval(self, expr, depth):
        c = compat.const_numpy(expr)
        if c is not None:
            return c
        if isinstance(expr, compat.Var):
            if expr not in self.bindings:
                return None
            return self.cval(self.bindings[expr], depth + 1)
        if not isinstance(expr, compat.Call):
            return None
        name = compat.op_name(expr)
        args = list(expr.args)

        def arg(i):
            return self.cval(args[i], depth + 1)

        try:
            if name == "relax.dequantize":
                q, s, z = arg(0), arg(1), arg(2)
                if q is None or s is None or z is None:
                    return None
                s, z = self._qparam_broadcast(s, z, int(expr.attrs.axis), q.ndim)
                return (q.astype(np.float64) - z.astype(np.float64)) * s.astype(np.float64)
            if name in ("relax.reshape",):
                x = arg(0)
                shape = getattr(args[1], "values", None)
                if x is None or shape is None:
                    return None
                return x.reshape([int(v) for v in shape])
            if name == "relax.permute_dims":
                x = arg(0)
                axes = expr.attrs.axes
                return None if x is None else np.transpose(x, None if axes is None else compat.int_tuple(axes))
            if name == "relax.expand_dims":
                x = arg(0)
                return None if x is None else np.expand_dims(x, tuple(compat.int_tuple(expr.attrs.axis)))
            if name == "relax.squeeze":
                x = arg(0)
                ax = expr.attrs.axis
                return None if x is None else np.squeeze(x, None if ax is None else tuple(compat.int_tuple(ax)))
            if name == "relax.astype":
                x = arg(0)
                return None if x is None else x.astype(str(expr.attrs.dtype))
            if name == "relax.isnan":
                x = arg(0)
                return None if x is None else np.isnan(x)
            if name == "relax.negative":
                x = arg(0)
                return None if x is None else -x
            if name == "relax.where":
                c, a, b = arg(0), arg(1), arg(2)
                return None if c is None or a is None or b is None else np.where(c, a, b)
            if name in ("relax.add", "relax.subtract", "relax.multiply", "relax.divide"):
                a, b = arg(0), arg(1)
                if a is None or b is None:
                    return None
                fn = {"relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply,
                      "relax.divide": np.divide}[name]
                return fn(a, b)
        except (ValueError, TypeError):
            return None
        return None

    @staticmethod
    def _qparam_broadcast(s, z, axis, ndim):
        s = np.asarray(s)
        z = np.asarray(z)
        if s.size > 1:
            axis = axis % ndim
            shape = [1] * ndim
            shape[axis] = -1
            s = s.reshape(shape)
            z = z.reshape(shape) if z.size > 1 else z.reshape(())
        else:
            s = s.reshape(())
            z = z.reshape(())
        return s, z

    # ------------------------------------------------------------------ views and weights
    def view(self, expr) -> View | None:
        if isinstance(expr, compat.Var) and expr in self._view_cache:
            return self._view_cache[expr]
        v = self._view(expr)
        if isinstance(expr, compat.Var):
            self._view_cache[expr] = v
        return v

    def _view(self, expr) -> View | None:
        if not isinstance(expr, compat.Var):
            return None
        val = self.bindings.get(expr)
        if val is None:
            return None
        name = compat.op_name(val)
        if name == "relax.dequantize":
            src = val.args[0]
            dt = compat.tensor_dtype(src)
            if dt not in QRANGE or compat.const_numpy(src) is not None:
                return None
            s, z = self.cval(val.args[1]), self.cval(val.args[2])
            if s is None or z is None:
                return None
            s, z = _scalar(s), _scalar(z)
            if s is None or z is None or not s > 0:
                return None      # per-channel activation scales: no view
            return View(expr, lambda e, src=src: e.source(src), float(np.float32(s)), int(z), dt, [src])
        if name in VIEW_OPS:
            inner = self.view(val.args[0])
            if inner is None:
                return None
            if name == "relax.image.resize2d" and str(val.attrs.method) != "nearest_neighbor":
                return None
            if name == "relax.nn.max_pool2d" and inner.scale <= 0:
                return None
            call = val
            op_short = name.split(".")[-1]

            def emit(e, call=call, inner=inner):
                data = e.view_expr(inner)
                if compat.op_name(call) == "relax.image.resize2d":
                    a = call.attrs
                    return R.image.resize2d(data, call.args[1], roi=[float(r) for r in a.roi],
                                            layout=str(a.layout), method=str(a.method),
                                            coordinate_transformation_mode=str(a.coordinate_transformation_mode),
                                            rounding_method=str(a.rounding_method),
                                            cubic_alpha=float(a.cubic_alpha), cubic_exclude=int(a.cubic_exclude),
                                            extrapolation_value=float(a.extrapolation_value))
                return compat.rebuild_call(call, [data] + [e.remap(x) for x in call.args[1:]])

            return View(expr, emit, inner.scale, inner.zp, inner.dtype, inner.sources, inner.ops + [op_short])
        return None

    def weight(self, expr):
        """A constant dequantized weight: (q int array, scale, zp) with scale / zp broadcastable to q."""
        val = self.value(expr)
        name = compat.op_name(val)
        if name == "relax.dequantize":
            q = self.cval(val.args[0])
            s, z = self.cval(val.args[1]), self.cval(val.args[2])
            if q is None or s is None or z is None or q.dtype.kind not in "iu":
                return None
            s, z = self._qparam_broadcast(s, z, int(val.attrs.axis), q.ndim)
            return q, s.astype(np.float64), z.astype(np.int64)
        if name == "relax.permute_dims":
            inner = self.weight(val.args[0])
            if inner is None:
                return None
            q, s, z = inner
            axes = val.attrs.axes
            axes = list(range(q.ndim))[::-1] if axes is None else compat.int_tuple(axes)
            t = lambda a: np.transpose(a, axes) if a.ndim == q.ndim else a  # noqa: E731
            return np.transpose(q, axes), t(s), t(z)
        return None

    # ------------------------------------------------------------------ affine sums
    def affine(self, expr, top: bool = True) -> Affine:
        """Parse a float expression into an integer affine sum (raises NoMatch with a reason)."""
        val = self.value(expr)
        name = compat.op_name(val)
        out_shape = compat.tensor_shape(expr)
        if out_shape is None:
            raise NoMatch("unknown output shape")
        rank = len(out_shape)
        v = self.view(expr) if isinstance(expr, compat.Var) else None
        if v is not None:
            return Affine([Term(lambda e, v=v: e.view_expr(v), np.array(v.scale, np.float64),
                                np.array(-v.zp, np.int64), v.sources, "view")], None, rank, [])
        if not self.single_use(expr) and not top:
            raise NoMatch("intermediate result has several consumers")
        if name == "relax.add":
            a, b = val.args
            ca, cb = self.cval(a), self.cval(b)
            if ca is not None and cb is not None:
                raise NoMatch("constant expression")
            if ca is not None or cb is not None:
                c_expr, other = (a, b) if ca is not None else (b, a)
                inner = self.affine(other, top=False)
                return self._add_constant(inner, c_expr, rank, expr)
            va, vb = self.view(a), self.view(b)
            if va is None or vb is None:
                raise NoMatch("Add of a non-quantized operand")
            terms = []
            for vv in (va, vb):
                terms.append(Term(lambda e, vv=vv: e.view_expr(vv), np.array(vv.scale, np.float64),
                                  np.array(-vv.zp, np.int64), vv.sources, "add"))
            return Affine(terms, None, rank, [expr])
        handler = {"relax.nn.conv2d": self._conv2d, "relax.nn.conv2d_transpose": self._conv2d_transpose,
                   "relax.matmul": self._matmul, "relax.mean": self._mean,
                   "relax.nn.avg_pool2d": self._avg_pool2d}.get(name)
        if handler is not None and name in AFFINE_RULES:
            return handler(val, expr, rank)
        raise NoMatch(f"no integer lowering for {name or type(val).__name__}")

    def _add_constant(self, inner: Affine, c_expr, rank: int, expr) -> Affine:
        c = self.cval(c_expr)
        c_r = _rank_array(c.astype(np.float64), rank)
        # an int32 bias read through dequantize(b_q, s_x * s_w): exact integer add to the accumulator
        bias = self._int_bias(c_expr)
        if bias is not None and len(inner.terms) == 1 and inner.terms[0].kind != "view":
            bq, bs = bias
            t = inner.terms[0]
            bq_r, bs_r = _rank_array(bq, rank), _rank_array(bs, rank)
            try:
                m_b, bs_b = np.broadcast_arrays(_rank_array(t.m, rank), bs_r)
            except ValueError:
                m_b = bs_b = None
            if m_b is not None and np.allclose(bs_b, m_b, rtol=1e-6, atol=0):
                k = np.broadcast_arrays(_rank_array(t.k, rank), bq_r)
                new_t = Term(t.emit, t.m, k[0] + k[1], t.sources, t.kind)
                return Affine([new_t], inner.offset, rank, inner.absorbed + [expr])
        off = c_r if inner.offset is None else _rank_array(inner.offset, rank) + c_r
        return Affine(inner.terms, off, rank, inner.absorbed + [expr])

    def _int_bias(self, expr):
        """(b_q, scale) if expr is [reshape of] dequantize(int32 constant, scale, 0)."""
        val = self.value(expr)
        shape = None
        if compat.op_name(val) == "relax.reshape":
            shape = getattr(val.args[1], "values", None)
            if shape is None:
                return None
            shape = [int(s) for s in shape]
            val = self.value(val.args[0])
        if compat.op_name(val) != "relax.dequantize":
            return None
        q, s, z = self.cval(val.args[0]), self.cval(val.args[1]), self.cval(val.args[2])
        if q is None or s is None or z is None or q.dtype != np.int32 or np.any(z != 0):
            return None
        s, _ = self._qparam_broadcast(s, z, int(val.attrs.axis), q.ndim)
        s = np.broadcast_to(s, q.shape).astype(np.float64)
        q = q.astype(np.int64)
        if shape is not None:
            q, s = q.reshape(shape), s.reshape(shape)
        return q, s

    def _act(self, expr, what: str) -> View:
        v = self.view(expr)
        if v is None:
            raise NoMatch(f"{what}: input is not a quantized tensor")
        return v

    def _conv2d(self, val, expr, rank) -> Affine:
        a = val.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            raise NoMatch("conv2d layout other than NCHW/OIHW")
        x = self._act(val.args[0], "conv2d")
        w = self.weight(val.args[1])
        if w is None:
            raise NoMatch("conv2d weight is not a constant quantized tensor")
        wq, ws, wz = w
        if np.any(wz != 0):
            raise NoMatch("conv2d weight with a nonzero zero point")
        if wq.dtype != np.int8:
            raise NoMatch(f"conv2d weight dtype {wq.dtype}")
        O = wq.shape[0]
        sw = np.broadcast_to(ws, wq.shape)
        if not np.all(sw == sw[:, :1, :1, :1]):
            raise NoMatch("conv2d weight scale varies along a non-output axis")
        sw = sw[:, 0, 0, 0].astype(np.float64)
        padding = compat.int_tuple(a.padding)
        strides, dilation, groups = compat.int_tuple(a.strides), compat.int_tuple(a.dilation), int(a.groups)
        sum_w = wq.reshape(O, -1).astype(np.int64).sum(axis=1)
        zx = x.zp
        pad_first = zx != 0 and any(padding)
        wconst = compat.const(wq, "int8")

        def emit(e, x=x, padding=padding):
            data = e.view_expr(x)
            pads = padding
            if pad_first:
                top, left, bottom, right = padding
                data = e.emit(R.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx)))
                pads = [0, 0, 0, 0]
            return R.nn.conv2d(data, wconst, strides=strides, padding=pads, dilation=dilation, groups=groups,
                               out_dtype="int32")

        m = _rank_array((x.scale * sw).reshape(O, 1, 1), rank)
        k = _rank_array((-zx * sum_w).reshape(O, 1, 1), rank)
        kind = "conv2d" if groups == 1 else ("depthwise_conv2d" if wq.shape[1] == 1 else "grouped_conv2d")
        return Affine([Term(emit, m, k, x.sources, kind)], None, rank, [expr])

    def _conv2d_transpose(self, val, expr, rank) -> Affine:
        a = val.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "IOHW":
            raise NoMatch("conv2d_transpose layout other than NCHW/IOHW")
        x = self._act(val.args[0], "conv2d_transpose")
        w = self.weight(val.args[1])
        if w is None:
            raise NoMatch("conv2d_transpose weight is not a constant quantized tensor")
        wq, ws, wz = w
        if np.any(wz != 0) or wq.dtype != np.int8:
            raise NoMatch("conv2d_transpose weight not int8 with zero point 0")
        groups = int(a.groups)
        I, Og = wq.shape[0], wq.shape[1]
        O = Og * groups
        sw = np.broadcast_to(ws, wq.shape)
        # output channel o = g * Og + j reads weight[g*I/g:(g+1)*I/g, j]: the scale must be per j (axis 1)
        if not np.all(sw == sw[:1, :, :1, :1]):
            raise NoMatch("conv2d_transpose weight scale varies along a non-output axis")
        sw = np.tile(sw[0, :, 0, 0].astype(np.float64), groups)
        attrs = dict(strides=compat.int_tuple(a.strides), padding=compat.int_tuple(a.padding),
                     output_padding=compat.int_tuple(a.output_padding), dilation=compat.int_tuple(a.dilation),
                     groups=groups)
        zx = x.zp
        wconst = compat.const(wq, "int8")
        in_shape, out_shape = compat.tensor_shape(val.args[0]), compat.tensor_shape(expr)
        static = all(isinstance(d, int) for d in in_shape[2:] + out_shape[2:])
        k = np.zeros((1,) * rank, np.int64)
        if zx != 0 and static:
            # the zero-point term zp_x * conv_transpose(ones, w) depends on the output position
            # (borders, stride phase) but not on the data: a compile-time int32 map
            k = _rank_array(-zx * _conv_transpose_ones(wq, groups, attrs, in_shape[2:], out_shape[2:]), rank)
        w32 = compat.const(wq, "int32")

        def emit(e, x=x):
            data = e.view_expr(x)
            if zx != 0 and not static:
                # dynamic spatial dims: subtract the zero point on the input (int32 x int32)
                data = e.emit(R.subtract(R.astype(data, "int32"), compat.const(np.int32(zx))))
                return R.nn.conv2d_transpose(data, w32, out_dtype="int32", **attrs)
            return R.nn.conv2d_transpose(data, wconst, out_dtype="int32", **attrs)

        m = _rank_array((x.scale * sw).reshape(O, 1, 1), rank)
        return Affine([Term(emit, m, k, x.sources, "conv2d_transpose")], None, rank, [expr])

    def _matmul(self, val, expr, rank) -> Affine:
        a_expr, b_expr = val.args
        x = self._act(a_expr, "matmul")
        w = self.weight(b_expr)
        if w is not None:
            wq, ws, wz = w
            if wq.ndim != 2:
                raise NoMatch("matmul with a constant weight of rank != 2")
            if np.any(wz != 0) or wq.dtype != np.int8:
                raise NoMatch("matmul weight not int8 with zero point 0")
            K, N = wq.shape
            sw = np.broadcast_to(ws, wq.shape)
            if not np.all(sw == sw[:1, :]):
                raise NoMatch("matmul weight scale varies along K")
            sw = sw[0].astype(np.float64)
            colsum = wq.astype(np.int64).sum(axis=0)
            wconst = compat.const(np.ascontiguousarray(wq), "int8")

            def emit(e, x=x):
                return R.matmul(e.view_expr(x), wconst, out_dtype="int32")

            m = _rank_array(x.scale * sw, rank)
            k = _rank_array(-x.zp * colsum, rank)
            return Affine([Term(emit, m, k, x.sources, "matmul")], None, rank, [expr])
        y = self.view(b_expr)
        if y is None:
            raise NoMatch("matmul: second operand is neither a constant quantized weight nor a quantized tensor")
        b_shape = compat.tensor_shape(b_expr)
        if b_shape is None or len(b_shape) < 2 or not isinstance(b_shape[-2], int):
            raise NoMatch("matmul of two activations needs a static reduction dimension")
        K = b_shape[-2]
        za, zb = x.zp, y.zp

        def emit(e, x=x, y=y):
            # (a - za) @ (b - zb) = a @ b - zb * rowsum(a) - za * colsum(b) + K * za * zb
            a_i, b_i = e.view_expr(x), e.view_expr(y)
            acc = R.matmul(a_i, b_i, out_dtype="int32")
            if zb:
                acc = e.emit(acc)
                rs = e.emit(R.sum(R.astype(a_i, "int32"), axis=[-1], keepdims=True))
                acc = R.subtract(acc, R.multiply(rs, compat.const(np.int32(zb))))
            if za:
                acc = e.emit(acc)
                cs = e.emit(R.sum(R.astype(b_i, "int32"), axis=[-2], keepdims=True))
                acc = R.subtract(acc, R.multiply(cs, compat.const(np.int32(za))))
            return acc

        m = np.array(x.scale * y.scale, np.float64)
        k = np.array(K * za * zb, np.int64)
        return Affine([Term(emit, m, k, x.sources + y.sources, "matmul_int_x_int")], None, rank, [expr])

    def _mean(self, val, expr, rank) -> Affine:
        x = self._act(val.args[0], "mean")
        shape = compat.tensor_shape(val.args[0])
        axes = [int(v) % len(shape) for v in val.attrs.axis] if val.attrs.axis is not None else list(range(len(shape)))
        dims = [shape[i] for i in axes]
        if not all(isinstance(d, int) for d in dims):
            raise NoMatch("mean over a dynamic dimension")
        n = int(np.prod(dims))
        keep = bool(val.attrs.keepdims)

        def emit(e, x=x):
            return R.sum(R.astype(e.view_expr(x), "int32"), axis=axes, keepdims=keep)

        m = np.array(x.scale / n, np.float64)
        k = np.array(-x.zp * n, np.int64)
        return Affine([Term(emit, m, k, x.sources, "mean")], None, rank, [expr])

    def _avg_pool2d(self, val, expr, rank) -> Affine:
        a = val.attrs
        if str(a.layout) != "NCHW":
            raise NoMatch("avg_pool2d layout other than NCHW")
        x = self._act(val.args[0], "avg_pool2d")
        in_shape, out_shape = compat.tensor_shape(val.args[0]), compat.tensor_shape(expr)
        if not all(isinstance(d, int) for d in in_shape[1:]) or not all(isinstance(d, int) for d in out_shape[2:]):
            raise NoMatch("avg_pool2d needs static channel and spatial dimensions")
        C, H, W = in_shape[1:]
        Ho, Wo = out_shape[2:]
        kh, kw = compat.int_tuple(a.pool_size)
        sh, sw = compat.int_tuple(a.strides)
        dh, dw = compat.int_tuple(a.dilation)
        top, left, bottom, right = compat.int_tuple(a.padding)
        # count[i, j] = window elements inside the input (padding excluded)
        rows = np.array([sum(0 <= i * sh - top + r * dh < H for r in range(kh)) for i in range(Ho)])
        cols = np.array([sum(0 <= j * sw - left + c * dw < W for c in range(kw)) for j in range(Wo)])
        count = np.outer(rows, cols).astype(np.int64)
        divisor = np.full_like(count, kh * kw) if bool(a.count_include_pad) else count
        if np.any(divisor <= 0):
            raise NoMatch("avg_pool2d window entirely in the padding")
        ones = compat.const(np.ones((C, 1, kh, kw), np.int8))

        def emit(e, x=x):
            # the int32 window sum: a depthwise conv with an all-ones kernel (zero padding)
            return R.nn.conv2d(e.view_expr(x), ones, strides=[sh, sw], padding=[top, left, bottom, right],
                               dilation=[dh, dw], groups=C, out_dtype="int32")

        m = _rank_array((x.scale / divisor).astype(np.float64), rank)
        k = _rank_array(-x.zp * count, rank)
        # k is in *sum* units only where divisor == count; (t + k) * m is still exact: sum(x - zx) = t - zx*count
        return Affine([Term(emit, m, k, x.sources, "avg_pool2d")], None, rank, [expr])

    # ------------------------------------------------------------------ quantize sites
    def plan_quantize(self, var, call) -> Plan:
        s_y, z_y = self.cval(call.args[1]), self.cval(call.args[2])
        dtype = str(call.attrs.out_dtype)
        if dtype not in QRANGE:
            raise NoMatch(f"quantize to {dtype}")
        if s_y is None or z_y is None or _scalar(s_y) is None or _scalar(z_y) is None:
            raise NoMatch("per-channel or non-constant output quantization parameters")
        s_y, z_y = float(np.float32(_scalar(s_y))), int(_scalar(z_y))
        lo, hi = QRANGE[dtype]
        absorbed = []
        g = call.args[0]
        # fold Relu / Clip (and the frontend's maximum / minimum) into the output clamp
        while True:
            name = self.op_of(g)
            if name not in CLAMP_OPS or not self.single_use(g):
                break
            val = self.value(g)
            if name == "relax.nn.relu":
                lo = max(lo, quantize_scalar(0.0, s_y, z_y, *QRANGE[dtype]))
                inner = val.args[0]
            elif name == "relax.clip":
                a, b = compat.prim_value(val.args[1]), compat.prim_value(val.args[2])
                if a is None or b is None:
                    break
                lo = max(lo, quantize_scalar(a, s_y, z_y, *QRANGE[dtype]))
                hi = min(hi, quantize_scalar(b, s_y, z_y, *QRANGE[dtype]))
                inner = val.args[0]
            else:
                args = compat.call_tir_args(val) if name.startswith("call_tir:") else list(val.args)
                if len(args) != 2:
                    break
                c = self.cval(args[1])
                if c is None or _scalar(c) is None:
                    break
                bound = float(_scalar(c))
                inner = args[0]
                if name.endswith("maximum"):
                    lo = max(lo, quantize_scalar(bound, s_y, z_y, *QRANGE[dtype]))
                else:
                    hi = min(hi, quantize_scalar(bound, s_y, z_y, *QRANGE[dtype]))
            absorbed.append(g)
            g = inner
        if lo > hi:
            hi = lo
        if self.op_of(g) == "relax.concat":
            return self._plan_concat(var, g, s_y, z_y, dtype, lo, hi, absorbed)
        aff = self.affine(g, top=False)
        kinds = sorted({t.kind for t in aff.terms})
        if kinds == ["view"] and aff.offset is None:
            v = self.view(g)
            kinds = v.ops or ["requantize"]
            if v.scale == s_y and v.zp == z_y and v.dtype == dtype:
                def emit(e, v=v):
                    out = e.view_expr(v)
                    if (lo, hi) != QRANGE[dtype]:
                        out = R.clip(out, lo, hi)
                    return out
                return Plan(var, emit, list(v.sources), absorbed + [g],
                            v.ops or (["clamp"] if absorbed else ["identity"]))
        return Plan(var, requantizer(aff, s_y, z_y, dtype, lo, hi),
                    [s for t in aff.terms for s in t.sources], absorbed + aff.absorbed, kinds)

    def _plan_concat(self, var, g, s_y, z_y, dtype, lo, hi, absorbed) -> Plan:
        val = self.value(g)
        fields = val.args[0]
        fields = list(fields.fields) if isinstance(fields, relax.Tuple) else None
        if fields is None:
            raise NoMatch("concat of a non-literal tuple")
        views = [self.view(f) for f in fields]
        if any(v is None for v in views):
            raise NoMatch("concat of a non-quantized input")
        axis = int(val.attrs.axis)
        rank = len(compat.tensor_shape(g))
        requant = []
        for v in views:
            if v.scale == s_y and v.zp == z_y and v.dtype == dtype:
                requant.append(None)
            else:
                aff = Affine([Term(lambda e2, v=v: e2.view_expr(v), np.array(v.scale, np.float64),
                                   np.array(-v.zp, np.int64), v.sources, "view")], None, rank, [])
                requant.append(requantizer(aff, s_y, z_y, dtype, *QRANGE[dtype]))

        def emit(e):
            parts = []
            for v, rq in zip(views, requant):
                if rq is None:
                    parts.append(e.view_expr(v))
                else:
                    parts.append(e.emit(rq(e)))
            out = R.concat(parts, axis=axis)
            if (lo, hi) != QRANGE[dtype]:
                out = R.clip(e.emit(out), lo, hi)
            return out

        return Plan(var, emit, [s for v in views for s in v.sources], absorbed + [g], ["concat"])

    # ------------------------------------------------------------------ float sinks
    def plan_float_sink(self, var) -> Plan | None:
        """A quantized linear layer whose output stays float (e.g. the logits Gemm): integer
        accumulate, then float(acc + k) * m + offset."""
        try:
            aff = self.affine(var, top=True)
        except NoMatch:
            return None
        if len(aff.terms) != 1 or aff.terms[0].kind in ("view", "add"):
            return None
        return Plan(var, lambda e: emit_float(e, aff), list(aff.terms[0].sources), aff.absorbed,
                    [aff.terms[0].kind])

    # ------------------------------------------------------------------ driver
    def analyse(self) -> None:
        absorbed: set = set()
        for var in self.order:
            val = self.bindings[var]
            if compat.op_name(val) != "relax.quantize":
                continue
            try:
                plan = self.plan_quantize(var, val)
            except NoMatch as exc:
                self.reasons[var] = str(exc)
                core = self._core(val.args[0])
                if core is not None:
                    self.reasons.setdefault(core, str(exc))
                continue
            self.plans[var] = plan
            absorbed.update(plan.absorbed)
        heavy = {"relax.nn.conv2d", "relax.matmul", "relax.nn.conv2d_transpose"}
        for var in self.order:
            if var in absorbed or var in self.plans or compat.op_name(self.bindings[var]) not in heavy:
                continue
            top = var
            while True:
                users = [u for u in self.order if self._reads(self.bindings[u], top)]
                if len(users) != 1 or self.uses[top] != 1:
                    break
                u = users[0]
                val = self.bindings[u]
                if compat.op_name(val) != "relax.add" or u in absorbed or u in self.plans:
                    break
                if self.cval(val.args[0]) is None and self.cval(val.args[1]) is None:
                    break
                top = u
            plan = self.plan_float_sink(top)
            if plan is not None:
                self.plans[top] = plan
                absorbed.update(plan.absorbed)
            else:
                self.reasons.setdefault(var, "operands are not quantized")
        self.absorbed = absorbed

    def _core(self, g):
        while self.op_of(g) in CLAMP_OPS:
            val = self.value(g)
            args = compat.call_tir_args(val) if compat.op_name(val).startswith("call_tir:") else list(val.args)
            g = args[0]
        return g if isinstance(g, compat.Var) else None

    @staticmethod
    def _reads(expr, var) -> bool:
        if isinstance(expr, compat.Var):
            return expr.same_as(var)
        if isinstance(expr, compat.Call):
            return any(Lowering._reads(a, var) for a in expr.args)
        if isinstance(expr, relax.Tuple):
            return any(Lowering._reads(f, var) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return Lowering._reads(expr.tuple_value, var)
        return False

    # ------------------------------------------------------------------ report
    def live_vars(self) -> set:
        """Original vars still computed after the rewrite (plans read their sources, not their inputs)."""
        live = set()
        stack = []

        def reads(expr, out):
            if isinstance(expr, compat.Var):
                out.append(expr)
            elif isinstance(expr, compat.Call):
                for a in expr.args:
                    reads(a, out)
            elif isinstance(expr, relax.Tuple):
                for f in expr.fields:
                    reads(f, out)
            elif isinstance(expr, relax.TupleGetItem):
                reads(expr.tuple_value, out)
            elif isinstance(expr, relax.MatchCast):
                reads(expr.value, out)

        reads(self.func.body.body, stack)
        while stack:
            v = stack.pop()
            if v in live or v not in self.bindings:
                continue
            live.add(v)
            if v in self.plans:
                stack.extend(self.plans[v].sources)
            else:
                reads(self.bindings[v], stack)
        return live

    def report(self) -> tuple[dict, list]:
        live = self.live_vars()
        integer_ops: Counter = Counter()
        for var, plan in self.plans.items():
            if var in live:
                for k in plan.kinds:
                    integer_ops[k] += 1
        fallback: Counter = Counter()
        has_fp8 = any((compat.op_name(self.bindings[v]) or "").startswith(FP8_OP_PREFIX) for v in live)
        for var in self.order:
            if var not in live or var in self.plans:
                continue
            val = self.bindings[var]
            name = compat.op_name(val)
            dt = compat.tensor_dtype(var)
            if name is not None and name.startswith(FP8_OP_PREFIX):
                # qcc's FP8 Q / DQ (fp8.py): exact integer bit code, reported as such
                integer_ops["fp8_" + name.rsplit("_", 1)[1]] += 1
                continue
            if name is None or dt is None or dt in SHAPE_ONLY_DTYPES or name in ("relax.dequantize", "relax.quantize"):
                continue
            if dt in QRANGE or self.cval(var) is not None:
                continue
            why = self.reasons.get(var, FP8_FLOAT if has_fp8 else
                                   "no integer lowering (runs in float between dequantize and quantize)")
            fallback[(name.replace("relax.", ""), why)] += 1
        fb = [{"op": op, "reason": why, "count": n} for (op, why), n in sorted(fallback.items())]
        return dict(sorted(integer_ops.items())), fb


# ---------------------------------------------------------------------- emission
def _int_const(a: np.ndarray, dtype: str):
    return compat.const(_trim(a), dtype)


def requantizer(aff: Affine, s_y: float, z_y: int, dtype: str, lo: int, hi: int) -> Callable:
    """The requantization of an affine sum, as an emit function (constants computed now, so an
    unrepresentable multiplier is a NoMatch at planning time, not an error mid-rewrite). One term
    with an int32 constant and no real offset (float32, as MLAS):

        clamp(round_half_even(float32(t + k) * float32(m / s_y)) + zp_y, lo, hi) -> dtype

    otherwise (int64 fixed point):

        clamp(round_half_even((sum_i (t_i + k_i) * M_i + B) / 2**shift) + zp_y, lo, hi) -> dtype
    """
    rank = aff.rank
    ms = [_rank_array(t.m / s_y, rank) for t in aff.terms]
    if (FLOAT_REQUANTIZE and len(aff.terms) == 1 and aff.offset is None
            and np.all(np.abs(aff.terms[0].k) < 2**31)):
        return _float_requantizer(aff.terms[0], ms[0], rank, z_y, dtype, lo, hi)
    try:
        if len(aff.terms) == 1:
            mult, shift = quantize_multiplier(ms[0])
            mults = [mult]
        else:
            mults, shift = common_shift_multipliers(ms)
            shift = np.array(shift, np.int64)
    except ValueError as exc:
        raise NoMatch(str(exc)) from None
    const_off = np.zeros((1,) * rank, np.int64)
    bias32 = []
    for t, mult in zip(aff.terms, mults):
        k = _rank_array(t.k, rank)
        if len(aff.terms) == 1 and t.kind != "view" and np.any(k != 0) and np.all(np.abs(k) < 2**31):
            bias32.append(k)        # the int32 bias add (bias and zero-point correction folded)
        else:
            bias32.append(None)
            const_off = const_off + k * mult
    if aff.offset is not None:
        const_off = const_off + offset_fixed(_rank_array(aff.offset, rank), s_y, shift)
    half_m1 = (np.int64(1) << (np.asarray(shift, np.int64) - 1)) - 1

    def emit(e):
        total = None
        for t, mult, k in zip(aff.terms, mults, bias32):
            x = t.emit(e)
            if k is not None:
                x = e.emit(R.add(e.emit(x), _int_const(k, "int32")))
            x64 = R.astype(e.emit(x), "int64")
            term = R.multiply(e.emit(x64), _int_const(mult, "int64"))
            total = term if total is None else R.add(e.emit(total), e.emit(term))
        if np.any(const_off != 0):
            total = R.add(e.emit(total), _int_const(const_off, "int64"))
        v = e.emit(total)
        shift_c = _int_const(np.asarray(shift), "int64")
        floor_q = e.emit(R.right_shift(v, shift_c))
        odd = e.emit(R.bitwise_and(floor_q, compat.const(np.int64(1))))
        r = e.emit(R.add(e.emit(R.add(v, _int_const(half_m1, "int64"))), odd))
        r = e.emit(R.right_shift(r, shift_c))
        if z_y:
            r = e.emit(R.add(r, compat.const(np.int64(z_y))))
        r = e.emit(R.clip(r, lo, hi))
        return R.astype(r, dtype)

    return emit


def _float_requantizer(t: Term, m: np.ndarray, rank: int, z_y: int, dtype: str, lo: int, hi: int) -> Callable:
    """clamp(round_half_even(float32(t + k) * float32(m)) + zp_y, lo, hi) -> dtype (fixedpoint.py).
    R.round lowers to nearbyint (round half to even in the default mode) on every target; the
    zero point is added to the rounded value (exact in float32 wherever the clamp does not saturate)."""
    try:
        scale = float_scale(m)
    except ValueError as exc:
        raise NoMatch(str(exc)) from None
    k = _rank_array(t.k, rank)

    def emit(e):
        x = e.emit(t.emit(e))
        if compat.tensor_dtype(x) != "int32":
            x = e.emit(R.astype(x, "int32"))
        if np.any(k != 0):
            x = e.emit(R.add(x, _int_const(k, "int32")))
        f = e.emit(R.multiply(e.emit(R.astype(x, "float32")), compat.const(_trim(scale))))
        r = e.emit(R.round(f))
        if z_y:
            r = e.emit(R.add(r, compat.const(np.float32(z_y))))
        r = e.emit(R.clip(r, lo, hi))
        return R.astype(r, dtype)

    return emit


def emit_requantize(e, aff: Affine, s_y: float, z_y: int, dtype: str, lo: int, hi: int):
    return requantizer(aff, s_y, z_y, dtype, lo, hi)(e)


def emit_float(e, aff: Affine):
    """float32(acc + k) * m + offset for a quantized layer whose output is consumed in float."""
    (t,) = aff.terms
    rank = aff.rank
    x = t.emit(e)
    k = _rank_array(t.k, rank)
    if np.any(k != 0):
        x = R.add(e.emit(x), _int_const(k, "int32"))
    f = R.astype(e.emit(x), "float32")
    f = R.multiply(e.emit(f), compat.const(_trim(_rank_array(t.m, rank)).astype(np.float32)))
    if aff.offset is not None:
        f = R.add(e.emit(f), compat.const(_trim(_rank_array(aff.offset, rank)).astype(np.float32)))
    return f


@compat.mutator
class _Rewriter(compat.PyExprMutator):
    def __init__(self, mod, lowering: Lowering):
        super().__init__(mod)
        self.mod_ = mod
        self.lowering = lowering
        self.cache: dict = {}

    # emitter interface used by the plans
    def emit(self, expr):
        if isinstance(expr, (compat.Var, compat.Constant)):
            return expr
        return self.builder_.emit(expr)

    def source(self, var):
        return self.visit_expr(var)

    def remap(self, expr):
        return self.visit_expr(expr)

    def view_expr(self, v: View):
        key = v.var
        if key not in self.cache:
            self.cache[key] = self.emit(v.emit(self))
        return self.cache[key]

    def visit_binding_block_(self, block):
        self.cache = {}
        return super().visit_binding_block_(block)

    def visit_dataflow_block_(self, block):
        self.cache = {}
        return super().visit_dataflow_block_(block)

    def visit_var_binding_(self, binding):
        plan = self.lowering.plans.get(binding.var)
        if plan is None:
            return super().visit_var_binding_(binding)
        new_value = plan.emit(self)
        name = binding.var.name
        if isinstance(binding.var, compat.DataflowVar):
            new_var = self.builder_.emit(new_value, name)
        else:
            new_var = self.builder_.emit_output(new_value, name)
        self.set_var_remap(binding.var, new_var)

    def transform(self):
        for gv, func in self.mod_.functions_items():
            if gv.name_hint == "main" and isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


def lower_to_integer(mod):
    """Rewrite main's quantized layers to integer code. Returns (new module, integer_ops, float_fallback)."""
    low = Lowering(mod)
    low.analyse()
    integer_ops, fallback = low.report()
    new_mod = _Rewriter(mod, low).transform()
    new_mod = compat.dead_code_elimination(new_mod)
    return new_mod, integer_ops, fallback


HEAVY_OPS = ("relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul")


def heavy_ops(mod) -> list[dict]:
    """Every conv2d / conv2d_transpose / matmul in main with its operand and result dtypes
    (for checking that the lowered module really computes in integers)."""
    out = []
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            name = compat.op_name(b.value)
            if name in HEAVY_OPS:
                out.append({"op": name.replace("relax.", ""),
                            "inputs": [compat.tensor_dtype(a) for a in b.value.args[:2]],
                            "out": compat.tensor_dtype(b.var)})
    return out
