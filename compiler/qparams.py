"""Scales and zero points, and the quantize / dequantize arithmetic ONNX defines.

Integer types (ONNX QuantizeLinear semantics, round half to even):
    q = clamp(round(x / s) + z, qmin, qmax)          x_hat = (q - z) * s
    asymmetric:  s = (hi - lo) / (qmax - qmin),  z = round(qmin - lo / s)
    symmetric:   s = max(|lo|, |hi|) / ((qmax - qmin) / 2),  z = 0 (int) or 128 (uint8)
    weights:     symmetric with the narrow range [-(2^(b-1) - 1), 2^(b-1) - 1]: s = absmax / (2^(b-1) - 1)
    power of two: s <- 2^ceil(log2 s)   (a shift on integer targets; never clips more than s did)
FP8 (E4M3 / E5M2): q = saturate(round_fp8(x / s)), s = absmax / fp8_max, zero point 0.
"""

from __future__ import annotations

import numpy as np

from .qtypes import QType

_TINY = np.float32(1e-12)


def range_to_qparams(lo: float, hi: float, qtype: QType, symmetric: bool,
                     power_of_two: bool = False) -> tuple[np.float32, int]:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if qtype.is_float:
        scale = max(abs(lo), abs(hi)) / qtype.qmax
        return _finish(scale, power_of_two), 0
    if symmetric:
        m = max(-lo, hi)
        if qtype == QType.UINT8 and lo >= 0:
            scale = m / 255.0  # a non-negative tensor uses the full unsigned range with z = 0
            return _finish(scale, power_of_two), 0
        scale = _finish(m / ((qtype.qmax - qtype.qmin) / 2.0), power_of_two)
        return scale, (128 if qtype == QType.UINT8 else 0)
    scale = _finish((hi - lo) / (qtype.qmax - qtype.qmin), power_of_two)
    zp = int(np.clip(np.rint(qtype.qmin - lo / scale), qtype.qmin, qtype.qmax))
    return scale, zp


def _finish(scale: float, power_of_two: bool) -> np.float32:
    scale = np.float32(max(scale, _TINY))
    if power_of_two:
        scale = np.float32(2.0 ** np.ceil(np.log2(scale)))
    return scale


def weight_scales(w: np.ndarray, qtype: QType, axis: int | None, power_of_two: bool = False) -> np.ndarray:
    """Symmetric weight scales, per channel along `axis` (or one per tensor when axis is None)."""
    a = np.abs(w.astype(np.float32))
    if axis is None:
        amax = np.array(a.max() if a.size else 0.0, dtype=np.float32)
    else:
        amax = a.max(axis=tuple(i for i in range(w.ndim) if i != axis))
    scale = (amax / np.float32(qtype.qmax)).astype(np.float32)
    # An all-zero channel (pruned, dead BatchNorm) quantizes to 0 at any scale; give it the largest
    # channel's scale so its int32 bias (scale s_x * s_w) keeps its resolution and range.
    live = scale > 0
    scale = np.where(live, scale, scale.max() if live.any() else np.float32(1.0)).astype(np.float32)
    if power_of_two:
        scale = (2.0 ** np.ceil(np.log2(scale))).astype(np.float32)
    return scale


def _broadcast(v: np.ndarray | float, ndim: int, axis: int | None) -> np.ndarray:
    v = np.asarray(v)
    if axis is None or v.ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize_values(x: np.ndarray, scale, zero_point, qtype: QType, axis: int | None = None,
                    narrow: bool = False) -> np.ndarray:
    """Quantize like ONNX QuantizeLinear (saturating). `narrow` drops qmin (symmetric weights)."""
    x = np.asarray(x, dtype=np.float32)
    s = _broadcast(np.asarray(scale, dtype=np.float32), x.ndim, axis)
    if qtype.is_float:
        y = np.clip(x / s, qtype.qmin, qtype.qmax)
        return y.astype(qtype.numpy_dtype)
    z = _broadcast(np.asarray(zero_point, dtype=np.float64), x.ndim, axis)
    qmin = qtype.qmin + 1 if narrow else qtype.qmin
    q = np.clip(np.rint(x / s) + z, qmin, qtype.qmax)  # float32 division, as ONNX does
    return q.astype(qtype.numpy_dtype)


def dequantize_values(q: np.ndarray, scale, zero_point, axis: int | None = None) -> np.ndarray:
    s = _broadcast(np.asarray(scale, dtype=np.float32), q.ndim, axis)
    z = _broadcast(np.asarray(zero_point, dtype=np.float32), q.ndim, axis)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)
