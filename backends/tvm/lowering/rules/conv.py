"""Convolutions: int8 / uint8 / int16 activation x constant int8 weight -> int32 (or int64) accumulator.

With x_f = s_x * (x - z_x) and w_f[o] = s_w[o] * w[o] (symmetric per-output-channel weights),

    conv(x_f, w_f)[o] = s_x * s_w[o] * (conv(x, w)[o] - z_x * conv(1, w)[o])

where conv(1, w)[o] = sum(w[o]) away from the borders: one term with multiplier s_x * s_w[o] and
integer offset -z_x * sum(w[o]) (the int32 bias). Zero padding of x_f is padding of x with z_x.

int16 activations (W8A16): the same conv on int16 x int8 codes. |conv(x, w)[o]| <= max|x| * sum|w[o]|
(the actual weight codes, max|x| = 32768 over the whole int16 range), so the accumulator is int32
when max_o of that is < 2**31 (provably no overflow, whatever the input), else int64 (exact; slower).
A dense conv (groups = 1) splits the int16 codes into two uint8 halves,

    x = 256 * (hi - 128) + lo,   hi = (x >> 8) + 128,  lo = x & 255
    conv(x, w) = 256 * (conv(hi, w) - 128 * sum(w)) + conv(lo, w)

two uint8 x int8 convs (each exact in int32 for any K < 66000: the int8 layers' packed kernels),
combined in int32 where the bound above (plus 255 * sum|w|) allows, else in int64. Depthwise and
grouped convs (9-element sums) stay one int16 x int8 conv.
"""

from __future__ import annotations

import numpy as np

from ... import compat
from ...compat import R
from ..ir import INT32_MAX, Affine, Term, accumulator, int8_weight_problem, max_code, rank_array
from ..registry import AffineRule, Unquantized, rule, unquantized


@rule
class Conv2d(AffineRule):
    """acc[o] = conv2d(x, w)[o] (int32), value = s_x * s_w[o] * (acc[o] - z_x * sum(w[o])).
    A nonzero z_x with padding pads x with z_x first, so the correction is the same everywhere.
    Grouped and depthwise convolutions are the same sum over each group's input channels."""
    pattern = ("relax.nn.conv2d",)
    onnx = ("Conv",)
    lowers_to = ("uint8/int8 x int8 -> int32 `conv2d` (incl. depthwise / grouped), per-channel float32 "
                 "requantization (MLAS order); int16 x int8 (W8A16): dense convs as two uint8 x int8 convs of the "
                 "codes' high / low bytes, depthwise / grouped directly; int32 where max|x| * sum|w[o]| < 2^31, "
                 "else int64")
    conditions = ("NCHW / OIHW; activation quantized per tensor (int8 / uint8 / int16); constant int8 weight, zero "
                  "point 0, scale per output channel; zp_x * sum(w) folded into the int32 bias (input padded with "
                  "zp_x where needed)")
    float_sink = True

    def check(self, low, call, var):
        a = call.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            return "conv2d layout other than NCHW/OIHW"
        if low.view(call.args[0]) is None:
            return unquantized("conv2d")
        w = low.weight(call.args[1])
        if w is None:
            return Unquantized("conv2d weight is not a constant quantized tensor")
        return int8_weight_problem(w, "conv2d", out_axis=0)

    def rewrite(self, low, call, var, rank) -> Affine:
        a = call.attrs
        x = low.view(call.args[0])
        wq, ws, _ = low.weight(call.args[1])
        O = wq.shape[0]
        sw = np.broadcast_to(ws, wq.shape)[:, 0, 0, 0].astype(np.float64)
        padding = compat.int_tuple(a.padding)
        strides, dilation, groups = compat.int_tuple(a.strides), compat.int_tuple(a.dilation), int(a.groups)
        sum_w = wq.reshape(O, -1).astype(np.int64).sum(axis=1)
        zx = x.zp
        pad_first = zx != 0 and any(padding)
        wconst = compat.const(wq, "int8")
        l1 = int(np.abs(wq.reshape(O, -1).astype(np.int64)).sum(axis=1).max())
        bound = max_code(x.dtype) * l1
        split = x.dtype == "int16" and groups == 1
        # split form: every intermediate is bounded by |conv(hi - 128)| * 256 + |conv(lo)|
        acc = accumulator(bound + 255 * l1 if split else bound)
        k_hi = compat.const((-128 * sum_w).reshape(O, 1, 1).astype(acc))

        def conv(data, pads, dtype):
            return R.nn.conv2d(data, wconst, strides=strides, padding=pads, dilation=dilation, groups=groups,
                               out_dtype=dtype)

        def emit(e, x=x, padding=padding):
            data = e.view_expr(x)
            pads = padding
            if pad_first or (split and any(padding)):
                top, left, bottom, right = padding
                data = e.emit(R.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx)))
                pads = [0, 0, 0, 0]
            if not split:
                return conv(data, pads, acc)
            # x = 256 * (hi - 128) + lo, hi = (x >> 8) + 128 and lo = x & 255 both uint8: two uint8 x int8
            # convs (int32 always exact: K * 255 * 127 < 2^31), the int8 kernels' fast path
            hi = e.emit(R.astype(e.emit(R.add(e.emit(R.right_shift(data, compat.const(np.int16(8)))),
                                              compat.const(np.int16(128)))), "uint8"))
            lo = e.emit(R.astype(e.emit(R.bitwise_and(data, compat.const(np.int16(255)))), "uint8"))
            c_hi, c_lo = e.emit(conv(hi, pads, "int32")), e.emit(conv(lo, pads, "int32"))
            if acc != "int32":
                c_hi, c_lo = e.emit(R.astype(c_hi, acc)), e.emit(R.astype(c_lo, acc))
            c_hi = e.emit(R.add(c_hi, k_hi))
            c_hi = e.emit(R.left_shift(c_hi, compat.const(np.array(8, acc))))
            return R.add(c_hi, c_lo)

        m = rank_array((x.scale * sw).reshape(O, 1, 1), rank)
        k = rank_array((-zx * sum_w).reshape(O, 1, 1), rank)
        kind = "conv2d" if groups == 1 else ("depthwise_conv2d" if wq.shape[1] == 1 else "grouped_conv2d")
        kind += wide_suffix(x.dtype, acc) + ("_split" if split else "")
        return Affine([Term(emit, m, k, x.sources, kind, acc, bound)], None, rank, [var])


def wide_suffix(dtype: str, acc: str) -> str:
    """The integer-op kind's suffix for int16 operands (W8A16) and an int64 accumulator."""
    return ("_w8a16" if dtype == "int16" else "") + ("_acc64" if acc == "int64" else "")


def transpose_bound(x, wq: np.ndarray) -> int:
    """max |conv2d_transpose(x, w)| over any input: max|x - z_x| (the int32 x int32 form subtracts it
    first) times the largest sum of |w| feeding one output (all of it, a safe over-estimate)."""
    per_out = np.abs(wq.astype(np.int64)).sum(axis=(0, 2, 3)).max()
    return (max_code(x.dtype) + abs(x.zp)) * int(per_out)


def conv_transpose_ones(wq: np.ndarray, groups: int, attrs: dict, in_hw, out_hw) -> np.ndarray:
    """conv2d_transpose(ones[C, H, W], w) as an int64 [O, Ho, Wo] map (numpy)."""
    I, Og, kh, kw = wq.shape
    wsum = wq.astype(np.int64).reshape(groups, I // groups, Og, kh, kw).sum(axis=1).reshape(groups * Og, kh, kw)
    (H, W), (Ho, Wo) = in_hw, out_hw
    sh, sw = attrs["strides"]
    dh, dw = attrs["dilation"]
    top, left = attrs["padding"][0], attrs["padding"][1]
    out = np.zeros((groups * Og, Ho, Wo), np.int64)
    for a in range(kh):
        ys = np.arange(H) * sh + a * dh - top
        ys = ys[(ys >= 0) & (ys < Ho)]
        for b in range(kw):
            xs = np.arange(W) * sw + b * dw - left
            xs = xs[(xs >= 0) & (xs < Wo)]
            out[:, ys[:, None], xs[None, :]] += wsum[:, a, b][:, None, None]
    return out


@rule
class Conv2dTranspose(AffineRule):
    """acc[o] = conv2d_transpose(x, w)[o] (int32), value = s_x * s_w[o] * (acc[o] - z_x * T[o]) with
    T = conv2d_transpose(ones, w): it depends on the output position (borders, stride phase) but not
    on the data, a compile-time int32 map for static spatial dims. With dynamic spatial dims the zero
    point is subtracted from x first (an int32 x int32 transposed convolution)."""
    pattern = ("relax.nn.conv2d_transpose",)
    onnx = ("ConvTranspose",)
    lowers_to = ("uint8/int8 x int8 -> int32 `conv2d_transpose` (int32 x int32 after subtracting zp_x when "
                 "zp_x != 0 and the spatial dims are dynamic)")
    conditions = ("NCHW / IOHW; activation quantized per tensor; constant int8 weight, zero point 0, scale per "
                  "output channel")
    float_sink = True

    def check(self, low, call, var):
        a = call.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "IOHW":
            return "conv2d_transpose layout other than NCHW/IOHW"
        if low.view(call.args[0]) is None:
            return unquantized("conv2d_transpose")
        w = low.weight(call.args[1])
        if w is None:
            return Unquantized("conv2d_transpose weight is not a constant quantized tensor")
        # output channel o = g * Og + j reads weight[g*I/g:(g+1)*I/g, j]: the scale must be per j (axis 1)
        why = int8_weight_problem(w, "conv2d_transpose", out_axis=1)
        if why is None and transpose_bound(low.view(call.args[0]), w[0]) > INT32_MAX:
            return ("conv2d_transpose of int16 codes: max|x| * sum|w| reaches 2^31 (the int32 accumulator could "
                    "overflow; no int64 form)")
        return why

    def rewrite(self, low, call, var, rank) -> Affine:
        a = call.attrs
        x = low.view(call.args[0])
        wq, ws, _ = low.weight(call.args[1])
        groups = int(a.groups)
        sw = np.tile(np.broadcast_to(ws, wq.shape)[0, :, 0, 0].astype(np.float64), groups)
        O = wq.shape[1] * groups
        attrs = dict(strides=compat.int_tuple(a.strides), padding=compat.int_tuple(a.padding),
                     output_padding=compat.int_tuple(a.output_padding), dilation=compat.int_tuple(a.dilation),
                     groups=groups)
        zx = x.zp
        wconst = compat.const(wq, "int8")
        in_shape, out_shape = compat.tensor_shape(call.args[0]), compat.tensor_shape(var)
        static = all(isinstance(d, int) for d in in_shape[2:] + out_shape[2:])
        k = np.zeros((1,) * rank, np.int64)
        if zx != 0 and static:
            k = rank_array(-zx * conv_transpose_ones(wq, groups, attrs, in_shape[2:], out_shape[2:]), rank)
        w32 = compat.const(wq, "int32")

        def emit(e, x=x):
            data = e.view_expr(x)
            if zx != 0 and not static:
                # dynamic spatial dims: subtract the zero point on the input (int32 x int32)
                data = e.emit(R.subtract(R.astype(data, "int32"), compat.const(np.int32(zx))))
                return R.nn.conv2d_transpose(data, w32, out_dtype="int32", **attrs)
            return R.nn.conv2d_transpose(data, wconst, out_dtype="int32", **attrs)

        m = rank_array((x.scale * sw).reshape(O, 1, 1), rank)
        return Affine([Term(emit, m, k, x.sources, "conv2d_transpose" + wide_suffix(x.dtype, "int32"), "int32",
                            transpose_bound(x, wq))], None, rank, [var])
