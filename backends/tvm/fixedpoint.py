"""Requantization: the arithmetic the TVM lowering emits, and its numpy twins.

A quantized layer produces an int32 accumulator ``acc`` whose real value is ``acc * m_in`` (for a
convolution ``m_in = s_x * s_w[c]``). Its quantized output is

    q = clamp(round_half_even(acc * m) + zp_y, lo, hi)        with m = m_in / s_y

(ONNX QuantizeLinear rounds half to even). Two forms compute it.

Float32 (one integer term, no real-valued offset: every conv / matmul / depthwise / mean layer), the
order of operations of onnxruntime's MLAS requantize (MlasRequantizeOutput):

    q = clamp(round_half_even(float32(acc + b) * float32(m)) + zp_y, lo, hi)

with ``b`` the int32 bias (zero-point correction folded in), one rounding of the float32 product
and the zero point added after rounding. The product is the last float operation before the
rounding, so no target can contract it into an FMA, and TVM's round lowers to nearbyint on every
target (x86 LLVM ``vroundps`` / aarch64 ``frinti`` in the current mode, ``nearbyintf`` in C and CUDA):
round to nearest even in the default rounding mode, bit-identical across targets.

``float32(acc + b)`` rounds accumulators beyond 2**24 (as MLAS does); the result stays within one
step of the exact one.

Fixed point (several terms sharing one output: an Add of two requantized inputs, or a real-valued
offset; a float sum of products there could be contracted into FMAs differently per target).
``m`` is a positive real; we write it as
``M * 2**-shift`` with a 31-bit integer ``M`` in [2**30, 2**31), so that for any int32 ``acc``
the product ``acc * M`` fits in int64 and the relative error of ``m`` is below 2**-31 - far below
float32's 2**-24. Then

    v = acc * M + B                                  (int64; B: extra constant offsets, see below)
    q = (v + 2**(shift-1) - 1 + ((v >> shift) & 1)) >> shift      (arithmetic shifts)

is ``v / 2**shift`` rounded half to even: with ``v = a * 2**shift + r`` (0 <= r < 2**shift) the
sum carries into ``a + 1`` exactly when ``r > half``, or ``r == half`` and ``a`` is odd.

``B`` carries real-valued offsets that are not integers in accumulator units (a float bias, or the
constant of a paddle ``Add(conv, c)``): ``B = round(b / s_y * 2**shift)``, i.e. the offset in
output steps with ``shift`` fractional bits.
"""

from __future__ import annotations

import numpy as np

MULT_BITS = 31          # M in [2**30, 2**31)
MAX_SHIFT = 62


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers (scalar or array, > 0) -> (M int64, shift int64) with m ~= M * 2**-shift."""
    m = np.asarray(m, dtype=np.float64)
    if np.any(~np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"requantization multipliers must be finite and >= 0, got {m.ravel()[:4]}")
    zero = m == 0                                # an all-zero weight channel: M = 0
    m = np.where(zero, 0.5, m)
    frac, exp = np.frexp(m)                      # m = frac * 2**exp, frac in [0.5, 1)
    shift = MULT_BITS - exp.astype(np.int64)
    mult = np.round(frac * 2.0 ** MULT_BITS).astype(np.int64)
    carry = mult == (1 << MULT_BITS)
    mult = np.where(carry, mult // 2, mult)
    shift = np.where(carry, shift - 1, shift)
    if np.any(shift < 1):
        raise ValueError(f"requantization multiplier {float(m.max())} is too large (>= 2**30)")
    # very small multipliers: cap the shift, keep as many bits as fit (the result is ~0 anyway)
    over = shift > MAX_SHIFT
    if np.any(over):
        mult = np.where(over, np.round(m * 2.0 ** MAX_SHIFT).astype(np.int64), mult)
        shift = np.where(over, MAX_SHIFT, shift)
    mult = np.where(zero, 0, mult)
    return mult, shift


def common_shift_multipliers(ms: list) -> tuple[list[np.ndarray], int]:
    """Several real multipliers sharing one shift (an Add of two requantized inputs):
    the largest gets a 31-bit M, the others as many bits as that shift allows."""
    arrays = [np.asarray(m, dtype=np.float64) for m in ms]
    biggest = max(float(a.max()) for a in arrays)
    _, shift = quantize_multiplier(biggest)
    shift = int(shift)
    mults = [np.round(a * 2.0 ** shift).astype(np.int64) for a in arrays]
    return mults, shift


def offset_fixed(real_offset, s_y, shift) -> np.ndarray:
    """A real-valued offset b (added before quantizing with scale s_y) as B = round(b / s_y * 2**shift)."""
    b = np.asarray(real_offset, dtype=np.float64) / float(s_y)
    return np.round(b * np.exp2(np.asarray(shift, dtype=np.float64))).astype(np.int64)


def round_shift_half_even(v: np.ndarray, shift) -> np.ndarray:
    """v / 2**shift rounded half to even, for int64 v and shift >= 1 (numpy reference)."""
    v = np.asarray(v, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half_m1 = (np.int64(1) << (shift - 1)) - 1
    odd = (v >> shift) & 1
    return (v + half_m1 + odd) >> shift


def requantize_reference(acc, mult, shift, zp, lo, hi, offset=0) -> np.ndarray:
    """numpy twin of the emitted code: clamp(round_half_even((acc * M + B) / 2**shift) + zp, lo, hi)."""
    v = np.asarray(acc, dtype=np.int64) * np.asarray(mult, dtype=np.int64) + np.asarray(offset, dtype=np.int64)
    return np.clip(round_shift_half_even(v, shift) + np.int64(zp), lo, hi)


def float_scale(m) -> np.ndarray:
    """Real multipliers -> the float32 scales of the float requantize (one rounding from float64)."""
    m = np.asarray(m, dtype=np.float64)
    if np.any(~np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"requantization multipliers must be finite and >= 0, got {m.ravel()[:4]}")
    if np.any(m.astype(np.float32) > np.finfo(np.float32).max):
        raise ValueError(f"requantization multiplier {float(m.max())} overflows float32")
    return m.astype(np.float32)


def requantize_float_reference(acc, scale, zp, lo, hi) -> np.ndarray:
    """numpy twin of the float requantize: clamp(round_half_even(float32(acc) * scale) + zp, lo, hi)
    for int32 ``acc`` (bias already added) and float32 ``scale``."""
    f = np.asarray(acc, dtype=np.int32).astype(np.float32) * np.asarray(scale, dtype=np.float32)
    return np.clip(np.round(f) + np.float32(zp), lo, hi).astype(np.int64)


def quantize_scalar(x: float, scale: float, zp: int, lo: int, hi: int) -> int:
    """ONNX QuantizeLinear of one float32 value (float32 division, round half to even, saturate)."""
    q = np.round(np.float32(x) / np.float32(scale))
    if not np.isfinite(q):
        return lo if q < 0 else hi
    return int(np.clip(q + zp, lo, hi))
