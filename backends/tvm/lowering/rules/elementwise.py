"""Elementwise arithmetic on affine sums: Add, Mul and Div.

Two quantized inputs (a residual Add):

    s_a * (a - z_a) + s_b * (b - z_b)         two terms; requantized with one int64 shift

A constant c added to an affine sum v = sum_i m_i * (t_i + k_i) + offset:

    v + c = sum_i m_i * (t_i + k_i) + (offset + c)

and when c is an int32 bias dequantize(b_q, m_1) on the single term's multiplier (the bias of a
MatMul, or paddle's Add(conv, c)), exactly m_1 * (t_1 + k_1 + b_q): an int32 bias add.

A product of two quantized inputs is one integer term, and a constant factor scales the sum:

    s_a (a - z_a) * s_b (b - z_b) = (s_a s_b) * ((a - z_a)(b - z_b))
    c * v = sum_i (c m_i)(t_i + k_i) + c * offset          v / c = (1 / c) * v
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ... import compat
from ...compat import R
from ..ir import INT32_MAX, Affine, Term, max_code, qparam_broadcast, rank_array, view_term
from ..registry import AffineRule, NoMatch, rule


class BinaryAffine(AffineRule):
    """Add / Mul: two quantized inputs, or a constant and an affine sum (whose own rule decides)."""

    def check(self, low, call, var):
        a, b = call.args
        ca, cb = low.cval(a), low.cval(b)
        if ca is not None and cb is not None:
            return "constant expression"
        if ca is not None or cb is not None:
            return None       # the other operand's own rule decides (rewrite raises its NoMatch)
        if low.view(a) is None or low.view(b) is None:
            return f"{self.onnx[0]} of a non-quantized operand"
        return None


def constant_operand(low, call):
    """(the constant operand, the other) of a binary call with one constant operand, else None."""
    a, b = call.args
    if low.cval(a) is not None:
        return a, b
    if low.cval(b) is not None:
        return b, a
    return None


@rule
class Add(BinaryAffine):
    """a + b = s_a * (a_q - z_a) + s_b * (b_q - z_b) for two views (two terms, an int64 fixed-point
    sum with a shared shift at the quantize site); v + c for a constant c: the int32 bias
    m * (t + k + b_q) when c = dequantize(b_q, m), else a real offset (fixed point at the site)."""
    pattern = ("relax.add",)
    onnx = ("Add",)
    lowers_to = ("one int64 fixed-point sum with a shared shift (two quantized inputs); an int32 bias or "
                 "fixed-point offset (a constant addend: bias of MatMul, paddle's Add(conv, c))")
    conditions = "both inputs quantized per tensor, or one constant and the other an integer affine sum"

    def rewrite(self, low, call, var, rank) -> Affine:
        a, b = call.args
        split = constant_operand(low, call)
        if split is not None:
            c_expr, other = split
            return add_constant(low, low.affine(other, top=False), c_expr, rank, var)
        terms = [view_term(v, "add") for v in (low.view(a), low.view(b))]
        return Affine(terms, None, rank, [var])


def add_constant(low, inner: Affine, c_expr, rank: int, expr) -> Affine:
    """inner + c: an int32 bias on the single term where c = dequantize(b_q, m), else a real offset."""
    c = low.cval(c_expr)
    c_r = rank_array(c.astype(np.float64), rank)
    # an int32 bias read through dequantize(b_q, s_x * s_w): exact integer add to the accumulator
    bias = int_bias(low, c_expr)
    if bias is not None and len(inner.terms) == 1 and inner.terms[0].kind != "view":
        bq, bs = bias
        t = inner.terms[0]
        bq_r, bs_r = rank_array(bq, rank), rank_array(bs, rank)
        try:
            m_b, bs_b = np.broadcast_arrays(rank_array(t.m, rank), bs_r)
        except ValueError:
            m_b = bs_b = None
        if m_b is not None and np.allclose(bs_b, m_b, rtol=1e-6, atol=0):
            k = np.broadcast_arrays(rank_array(t.k, rank), bq_r)
            new_t = dataclasses.replace(t, k=k[0] + k[1])
            return Affine([new_t], inner.offset, rank, inner.absorbed + [expr])
    off = c_r if inner.offset is None else rank_array(inner.offset, rank) + c_r
    return Affine(inner.terms, off, rank, inner.absorbed + [expr])


def int_bias(low, expr):
    """(b_q, scale) if expr is [reshape of] dequantize(int32 constant, scale, 0)."""
    val = low.value(expr)
    shape = None
    if compat.op_name(val) == "relax.reshape":
        shape = getattr(val.args[1], "values", None)
        if shape is None:
            return None
        shape = [int(s) for s in shape]
        val = low.value(val.args[0])
    if compat.op_name(val) != "relax.dequantize":
        return None
    q, s, z = low.cval(val.args[0]), low.cval(val.args[1]), low.cval(val.args[2])
    if q is None or s is None or z is None or q.dtype != np.int32 or np.any(z != 0):
        return None
    s, _ = qparam_broadcast(s, z, int(val.attrs.axis), q.ndim)
    s = np.broadcast_to(s, q.shape).astype(np.float64)
    q = q.astype(np.int64)
    if shape is not None:
        q, s = q.reshape(shape), s.reshape(shape)
    return q, s


@rule
class Multiply(BinaryAffine):
    """Two quantized inputs, a product of integers:

        s_a (a - z_a) * s_b (b - z_b) = (s_a s_b) * ((a - z_a)(b - z_b))      (int32, broadcasting)

    (the SE block's x * sigmoid(...)); a constant c times an affine sum scales its multipliers and
    offset: c * (sum_i m_i (t_i + k_i) + o) = sum_i (c m_i)(t_i + k_i) + c o (a Mul after a conv)."""
    pattern = ("relax.multiply",)
    onnx = ("Mul",)
    lowers_to = ("an int32 product of the zero-point-corrected inputs (two quantized inputs); a constant "
                 "folded into the requantization multiplier")
    conditions = ("both inputs quantized per tensor (the plan quantizes both of a Mul of two activations that "
                  "are not functions of one tensor: the SE gate x * sigmoid(s), broadcasting), or one constant "
                  "and the other an integer affine sum; otherwise a pointwise chain of one tensor is a table "
                  "(PointwiseTable)")

    def rewrite(self, low, call, var, rank) -> Affine:
        a, b = call.args
        split = constant_operand(low, call)
        if split is not None:
            c_expr, other = split
            return scale_by(low, low.affine(other, top=False), low.cval(c_expr), rank, var)
        va, vb = low.view(a), low.view(b)
        bound = (max_code(va.dtype) + abs(va.zp)) * (max_code(vb.dtype) + abs(vb.zp))
        if bound > INT32_MAX:
            raise NoMatch(f"Mul of {va.dtype} and {vb.dtype} codes (zero points {va.zp}, {vb.zp}): the int32 "
                          "product could overflow")

        def emit(e, va=va, vb=vb):
            xa = centered(e, va)
            xb = centered(e, vb)
            return R.multiply(xa, xb)

        m = np.array(np.float64(va.scale) * np.float64(vb.scale))
        return Affine([Term(emit, m, np.array(0, np.int64), va.sources + vb.sources, "multiply", bound=bound)], None,
                      rank, [var])


@rule
class Divide(AffineRule):
    """v / c = (1 / c) * v for a constant c: the multipliers and offset of the affine sum v scale
    by 1 / c (Div after a conv, attention's Q.K^T / sqrt(d))."""
    pattern = ("relax.divide",)
    onnx = ("Div",)
    lowers_to = "the constant folded into the requantization multiplier"
    conditions = ("a constant divisor, the dividend an integer affine sum; otherwise a pointwise chain of "
                  "one tensor is a table (PointwiseTable)")

    def check(self, low, call, var):
        c = low.cval(call.args[1])
        if c is None:
            return "Div by a non-constant"
        if low.cval(call.args[0]) is not None:
            return "constant expression"
        if np.any(c == 0):
            return "Div by zero"
        return None

    def rewrite(self, low, call, var, rank) -> Affine:
        c = low.cval(call.args[1]).astype(np.float64)
        return scale_by(low, low.affine(call.args[0], top=False), 1.0 / c, rank, var)


def centered(e, v):
    """int32(x) - z_x of a view."""
    x = e.emit(R.astype(e.view_expr(v), "int32"))
    return e.emit(R.subtract(x, compat.const(np.int32(v.zp)))) if v.zp else x


def scale_by(low, inner: Affine, c, rank: int, expr) -> Affine:
    """c * inner: every multiplier and the offset times the constant c (c > 0 keeps the
    requantization's multipliers positive; a negative one is left to the table)."""
    c = rank_array(np.asarray(c, np.float64), rank)
    if not np.all(c > 0):
        raise NoMatch("scaling by a constant that is not positive")
    terms = [dataclasses.replace(t, m=rank_array(t.m, rank) * c, kind="scale" if t.kind == "view" else t.kind)
             for t in inner.terms]
    off = None if inner.offset is None else rank_array(inner.offset, rank) * c
    return Affine(terms, off, rank, inner.absorbed + [expr])
