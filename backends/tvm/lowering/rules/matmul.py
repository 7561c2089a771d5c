"""MatMul / Gemm: int8 / uint8 / int16 activation x constant int8 weight, or activation x activation.

Constant weight (symmetric, scale per output column n):

    (s_a * (a - z_a)) @ (s_w[n] * w[:, n]) = s_a * s_w[n] * (a @ w - z_a * colsum(w))[..., n]

Two activations (attention's Q @ K^T and P @ V), K the reduction length:

    (a - z_a) @ (b - z_b) = a @ b - z_b * rowsum(a) - z_a * colsum(b) + K * z_a * z_b

int16 operands (W8A16): the accumulator is int32 where no input can overflow it (constant weight:
max|a| * max_n sum_k |w[k, n]|, the actual codes; two activations: K * (max|a| + |z_a|) * (max|b| +
|z_b|)), else int64 (exact).
"""

from __future__ import annotations

import numpy as np

from ... import compat
from ...compat import R
from ..ir import Affine, Term, accumulator, int8_weight_problem, max_code, rank_array
from .conv import wide_suffix
from ..registry import AffineRule, Unquantized, rule, unquantized


@rule
class MatMul(AffineRule):
    """acc = matmul(a, w) (int32), value = s_a * s_w[n] * (acc - z_a * colsum(w)[n]); or, for two
    activations, acc = a @ b - z_b * rowsum(a) - z_a * colsum(b) (int32) and
    value = s_a * s_b * (acc + K * z_a * z_b). Gemm imports as matmul (+ transpose of B, + bias add)."""
    pattern = ("relax.matmul",)
    onnx = ("MatMul", "Gemm")
    lowers_to = ("uint8/int8 x int8 -> int32 `matmul`; activation x activation -> int32 with row / column-sum "
                 "zero-point corrections (attention); int16 operands (W8A16) -> int32 where no input can overflow "
                 "it, else int64")
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
            bound = max_code(x.dtype) * int(np.abs(wq.astype(np.int64)).sum(axis=0).max())
            acc = accumulator(bound)

            def emit(e, x=x):
                return R.matmul(e.view_expr(x), wconst, out_dtype=acc)

            m = rank_array(x.scale * sw, rank)
            k = rank_array(-x.zp * colsum, rank)
            return Affine([Term(emit, m, k, x.sources, "matmul" + wide_suffix(x.dtype, acc), acc, bound)], None,
                          rank, [var])
        y = low.view(b_expr)
        K = compat.tensor_shape(b_expr)[-2]
        za, zb = x.zp, y.zp
        bound = K * (max_code(x.dtype) + abs(za)) * (max_code(y.dtype) + abs(zb))
        dt = accumulator(bound)
        ct = np.int32 if dt == "int32" else np.int64

        def emit(e, x=x, y=y):
            a_i, b_i = e.view_expr(x), e.view_expr(y)
            acc = R.matmul(a_i, b_i, out_dtype=dt)
            if zb:
                acc = e.emit(acc)
                rs = e.emit(R.sum(R.astype(a_i, dt), axis=[-1], keepdims=True))
                acc = R.subtract(acc, R.multiply(rs, compat.const(ct(zb))))
            if za:
                acc = e.emit(acc)
                cs = e.emit(R.sum(R.astype(b_i, dt), axis=[-2], keepdims=True))
                acc = R.subtract(acc, R.multiply(cs, compat.const(ct(za))))
            return acc

        m = np.array(x.scale * y.scale, np.float64)
        k = np.array(K * za * zb, np.int64)
        wide = "int16" if "int16" in (x.dtype, y.dtype) else x.dtype
        return Affine([Term(emit, m, k, x.sources + y.sources, "matmul_int_x_int" + wide_suffix(wide, dt), dt,
                            bound)], None, rank, [var])
