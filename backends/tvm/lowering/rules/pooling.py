"""Pooling and reductions: max pooling and max / min reductions are views; average pooling and means are int32 sums.

    max(DQ(x)) = max(s * (x - z)) = s * (max(x) - z) = DQ(max(x))          (s > 0)
    mean_N(DQ(x)) = s / N * (sum_N(x) - N * z)

For average pooling N is the window's divisor at each output position (the full window with
count_include_pad, else the elements inside the input), carried by the multiplier.
"""

from __future__ import annotations

import numpy as np

from ... import compat
from ...compat import R
from ..ir import INT32_MAX, Affine, Term, max_code, rank_array
from ..registry import AffineRule, rule, unquantized
from .views import LayoutView


class PositiveScaleView(LayoutView):
    """A view by max or min: they commute with x -> s * (x - z) only for s > 0."""

    def check(self, low, call, var):
        why = super().check(low, call, var)
        if why is None and low.view(call.args[0]).scale <= 0:
            why = f"{self.short(call)} of a tensor with a non-positive scale"
        return why


@rule
class MaxPool2d(PositiveScaleView):
    """max_pool2d(DQ(x)) == DQ(max_pool2d(x)): max commutes with x -> s * (x - z) for s > 0."""
    pattern = ("relax.nn.max_pool2d",)
    onnx = ("MaxPool",)
    conditions = "input quantized per tensor (max commutes with a positive scale)"


@rule
class MaxMinReduce(PositiveScaleView):
    """max(DQ(x), axes) == DQ(max(x, axes)), and min likewise (s > 0): the reduction picks one of the
    integers. GlobalMaxPool imports as a max over the spatial axes."""
    pattern = ("relax.max", "relax.min")
    onnx = ("GlobalMaxPool", "ReduceMax", "ReduceMin")
    conditions = "input quantized per tensor (max / min commute with a positive scale)"


@rule
class Mean(AffineRule):
    """acc = sum(x, axes) (int32), value = s_x / N * (acc - N * z_x), N the reduced element count.
    GlobalAveragePool imports as a mean over the spatial axes."""
    pattern = ("relax.mean",)
    onnx = ("GlobalAveragePool", "ReduceMean")
    lowers_to = "int32 `sum` over the axes, requantized by s_x / (s_y * N)"
    conditions = ("input quantized per tensor (the plan's pool role: GlobalAveragePool, ReduceMean with "
                  "constant axes); static reduced dims")

    def axes(self, call) -> list[int]:
        shape = compat.tensor_shape(call.args[0])
        ax = call.attrs.axis
        return [int(v) % len(shape) for v in ax] if ax is not None else list(range(len(shape)))

    def check(self, low, call, var):
        if low.view(call.args[0]) is None:
            return unquantized("mean")
        shape = compat.tensor_shape(call.args[0])
        if not all(isinstance(shape[i], int) for i in self.axes(call)):
            return "mean over a dynamic dimension"
        n = int(np.prod([shape[i] for i in self.axes(call)]))
        if n * max_code(low.view(call.args[0]).dtype) > INT32_MAX:
            return f"mean of {n} {low.view(call.args[0]).dtype} codes: the int32 sum could overflow"
        return None

    def rewrite(self, low, call, var, rank) -> Affine:
        x = low.view(call.args[0])
        shape = compat.tensor_shape(call.args[0])
        axes = self.axes(call)
        n = int(np.prod([shape[i] for i in axes]))
        keep = bool(call.attrs.keepdims)

        def emit(e, x=x):
            return R.sum(R.astype(e.view_expr(x), "int32"), axis=axes, keepdims=keep)

        m = np.array(x.scale / n, np.float64)
        k = np.array(-x.zp * n, np.int64)
        return Affine([Term(emit, m, k, x.sources, "mean", bound=n * max_code(x.dtype))], None, rank, [var])


@rule
class AvgPool2d(AffineRule):
    """acc = window sum of x (int32: a depthwise conv with a ones kernel, zero padding),
    value = s_x / d[i, j] * (acc - z_x * c[i, j]) with c the window elements inside the input and
    d the divisor (the full window with count_include_pad, else c)."""
    pattern = ("relax.nn.avg_pool2d",)
    onnx = ("AveragePool",)
    lowers_to = "int32 window sum (depthwise `conv2d` with a ones kernel), the per-position divisor in the multiplier"
    conditions = ("NCHW; input quantized per tensor; static channel and spatial dims (count_include_pad / "
                  "padding / ceil_mode)")

    def counts(self, call, var):
        """(count, divisor, attrs) at each output position."""
        a = call.attrs
        in_shape, out_shape = compat.tensor_shape(call.args[0]), compat.tensor_shape(var)
        H, W = in_shape[2:]
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
        return count, divisor, (kh, kw, sh, sw, dh, dw, top, left, bottom, right)

    def check(self, low, call, var):
        if str(call.attrs.layout) != "NCHW":
            return "avg_pool2d layout other than NCHW"
        if low.view(call.args[0]) is None:
            return unquantized("avg_pool2d")
        in_shape, out_shape = compat.tensor_shape(call.args[0]), compat.tensor_shape(var)
        if not all(isinstance(d, int) for d in in_shape[1:]) or not all(isinstance(d, int) for d in out_shape[2:]):
            return "avg_pool2d needs static channel and spatial dimensions"
        if np.any(self.counts(call, var)[1] <= 0):
            return "avg_pool2d window entirely in the padding"
        return None

    def rewrite(self, low, call, var, rank) -> Affine:
        x = low.view(call.args[0])
        C = compat.tensor_shape(call.args[0])[1]
        count, divisor, (kh, kw, sh, sw, dh, dw, top, left, bottom, right) = self.counts(call, var)
        ones = compat.const(np.ones((C, 1, kh, kw), np.int8))

        def emit(e, x=x):
            return R.nn.conv2d(e.view_expr(x), ones, strides=[sh, sw], padding=[top, left, bottom, right],
                               dilation=[dh, dw], groups=C, out_dtype="int32")

        m = rank_array((x.scale / divisor).astype(np.float64), rank)
        k = rank_array(-x.zp * count, rank)
        # k is in *sum* units only where divisor == count; (t + k) * m is still exact: sum(x - zx) = t - zx*count
        return Affine([Term(emit, m, k, x.sources, "avg_pool2d", bound=kh * kw * max_code(x.dtype))], None, rank,
                      [var])
