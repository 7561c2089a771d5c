"""Softmax and LayerNormalization between quantized tensors: one int8 -> int8 kernel each.

TVM's ONNX frontend imports Softmax (opset 13: R.nn.softmax(x, axis)) and LayerNormalization
(opset 17: R.nn.layer_norm(x, gamma, beta, axes, epsilon)) as float ops, so between a dequantize
and a quantize each is several float kernels and as many passes over memory. Both are row-wise
over the last axis and read only integers q with x = s_x * (q - z_x), so each becomes one fused
kernel (a TE compute, scheduled by the CPU row rule) that reads the int8 row, computes in float32
inside and writes Q(v) = clamp(round(v / s_y) + z_y, lo, hi).

Softmax. With m = max_j q_j the row maximum of the integers (the float maximum is s_x * (m - z_x)),

    softmax(x)_i = exp(s_x * (q_i - m)) / sum_j exp(s_x * (q_j - m))

z_x cancels, and d = q_i - m takes only the values -(q_max - q_min) .. 0, so the exponentials come
from a 256-entry float32 table E[d + 255] = exp(s_x * d) built at compile time: no exp is evaluated
at run time and every row's values are exactly those of the table. Then, in onnxruntime's order
(MLAS multiplies by the reciprocal of the sum),

    y_i = Q(E[q_i - m + 255] * (1 / sum_j E[q_j - m + 255]))

LayerNormalization over the last axis (N elements), with u = q - z_x:

    S1 = sum u,   S2 = sum u^2            (int32 exact: N * 255^2 < 2^31 for N < 33025)
    mean = s_x * S1 / N,   var = s_x^2 * (N * S2 - S1^2) / N^2     (the numerator exact in int64)
    y_i = Q((s_x * u_i - mean) / sqrt(var + eps) * gamma_i + beta_i)

The integer sums make mean and variance exact up to the final float32 roundings, where a float
pipeline accumulates rounding errors; the codes differ from onnxruntime's float graph only where
v / s_y falls within that rounding of a half-integer.
"""

from __future__ import annotations

import numpy as np

from ... import compat
from ...compat import te, tirx
from ..ir import Plan
from ..registry import SiteRule, rule, unquantized

_F = np.float32
# S2 = sum (q - z)^2 must fit int32: N * 255^2 < 2^31
MAX_ROW = (2**31 - 1) // (255 * 255)


def _last_axis(axes, ndim: int) -> bool:
    return len(axes) == 1 and int(axes[0]) % ndim == ndim - 1


def _static_shape(expr) -> list[int] | None:
    shape = compat.tensor_shape(expr)
    if shape is None:
        return None
    try:
        return [int(d) for d in shape]
    except (TypeError, ValueError):
        return None


def _row_problem(low, call, var, what: str):
    """(view, shape) of the op's quantized input, or the reason it has none."""
    view = low.view(call.args[0])
    if view is None:
        return unquantized(what)
    if view.dtype not in ("int8", "uint8"):
        return f"{what} of {view.dtype} codes (the kernel's tables and int32 sums are for int8 / uint8)"
    shape = _static_shape(var)
    if shape is None or not shape:
        return f"{what}: dynamic or scalar shape"
    if compat.tensor_dtype(var) != "float32":
        return f"{what}: {compat.tensor_dtype(var)} output"
    if not low.single_use(var):
        # a float consumer keeps the float op live: the kernel would only add a pass
        return "intermediate result has several consumers"
    return view, shape


def _call_te(e, fn, args: list, name: str):
    """call_tir of the TE compute `fn` over Relax `args`, built by the rewriter's block builder (the
    PrimFunc is added to the module, the call returned for the site's binding)."""
    return e.builder_.call_te(fn, *args, primfunc_name_hint=name)


def _quantize(v, s_y: float, z_y: int, lo: int, hi: int, dtype: str):
    """clamp(round(v / s_y) + z_y, lo, hi) as R.quantize legalizes it (round half to even, division)."""
    r = te.round(v / tirx.const(s_y, "float32")) + tirx.const(float(z_y), "float32")
    r = te.max(te.min(r, tirx.const(float(hi), "float32")), tirx.const(float(lo), "float32"))
    return r.astype(dtype)


def exp_table(s_x: float) -> np.ndarray:
    """E[d + 255] = exp(s_x * d) for d = -255 .. 0, in float32 (the module docstring)."""
    d = np.arange(-255, 1, dtype=np.int32).astype(_F)
    return np.exp(d * _F(s_x)).astype(_F)


@rule
class QuantizedSoftmax(SiteRule):
    """Q(softmax(DQ(x))) over the last axis: row max of the integers, a 256-entry exp table, one
    kernel (module docstring)."""
    pattern = ("relax.nn.softmax",)
    onnx = ("Softmax",)
    lowers_to = "one fused int8 -> int8 kernel: integer row max, 256-entry float32 exp table, float32 sum"
    conditions = ("softmax over the last axis of a tensor quantized per tensor (int8 / uint8), static shape, "
                  "feeding a QuantizeLinear")

    def check(self, low, call, var):
        found = _row_problem(low, call, var, "softmax")
        if isinstance(found, str):
            return found
        _, shape = found
        if not _last_axis([call.attrs.axis], len(shape)):
            return f"softmax over axis {int(call.attrs.axis)}, not the last"
        return None

    def rewrite(self, low, call, var, site, absorbed) -> Plan:
        view, shape = _row_problem(low, call, var, "softmax")
        n = shape[-1]
        table = compat.const(exp_table(view.scale))
        s_y, z_y, lo, hi, dtype = site.scale, site.zp, site.lo, site.hi, site.dtype
        off = 255   # d = q - m >= -255: table index d + 255

        def kernel(x, tab):
            k = te.reduce_axis((0, n), "k")
            m = te.compute(shape[:-1], lambda *r: te.max(x[(*r, k)].astype("int32"), axis=k), name="row_max")
            ex = te.compute(shape, lambda *i: tab[x[i].astype("int32") - m[i[:-1]] + off], name="row_exp")
            j = te.reduce_axis((0, n), "j")
            s = te.compute(shape[:-1], lambda *r: te.sum(ex[(*r, j)], axis=j), name="row_sum")
            return te.compute(shape, lambda *i: _quantize(ex[i] * (tirx.const(1.0, "float32") / s[i[:-1]]),
                                                          s_y, z_y, lo, hi, dtype), name="softmax_q")

        def emit(e, view=view):
            return _call_te(e, kernel, [e.view_expr(view), table], "qcc_softmax_int8")

        return Plan(site.var, emit, list(view.sources), absorbed + [var], ["softmax"])


@rule
class QuantizedLayerNorm(SiteRule):
    """Q(layer_norm(DQ(x), gamma, beta)) over the last axis: integer sums S1, S2, float32 normalize,
    one kernel (module docstring)."""
    pattern = ("relax.nn.layer_norm",)
    onnx = ("LayerNormalization",)
    lowers_to = "one fused int8 -> int8 kernel: int32 row sums of u and u^2, exact int64 variance, float32 affine"
    conditions = (f"layer norm over the last axis (at most {MAX_ROW} elements) of a tensor quantized per tensor, "
                  "constant gamma / beta, static shape, feeding a QuantizeLinear")

    def check(self, low, call, var):
        found = _row_problem(low, call, var, "layer_norm")
        if isinstance(found, str):
            return found
        _, shape = found
        axes = compat.int_tuple(call.attrs.axes)
        if not _last_axis(axes, len(shape)):
            return f"layer_norm over axes {axes}, not the last one"
        if shape[-1] > MAX_ROW:
            return f"layer_norm row of {shape[-1]} elements (int32 sum of squares holds {MAX_ROW})"
        for i, what in ((1, "gamma"), (2, "beta")):
            c = low.cval(call.args[i])
            if c is None:
                return f"layer_norm with a non-constant {what}"
            if c.size not in (1, shape[-1]):
                return f"layer_norm {what} of shape {list(c.shape)}"
        return None

    def rewrite(self, low, call, var, site, absorbed) -> Plan:
        view, shape = _row_problem(low, call, var, "layer_norm")
        n = shape[-1]

        def param(i, on):
            # center / scale off: beta 0 / gamma 1, as the op defines them
            c = low.cval(call.args[i]) if on else np.full(n, 1.0 if i == 1 else 0.0)
            return compat.const(np.broadcast_to(np.asarray(c, _F).reshape(-1), (n,)).copy())

        gamma, beta = param(1, bool(call.attrs.scale)), param(2, bool(call.attrs.center))
        s_x, z_x = _F(view.scale), int(view.zp)
        # float32 as onnxruntime reads the attribute (the frontend keeps its float32 value)
        eps = float(_F(call.attrs.epsilon))
        s_y, z_y, lo, hi, dtype = site.scale, site.zp, site.lo, site.hi, site.dtype
        f32 = lambda v: tirx.const(float(v), "float32")  # noqa: E731

        def kernel(x, g, b):
            def u(i):
                return x[i].astype("int32") - tirx.const(z_x, "int32")

            k = te.reduce_axis((0, n), "k")
            s1 = te.compute(shape[:-1], lambda *r: te.sum(u((*r, k)), axis=k), name="row_sum")
            j = te.reduce_axis((0, n), "j")
            s2 = te.compute(shape[:-1], lambda *r: te.sum(u((*r, j)) * u((*r, j)), axis=j), name="row_sumsq")

            def stats(*r):
                # N * S2 - S1^2 >= 0 exactly in int64; mean and std in float32 from there
                a = s1[r].astype("int64")
                num = tirx.const(n, "int64") * s2[r].astype("int64") - a * a
                var_x = num.astype("float32") * f32(float(s_x) * float(s_x) / (n * n))
                return te.sqrt(var_x + f32(eps))

            std = te.compute(shape[:-1], stats, name="row_std")
            mean = te.compute(shape[:-1], lambda *r: s1[r].astype("float32") * f32(float(s_x) / n), name="row_mean")

            def out(*i):
                xf = u(i).astype("float32") * f32(s_x)
                v = (xf - mean[i[:-1]]) / std[i[:-1]] * g[i[-1]] + b[i[-1]]
                return _quantize(v, s_y, z_y, lo, hi, dtype)

            return te.compute(shape, out, name="layer_norm_q")

        def emit(e, view=view):
            return _call_te(e, kernel, [e.view_expr(view), gamma, beta], "qcc_layer_norm_int8")

        return Plan(site.var, emit, list(view.sources), absorbed + [var], ["layer_norm"])
