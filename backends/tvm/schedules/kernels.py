"""Integer kernels in a channels-last layout with weights packed at compile time (TE definitions).

All activations are NHWC (channels innermost, so a channel block is contiguous); weights are
constants, so they are re-laid out once here in numpy:

conv2d (groups = 1), x: [N, H, W, C] uint8, w: [O, C, KH, KW] int8 (OIHW), C4 = ceil(C/4)*4,
O16 = ceil(O/16)*16:

    Wp[o // 16, kh, kw, c // 4, o % 16, c % 4] = w[o, c, kh, kw]      (0 where o >= O or c >= C)
    xp = x zero-padded to [N, H + pt + pb, W + pl + pr, C4]
    y[n, h, w, o] = sum_{kh, kw, c < C4} xp[n, h*sh + kh*dh, w*sw + kw*dw, c] * Wp[o//16, kh, kw, c//4, o%16, c%4]

y has O16 channels (the caller slices back to O); each (o % 16, c % 4) tile is one vpdpbusd
(intrin.py). Zero padding is exact because the integer lowering pads with the zero point
explicitly (R.nn.pad) wherever zp_x != 0, and padded channels meet zero weights.

depthwise conv2d (groups = C = O, multiplier 1), w: [C, 1, KH, KW]:

    y[n, h, w, c] = sum_{kh, kw} xp[n, h*sh + kh*dh, w*sw + kw*dw, c] * wd[kh, kw, c]

(each product is formed in int16, exact since |u8 * s8| <= 255 * 128 < 2**15, so it vectorizes as
32-lane vpmullw instead of 16-lane vpmulld, then accumulates in int32)

dense (x: [M, K] uint8, w: [K, N] int8 constant):  Wp[n // 16, k // 4, n % 16, k % 4] = w[k, n],
    y[m, n] = sum_{k < K4} xp[m, k] * Wp[n//16, k//4, n%16, k%4]   (N16 columns; sliced by the caller)

The block names below are what schedule.py looks for in the fused functions.
"""

from __future__ import annotations

import numpy as np
from tvm import te

CONV_BLOCK = "qcc_conv2d_nhwc_vnni"
DW_BLOCK = "qcc_dwconv2d_nhwc"
DENSE_BLOCK = "qcc_dense_vnni"
PAD_BLOCK = "qcc_pad"


def ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def pack_conv_weight(w: np.ndarray) -> np.ndarray:
    """OIHW int8 -> [O16/16, KH, KW, C4/4, 16, 4]."""
    o, c, kh, kw = w.shape
    o16, c4 = ceil_to(o, 16), ceil_to(c, 4)
    wp = np.zeros((o16, c4, kh, kw), np.int8)
    wp[:o, :c] = w
    return np.ascontiguousarray(wp.reshape(o16 // 16, 16, c4 // 4, 4, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def pack_depthwise_weight(w: np.ndarray) -> np.ndarray:
    """[C, 1, KH, KW] int8 -> [KH, KW, C] int8."""
    return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))


def pack_dense_weight(w: np.ndarray) -> np.ndarray:
    """[K, N] int8 -> [N16/16, K4/4, 16, 4]."""
    k, n = w.shape
    k4, n16 = ceil_to(k, 4), ceil_to(n, 16)
    wp = np.zeros((k4, n16), np.int8)
    wp[:k, :n] = w
    return np.ascontiguousarray(wp.reshape(k4 // 4, 4, n16 // 16, 16).transpose(2, 0, 3, 1))


def _pad(x, pads, channels):
    """Zero-pad NHWC x spatially (pads = top, left, bottom, right) and in channels to `channels`."""
    n, h, w, c = (int(d) for d in x.shape)
    pt, pl, pb, pr = pads
    if not any(pads) and channels == c:
        return x
    shape = (n, h + pt + pb, w + pl + pr, channels)

    def f(i, y, z, k):
        inside = te.all(y >= pt, y < h + pt, z >= pl, z < w + pl, k < c)
        return te.if_then_else(inside, x[i, y - pt, z - pl, te.min(k, c - 1)], te.const(0, x.dtype))
    return te.compute(shape, f, name=PAD_BLOCK)


def conv2d_nhwc_packed(x, wp, strides, pads, dilation):
    """x: [N, H, W, C] uint8 placeholder, wp: packed weight placeholder -> y [N, Ho, Wo, O16] int32."""
    n, h, w, _ = (int(d) for d in x.shape)
    ob, kh, kw, cb, _, _ = (int(d) for d in wp.shape)
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = pads
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = _pad(x, pads, cb * 4)
    rh, rw, rc = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, cb * 4), "rc")
    return te.compute(
        (n, ho, wo, ob * 16),
        lambda i, y, z, o: te.sum(
            xp[i, y * sh + rh * dh, z * sw + rw * dw, rc].astype("int32")
            * wp[o // 16, rh, rw, rc // 4, o % 16, rc % 4].astype("int32"), axis=[rh, rw, rc]),
        name=CONV_BLOCK)


def depthwise_nhwc(x, wd, strides, pads, dilation):
    """x: [N, H, W, C] uint8/int8, wd: [KH, KW, C] int8 -> y [N, Ho, Wo, C] int32."""
    n, h, w, c = (int(d) for d in x.shape)
    kh, kw, _ = (int(d) for d in wd.shape)
    sh, sw = strides
    dh, dw = dilation
    pt, pl, pb, pr = pads
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = _pad(x, pads, c)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        (n, ho, wo, c),
        lambda i, y, z, k: te.sum(
            (xp[i, y * sh + rh * dh, z * sw + rw * dw, k].astype("int16") * wd[rh, rw, k].astype("int16"))
            .astype("int32"), axis=[rh, rw]),
        name=DW_BLOCK)


def dense_packed(x, wp):
    """x: [M, K] uint8, wp: [N16/16, K4/4, 16, 4] int8 -> y [M, N16] int32."""
    m, k = (int(d) for d in x.shape)
    nb, kb, _, _ = (int(d) for d in wp.shape)
    if kb * 4 != k:
        xk = x
        x = te.compute((m, kb * 4), lambda i, j: te.if_then_else(j < k, xk[i, te.min(j, k - 1)],
                                                                  te.const(0, xk.dtype)), name=PAD_BLOCK)
    r = te.reduce_axis((0, kb * 4), "rk")
    return te.compute(
        (m, nb * 16),
        lambda i, j: te.sum(x[i, r].astype("int32") * wp[j // 16, r // 4, j % 16, r % 4].astype("int32"), axis=r),
        name=DENSE_BLOCK)
