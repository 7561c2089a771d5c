"""MatMul / Gemm: int8 / uint8 activation x constant int8 weight, or activation x activation.

Constant weight (symmetric, scale per output column n):

    (s_a * (a - z_a)) @ (s_w[n] * w[:, n]) = s_a * s_w[n] * (a @ w - z_a * colsum(w))[..., n]

Two activations (attention's Q @ K^T and P @ V), K the reduction length:

    (a - z_a) @ (b - z_b) = a @ b - z_b * rowsum(a) - z_a * colsum(b) + K * z_a * z_b
"""

from __future__ import annotations

import numpy as np

from ... import compat
from ...compat import R
from ..ir import Affine, Term, int8_weight_problem, rank_array
from ..registry import AffineRule, Unquantized, rule, unquantized


@rule
class MatMul(AffineRule):
    """acc = matmul(a, w) (int32), value = s_a * s_w[n] * (acc - z_a * colsum(w)[n]); or, for two
    activations, acc = a @ b - z_b * rowsum(a) - z_a * colsum(b) (int32) and
    value = s_a * s_b * (acc + K * z_a * z_b). Gemm imports as matmul (+ transpose of B, + bias add)."""
    pattern = ("relax.matmul",)
    onnx = ("MatMul", "Gemm")
    lowers_to = ("uint8/int8 x int8 -> int32 `matmul`; activation x activation -> int32 with row / column-sum "
                 "zero-point corrections (attention)")
    conditions = ("activation quantized per tensor; a constant rank-2 int8 weight (zero point 0, scale per column; "
                  "zp_x * colsum(w) in the int32 bias) or a second quantized activation with a static reduction dim")
    float_sink = True

    def check(self, low, call, var):
        a_expr, b_expr = call.args
        if low.view(a_expr) is None:
            return unquantized("matmul")
        w = low.weight(b_expr)
        if w is not None:
            if w[0].ndim != 2:
                return "matmul with a constant weight of rank != 2"
            return int8_weight_problem(w, "matmul", out_axis=1)   # one scale per column n
        if low.view(b_expr) is None:
            return Unquantized("matmul: second operand is neither a constant quantized weight nor a quantized tensor")
        b_shape = compat.tensor_shape(b_expr)
        if b_shape is None or len(b_shape) < 2 or not isinstance(b_shape[-2], int):
            return "matmul of two activations needs a static reduction dimension"
        return None

    def rewrite(self, low, call, var, rank) -> Affine:
        a_expr, b_expr = call.args
        x = low.view(a_expr)
        w = low.weight(b_expr)
        if w is not None:
            wq, ws, _ = w
            sw = np.broadcast_to(ws, wq.shape)[0].astype(np.float64)
            colsum = wq.astype(np.int64).sum(axis=0)
            wconst = compat.const(np.ascontiguousarray(wq), "int8")

            def emit(e, x=x):
                return R.matmul(e.view_expr(x), wconst, out_dtype="int32")

            m = rank_array(x.scale * sw, rank)
            k = rank_array(-x.zp * colsum, rank)
            return Affine([Term(emit, m, k, x.sources, "matmul")], None, rank, [var])
        y = low.view(b_expr)
        K = compat.tensor_shape(b_expr)[-2]
        za, zb = x.zp, y.zp

        def emit(e, x=x, y=y):
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
        return Affine([Term(emit, m, k, x.sources + y.sources, "matmul_int_x_int")], None, rank, [var])
