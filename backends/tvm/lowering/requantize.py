"""Emission of an affine sum: requantized to int8 / uint8 at a quantize site, or converted to float32
where a quantized layer's output is consumed in float."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .. import compat
from ..compat import R
from ..fixedpoint import common_shift_multipliers, float_scale, offset_fixed, quantize_multiplier
from .ir import INT32_MAX, Affine, Term, rank_array, trim
from .registry import NoMatch


def _int_const(a: np.ndarray, dtype: str):
    return compat.const(trim(a), dtype)


def requantizer(aff: Affine, s_y: float, z_y: int, dtype: str, lo: int, hi: int) -> Callable:
    """The requantization of an affine sum, as an emit function (constants computed now, so an
    unrepresentable multiplier is a NoMatch at planning time, not an error mid-rewrite). One term
    with an int32 constant and no real offset (float32, in the order of onnxruntime's MLAS):

        clamp(round_half_even(float32(t + k) * float32(m / s_y)) + zp_y, lo, hi) -> dtype

    otherwise (int64 fixed point):

        clamp(round_half_even((sum_i (t_i + k_i) * M_i + B) / 2**shift) + zp_y, lo, hi) -> dtype
    """
    rank = aff.rank
    ms = [rank_array(t.m / s_y, rank) for t in aff.terms]
    if len(aff.terms) == 1 and aff.offset is None and np.all(np.abs(aff.terms[0].k) < 2**31):
        return _float_requantizer(aff.terms[0], ms[0], rank, z_y, dtype, lo, hi)
    _check_fixed_point(aff.terms, ms)
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
        k = rank_array(t.k, rank)
        if len(aff.terms) == 1 and t.kind != "view" and np.any(k != 0) and int32_sum(t, k):
            bias32.append(k)        # the int32 bias add (bias and zero-point correction folded)
        else:
            bias32.append(None)
            const_off = const_off + k * mult
    if aff.offset is not None:
        const_off = const_off + offset_fixed(rank_array(aff.offset, rank), s_y, shift)
    half_m1 = (np.int64(1) << (np.asarray(shift, np.int64) - 1)) - 1

    def emit(e):
        total = None
        for t, mult, k in zip(aff.terms, mults, bias32):
            x = t.emit(e)
            if k is not None:
                x = e.emit(x)
                if compat.tensor_dtype(x) != "int32":     # a scaled view: int8 / uint8
                    x = e.emit(R.astype(x, "int32"))
                x = e.emit(R.add(x, _int_const(k, "int32")))
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


def int32_sum(t: Term, k: np.ndarray) -> bool:
    """Whether t + k provably fits int32: an int32 accumulator and |t| + |k| < 2**31 (|t| <= t.bound;
    an unbounded int32 term of int8 codes is taken as fitting, as before W8A16)."""
    if t.acc_dtype != "int32" or not np.all(np.abs(k) < 2**31):
        return False
    return t.bound is None or t.bound + int(np.abs(k).max(initial=0)) <= INT32_MAX


def with_offset(e, t: Term, k: np.ndarray):
    """t + k: in int32 where that provably fits (int32_sum), else in int64 (int16 layers near 2**31)."""
    x = e.emit(t.emit(e))
    wide = not int32_sum(t, k)
    want = "int64" if wide else "int32"
    if compat.tensor_dtype(x) != want:
        x = e.emit(R.astype(x, want))
    if np.any(k != 0):
        x = R.add(x, _int_const(k, want))
    return x


def _check_fixed_point(terms: list, ms: list) -> None:
    """sum_i (t_i + k_i) * M_i must fit int64: M_i < 2**31, so terms whose bound is known (every
    built-in rule's) must keep sum_i (bound_i + |k_i|) * 2**31 below 2**62 (headroom for the offset
    and the rounding add); an int64 accumulator of int16 codes near its own bound would not."""
    total = 0
    for t in terms:
        if t.bound is None:
            return
        total += (t.bound + int(np.abs(np.asarray(t.k)).max(initial=0))) * 2**31
    if total >= 2**62:
        raise NoMatch(f"int64 fixed-point requantization could overflow (|accumulator| up to "
                      f"{max(t.bound for t in terms):.3g}: int16 operands)")


def _float_requantizer(t: Term, m: np.ndarray, rank: int, z_y: int, dtype: str, lo: int, hi: int) -> Callable:
    """clamp(round_half_even(float32(t + k) * float32(m)) + zp_y, lo, hi) -> dtype (fixedpoint.py).
    R.round lowers to nearbyint (round half to even in the default mode) on every target; the
    zero point is added to the rounded value (exact in float32 wherever the clamp does not saturate)."""
    try:
        scale = float_scale(m)
    except ValueError as exc:
        raise NoMatch(str(exc)) from None
    k = rank_array(t.k, rank)

    def emit(e):
        x = e.emit(with_offset(e, t, k))
        f = e.emit(R.multiply(e.emit(R.astype(x, "float32")), compat.const(trim(scale))))
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
    x = with_offset(e, t, rank_array(t.k, rank))
    f = R.astype(e.emit(x), "float32")
    f = R.multiply(e.emit(f), compat.const(trim(rank_array(t.m, rank)).astype(np.float32)))
    if aff.offset is not None:
        f = R.add(e.emit(f), compat.const(trim(rank_array(aff.offset, rank)).astype(np.float32)))
    return f
