"""Shape integer convolutions so LLVM emits Arm's int8 dot-product instruction (sdot).

``sdot`` multiplies four signed int8 pairs and adds them into an int32 lane. LLVM forms it from a
vectorised reduction ``acc += int32(a[i]) * int32(b[i])`` over *contiguous* signed int8 operands.
The lowered module (lowering/) has neither property: activations are often uint8 and convolutions
are NCHW / OIHW, whose innermost reduction (the kernel width, 1 or 3) is short and whose
input-channel reduction is strided. Two exact rewrites fix that:

1. Signed activations. For a uint8 activation x define the int8 tensor s = x - 128. Then

       conv2d(x, w, pad=p) = conv2d(pad(s, p, value=-128), w, pad=0) + 128 * sum_{c,kh,kw} w[o, c, kh, kw]
       matmul(x, w)        = matmul(s, w) + 128 * sum_k w[k, n]

   (zero padding of x is padding with -128 in s; grouped convs sum each output channel's own
   kernel). Pattern: ``R.nn.conv2d`` / ``R.matmul`` with a uint8 activation, a constant int8 weight
   and an int32 result. Check: int32 cannot overflow more than before (|s| <= 128 like |x - zp|).
   Rewrite: as above, the correction a constant int32 [1, O, 1, 1] / [N] tensor.

2. Channels-last. A dense (groups = 1) convolution becomes

       conv2d_NCHW(s, w) = transpose_NHWC->NCHW(conv2d_NHWC(transpose_NCHW->NHWC(s), w_OHWI))

   with w_OHWI = w transposed once at compile time, so the reduction over input channels is
   innermost and contiguous for both operands. Depthwise / grouped convs keep NCHW: their
   reduction is only the kernel window, and channels-last there costs compile time for nothing.

Integer sums are exact in any order, so the result is bit-identical to the x86 build's.
"""

from __future__ import annotations

import numpy as np
from qcc.errors import QccError

from . import compat
from .compat import R, relax

_SHIFT = 128


def _is_const_int8(expr) -> bool:
    return isinstance(expr, compat.Constant) and compat.tensor_dtype(expr) == "int8"


@compat.mutator
class _Rewriter(compat.PyExprMutator):
    """Rewrites 1 and 2 on every int8 / uint8 x constant int8 conv2d and matmul."""

    def __init__(self, mod):
        super().__init__(mod)
        self.mod_ = mod
        self.rewritten = 0

    def _signed(self, x):
        wide = self.builder_.emit(R.astype(x, "int16"))
        return self.builder_.emit(R.astype(R.subtract(wide, compat.const(np.int16(_SHIFT))), "int8"))

    def visit_call_(self, call):
        call = super().visit_call_(call)
        name = compat.op_name(call)
        if name not in ("relax.nn.conv2d", "relax.matmul") or len(call.args) < 2:
            return call
        x, w = call.args[0], call.args[1]
        x_dtype = compat.tensor_dtype(x)
        if x_dtype not in ("uint8", "int8") or not _is_const_int8(w) or str(call.attrs.out_dtype) != "int32":
            return call
        wq = compat.const_numpy(w)
        unsigned = x_dtype == "uint8"
        if name == "relax.matmul":
            if not unsigned or wq.ndim != 2:
                return call
            acc = self.builder_.emit(R.matmul(self._signed(x), w, out_dtype="int32"))
            self.rewritten += 1
            return self._corrected(acc, wq.astype(np.int64).sum(axis=0))
        attrs = call.attrs
        if str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW":
            return call
        groups = int(attrs.groups)
        if not unsigned and groups != 1:
            return call
        pads = compat.int_tuple(attrs.padding)
        s = x
        if unsigned:
            s = self._signed(x)
            if any(pads):   # x's zero padding is -128 in s
                top, left, bottom, right = pads
                s = self.builder_.emit(R.nn.pad(s, [0, 0, 0, 0, top, bottom, left, right],
                                                pad_value=float(-_SHIFT)))
                pads = [0, 0, 0, 0]
        conv = {"strides": attrs.strides, "padding": pads, "dilation": attrs.dilation, "groups": groups,
                "out_dtype": "int32"}
        if groups == 1:
            s_nhwc = self.builder_.emit(R.permute_dims(s, [0, 2, 3, 1]))
            w_ohwi = compat.const(np.ascontiguousarray(wq.transpose(0, 2, 3, 1)))
            acc = self.builder_.emit(R.nn.conv2d(s_nhwc, w_ohwi, data_layout="NHWC", kernel_layout="OHWI", **conv))
            acc = R.permute_dims(acc, [0, 3, 1, 2])
        else:
            acc = R.nn.conv2d(s, w, **conv)
        self.rewritten += 1
        if not unsigned:
            return acc
        corr = wq.astype(np.int64).sum(axis=(1, 2, 3)).reshape(1, -1, 1, 1)
        return self._corrected(self.builder_.emit(acc), corr)

    def _corrected(self, acc, wsum: np.ndarray):
        corr = _SHIFT * wsum
        if np.abs(corr).max(initial=0) >= 2 ** 31:   # |w| <= 128: only for absurd reduction sizes
            raise QccError("int32 overflow in the signed-activation correction")
        return R.add(acc, compat.const(corr.astype(np.int32)))

    def transform(self):
        for gv, func in self.mod_.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


def prepare(mod):
    """Both rewrites. Returns (module, number of conv2d / matmul calls rewritten)."""
    rw = _Rewriter(mod)
    return rw.transform(), rw.rewritten
