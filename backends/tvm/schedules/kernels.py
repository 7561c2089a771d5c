"""Integer kernels in a channels-last layout with weights packed at compile time (TE definitions).

All activations are NHWC (channels innermost, so a channel block is contiguous); weights are
constants, so they are re-laid out once here in numpy:

conv2d (groups = 1), x: [N, H, W, C] uint8, w: [O, C, KH, KW] int8 (OIHW), C4 = ceil(C/4)*4,
O16 = ceil(O/16)*16:

    Wp[o // 16, kh, kw, c // 4, o % 16, c % 4] = w[o, c, kh, kw]      (0 where o >= O or c >= C)
    xp = x zero-padded to [N, H + pt + pb, W + pl + pr, C4]
    y[n, h, w, o] = sum_{kh, kw, c < C4} xp[n, h*sh + kh*dh, w*sw + kw*dw, c] * Wp[o//16, kh, kw, c//4, o%16, c%4]

y has O16 channels (the caller slices back to O); each (o % 16, c % 4) tile is one vpdpbusd
(intrin.py). Without VNNI (AVX2) the weights are packed k-major, [.., C4/4, 4, 16], and each of
the 4 input channels is a 16-lane int32 product of 8-bit operands (LLVM emits vpmaddwd for it:
exact, unlike vpmaddubsw, which saturates its int16 pair sums). Zero padding is exact because the integer lowering pads with the zero point
explicitly (R.nn.pad) wherever zp_x != 0, and padded channels meet zero weights.

depthwise conv2d (groups = C = O, multiplier 1), w: [C, 1, KH, KW]:

    y[n, h, w, c] = sum_{kh, kw} xp[n, h*sh + kh*dh, w*sw + kw*dw, c] * wd[kh, kw, c]

(int32 products of 8-bit operands: LLVM sees both fit in 16 bits and emits one vpmaddwd per 16
lanes, where int16 products cost a vpmullw plus a widening shuffle)

depthwise conv2d on VNNI (uint8 x, C64 = ceil(C/64)*64): vpdpbusd sums 4 byte products per int32
lane; with "diagonal" weights that are zero in all byte slots of a lane but one, each lane
accumulates one channel. A 64-byte vector of x holds 64 channels; for r in 0..3 the weight vector
with slot r live gives lane j the channel in byte 4j + r. For the result to come out in natural
channel order, x arrives in *lane order*: position p = 64g + 4j + b holds natural channel
nat(p) = 64g + 16b + j (its producer's output channels are permuted at compile time, layout.py), so

    acc[g, r, j] = sum_{kh, kw} x[.., 64g + 4j + r] * w[64g + 16r + j]  = channel 64g + 16r + j,
    wv[kh, kw, g, r, j, b] = w[64g + 16r + j, kh, kw] if b == r else 0

One vpdpbusd does 16 useful multiply-accumulates (of its 64), against 16 per 3 instructions
(widen, vpmaddwd, add) for the int32-product kernel, and no shuffles.

dense (x: [M, K] uint8, w: [K, N] int8 constant):  Wp[n // 16, k // 4, n % 16, k % 4] = w[k, n],
    y[m, n] = sum_{k < K4} xp[m, k] * Wp[n//16, k//4, n%16, k%4]   (N16 columns; sliced by the caller)
A symbolic M (a dynamic batch or sequence length) is padded to M4 = ceil(M / ROW_TILE) * ROW_TILE
zero rows (sliced by the caller too): the schedule's row tile then divides M4, and the tile needs
no bounds predicate, which TVM cannot tensorize under (one row per tile instead: 1.5x slower).

The block names below are what schedule.py looks for in the fused functions.
"""

from __future__ import annotations

import math

import numpy as np
from tvm import te, tirx

from .. import compat

CONV_BLOCK = "qcc_conv2d_nhwc_vnni"
DW_BLOCK = "qcc_dwconv2d_nhwc"
DW_VNNI_BLOCK = "qcc_dwconv2d_vnni"
DENSE_BLOCK = "qcc_dense_vnni"
PAD_BLOCK = "qcc_pad"
ROW_TILE = 4   # schedule_dense's row tile on VNNI


def ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def dims(shape) -> list:
    """A TE shape as ints where static, the TIR expression where symbolic (a dynamic batch, sequence
    length or image size stays a loop bound of the kernel)."""
    return [int(d) if isinstance(d, tirx.IntImm) else d for d in shape]


def pack_conv_weight(w: np.ndarray, kmajor: bool = False) -> np.ndarray:
    """OIHW int8 -> [O16/16, KH, KW, C4/4, 16, 4] (VNNI), or [.., C4/4, 4, 16] with kmajor (AVX2:
    each of the 4 input channels a contiguous 16-lane row)."""
    o, c, kh, kw = w.shape
    o16, c4 = ceil_to(o, 16), ceil_to(c, 4)
    wp = np.zeros((o16, c4, kh, kw), np.int8)
    wp[:o, :c] = w
    order = (0, 4, 5, 2, 3, 1) if kmajor else (0, 4, 5, 2, 1, 3)
    return np.ascontiguousarray(wp.reshape(o16 // 16, 16, c4 // 4, 4, kh, kw).transpose(*order))


def is_kmajor(wp) -> bool:
    """A packed weight in the AVX2 layout ([.., 4, 16]) rather than VNNI's ([.., 16, 4])."""
    return int(wp.shape[-1]) == 16 and int(wp.shape[-2]) == 4


def pack_depthwise_weight(w: np.ndarray) -> np.ndarray:
    """[C, 1, KH, KW] int8 -> [KH, KW, C] int8."""
    return np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))


def lane_order(c: int) -> np.ndarray:
    """nat[p]: the natural channel at lane-order position p, for p < ceil(c/64)*64 (>= c: padding)."""
    p = np.arange(ceil_to(c, 64))
    return 64 * (p // 64) + 16 * (p % 4) + (p % 64) // 4


def to_lane_order(a: np.ndarray, axis: int) -> np.ndarray:
    """a's `axis` (c entries, natural order) as ceil(c/64)*64 entries in lane order, zero padded."""
    c = a.shape[axis]
    nat = lane_order(c)
    out = np.take(a, np.minimum(nat, c - 1), axis=axis)
    keep = (nat < c).reshape([-1 if i == axis % a.ndim else 1 for i in range(a.ndim)])
    return np.ascontiguousarray(np.where(keep, out, np.zeros((), a.dtype)))


def pack_depthwise_weight_vnni(w: np.ndarray) -> np.ndarray:
    """[C, 1, KH, KW] int8 -> diagonal [KH, KW, C64/64, 4, 16, 4] (see the module docstring)."""
    c, _, kh, kw = w.shape
    g = ceil_to(c, 64) // 64
    wn = np.zeros((g * 64, kh, kw), np.int8)
    wn[:c] = w[:, 0]
    wn = wn.reshape(g, 4, 16, kh, kw).transpose(3, 4, 0, 1, 2)     # [kh, kw, g, r, j]
    wv = np.zeros((kh, kw, g, 4, 16, 4), np.int8)
    for r in range(4):
        wv[:, :, :, r, :, r] = wn[:, :, :, r, :]
    return wv


def pack_dense_weight(w: np.ndarray, kmajor: bool = False) -> np.ndarray:
    """[K, N] int8 -> [N16/16, K4/4, 16, 4] (VNNI), or [N16/16, K4/4, 4, 16] with kmajor (AVX2)."""
    k, n = w.shape
    k4, n16 = ceil_to(k, 4), ceil_to(n, 16)
    wp = np.zeros((k4, n16), np.int8)
    wp[:k, :n] = w
    return np.ascontiguousarray(wp.reshape(k4 // 4, 4, n16 // 16, 16).transpose(*((2, 0, 1, 3) if kmajor else (2, 0, 3, 1))))


def _pad(x, pads, channels):
    """Zero-pad NHWC x spatially (pads = top, left, bottom, right) and in channels to `channels`."""
    n, h, w, c = dims(x.shape)
    pt, pl, pb, pr = pads
    if not any(pads) and channels == c:
        return x
    shape = (n, compat.simplify(h + pt + pb), compat.simplify(w + pl + pr), channels)

    def f(i, y, z, k):
        inside = te.all(y >= pt, y < h + pt, z >= pl, z < w + pl, k < c)
        return te.if_then_else(inside, x[i, y - pt, z - pl, te.min(k, c - 1)], te.const(0, x.dtype))
    return te.compute(shape, f, name=PAD_BLOCK)


def _out_hw(h, w, kh, kw, strides, pads, dilation) -> tuple[int, int]:
    """Output height and width of a 2-D window op (pads = top, left, bottom, right)."""
    pt, pl, pb, pr = pads
    # canonical symbolic extents: FuseTIR compares one value's shape across the functions reading it
    # structurally, so (H - 1) // 4 + 1 + 1 - 1 must read (H - 1) // 4 + 1
    return (compat.simplify((h + pt + pb - dilation[0] * (kh - 1) - 1) // strides[0] + 1),
            compat.simplify((w + pl + pr - dilation[1] * (kw - 1) - 1) // strides[1] + 1))


def conv2d_nhwc_packed(x, wp, strides, pads, dilation):
    """x: [N, H, W, C] uint8 placeholder, wp: packed weight placeholder -> y [N, Ho, Wo, O16] int32."""
    n, h, w, _ = dims(x.shape)
    ob, kh, kw, cb, _, _ = (int(d) for d in wp.shape)
    sh, sw = strides
    dh, dw = dilation
    ho, wo = _out_hw(h, w, kh, kw, strides, pads, dilation)
    xp = _pad(x, pads, cb * 4)
    kmajor = is_kmajor(wp)
    rh, rw, rc = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, cb * 4), "rc")
    return te.compute(
        (n, ho, wo, ob * 16),
        lambda i, y, z, o: te.sum(
            xp[i, y * sh + rh * dh, z * sw + rw * dw, rc].astype("int32")
            * (wp[o // 16, rh, rw, rc // 4, rc % 4, o % 16] if kmajor else
               wp[o // 16, rh, rw, rc // 4, o % 16, rc % 4]).astype("int32"), axis=[rh, rw, rc]),
        name=CONV_BLOCK)


def depthwise_nhwc(x, wd, strides, pads, dilation):
    """x: [N, H, W, C] uint8/int8, wd: [KH, KW, C] int8 -> y [N, Ho, Wo, C] int32."""
    n, h, w, c = dims(x.shape)
    kh, kw, _ = (int(d) for d in wd.shape)
    sh, sw = strides
    dh, dw = dilation
    ho, wo = _out_hw(h, w, kh, kw, strides, pads, dilation)
    xp = _pad(x, pads, c)
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    return te.compute(
        (n, ho, wo, c),
        lambda i, y, z, k: te.sum(
            xp[i, y * sh + rh * dh, z * sw + rw * dw, k].astype("int32") * wd[rh, rw, k].astype("int32"),
            axis=[rh, rw]),
        name=DW_BLOCK)


def depthwise_nhwc_vnni(x, wv, strides, pads, dilation):
    """x: [N, H, W, C64] uint8 in lane order, wv: pack_depthwise_weight_vnni -> y [N, Ho, Wo, C64]
    int32 in natural channel order (channels >= C are zero)."""
    n, h, w, c64 = dims(x.shape)
    kh, kw = (int(d) for d in wv.shape[:2])
    sh, sw = strides
    dh, dw = dilation
    ho, wo = _out_hw(h, w, kh, kw, strides, pads, dilation)
    xp = _pad(x, pads, c64)
    rh, rw, rb = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, 4), "rb")
    return te.compute(
        (n, ho, wo, c64),
        lambda i, y, z, c: te.sum(
            xp[i, y * sh + rh * dh, z * sw + rw * dw, (c // 64) * 64 + (c % 16) * 4 + rb].astype("int32")
            * wv[rh, rw, c // 64, (c % 64) // 16, c % 16, rb].astype("int32"), axis=[rh, rw, rb]),
        name=DW_VNNI_BLOCK)


def _flat(idx, dims):
    """Row-major flat index of `idx` in `dims`."""
    f = 0
    for i, d in zip(idx, dims):
        f = f * d + i
    return f


def pack_rhs(b):
    """Run-time packing of an activation right-hand side b: [.., K, N] uint8 / int8 -> [B, N16/16,
    K4/4, 16, 4] int8 (B = product of the leading dims, zero padded). uint8 is stored as b - 128,
    so that a @ b = a @ (b - 128) + 128 * rowsum(a) runs on vpdpbusd (uint8 x int8)."""
    *lead, k, n = dims(b.shape)
    bt = math.prod(lead)
    nb, kb = ceil_to(n, 16) // 16, ceil_to(k, 4) // 4
    shift = 128 if b.dtype == "uint8" else 0

    def f(i, jb, qb, j, q):
        kk, nn = qb * 4 + q, jb * 16 + j
        idx, rest = [], i
        for d in reversed(lead):       # the flat batch index back to the leading dims
            idx.insert(0, rest % d)
            rest = rest // d
        v = b[(*idx, te.min(kk, k - 1), te.min(nn, n - 1))].astype("int32") - shift
        return te.if_then_else(te.all(kk < k, nn < n), v, 0).astype("int8")
    return te.compute((bt, nb, kb, 16, 4), f, name="qcc_pack_rhs")


def batch_dense_packed(x, wp):
    """x: [.., M, K] uint8, wp: pack_rhs of b [.., K, N] -> y [.., M, N16] int32 (per-batch dense)."""
    *lead, m, k = dims(x.shape)
    _, nb, kb, _, _ = (int(d) for d in wp.shape)
    x = _pad_k(x, kb * 4)
    r = te.reduce_axis((0, kb * 4), "rk")
    return te.compute(
        (*lead, m, nb * 16),
        lambda *i: te.sum(x[(*i[:-1], r)].astype("int32")
                          * wp[_flat(i[:-2], lead), i[-1] // 16, r // 4, i[-1] % 16, r % 4].astype("int32"),
                          axis=r),
        name=DENSE_BLOCK)


def dense_packed(x, wp, row_tile: int = 1):
    """x: [.., M, K] uint8, wp: [N16/16, K4/4, 16, 4] int8 -> y [.., padded_rows(M, row_tile), N16]
    int32 (the caller takes the first M rows: first_rows). The leading dims stay (no reshape around the
    kernel, which would stop FuseOps from fusing the epilogue)."""
    nb, kb, _, _ = (int(d) for d in wp.shape)
    x = _pad_k(x, kb * 4, row_tile)
    *lead4, _ = dims(x.shape)
    kmajor = is_kmajor(wp)
    r = te.reduce_axis((0, kb * 4), "rk")
    return te.compute(
        (*lead4, nb * 16),
        lambda *i: te.sum(x[(*i[:-1], r)].astype("int32")
                          * (wp[i[-1] // 16, r // 4, r % 4, i[-1] % 16] if kmajor else
                             wp[i[-1] // 16, r // 4, i[-1] % 16, r % 4]).astype("int32"), axis=r),
        name=DENSE_BLOCK)


def first_rows(y, rows, cols: int):
    """y[.., :rows, :cols]: both slices as one injective copy, which FuseOps fuses into the kernel's
    epilogue (schedule.py inlines it there)."""
    *lead, _, _ = dims(y.shape)
    return te.compute((*lead, rows, cols), lambda *i: y[i], name="qcc_first_rows")


def pads_rows(rows, row_tile: int) -> bool:
    """Whether a dense kernel pads its rows: a symbolic row count and a row tile."""
    return not isinstance(rows, int) and row_tile > 1


def padded_rows(rows, row_tile: int):
    """The row count a dense kernel computes: a symbolic `rows` rounded up to a multiple of row_tile."""
    if not pads_rows(rows, row_tile):
        return rows
    return compat.simplify((rows + row_tile - 1) // row_tile * row_tile)


def _pad_k(x, k4: int, row_tile: int = 1):
    """x zero-padded along its last axis to k4 (and its rows to padded_rows). The row test is its
    own (scalar) condition outside the vectorized k loop, so a padded row loads nothing; the k index
    is clamped because the k test becomes a per-lane select that loads both sides. (Clamping the
    symbolic row too makes TVM class the kernel opaque, and FuseOps would not fuse its epilogue.)"""
    *lead, m, k = dims(x.shape)
    pad_rows = pads_rows(m, row_tile)
    if k4 == k and not pad_rows:
        return x
    zero = te.const(0, x.dtype)

    def value(*i):
        v = x[i] if k4 == k else te.if_then_else(i[-1] < k, x[(*i[:-1], te.min(i[-1], k - 1))], zero)
        return te.if_then_else(i[-2] < m, v, zero) if pad_rows else v
    return te.compute((*lead, padded_rows(m, row_tile), k4), value, name=PAD_BLOCK)
