"""Channels-last rewrite of integer Relax, with qcc's packed int8 kernels substituted.

The integer lowering emits NCHW ops. For every rank-4 value v computed by a rule below, this pass
emits its NHWC twin t(v) = permute_dims(v, [0, 2, 3, 1]) computed directly, and rebinds
v := permute_dims(t(v), [0, 3, 1, 2]), so consumers the pass does not know still see NCHW; dead-code
elimination then drops every permute nobody reads. Consecutive int8 layers therefore stay
channels-last end to end, with one permute at the graph input and one where the image ends.

Rules (t(.) of an operand: its twin, or a permute of it, or a constant permuted in numpy):

    conv2d(x, w) int32, groups = 1, x uint8, w const   ->  slice_C(qcc conv2d_nhwc_packed(t(x), pack(w)))
    conv2d(x, w) int32, groups = C = O (depthwise)     ->  qcc depthwise_nhwc(t(x), pack(w))
        or, on VNNI when x is uint8 and computed by a chain conv2d -> elementwise ops (each value
        read once) ->  qcc depthwise_nhwc_vnni(L(t(x)), pack_vnni(w)), where L(.) is x in the
        kernel's lane order (kernels.py): the chain's conv gets its output channels (weight rows,
        zero-padded to a multiple of 64) and the chain's per-channel constants permuted the same
        way at compile time, so nothing is shuffled at run time
    elementwise f(a, b, ...) (add, shifts, astype, clip, ...)  ->  f(t(a), t(b), ...)
    quantize / dequantize(x, s, z, axis)               ->  the same of t(x), axis moved to its NHWC place
        (element by element: a float region's quantize then fuses into the kernel that computes
        its input, a conv's float epilogue, instead of a transpose + quantize pass over float32)
    sum / mean over axes {2, 3}                        ->  the same over {1, 2}
    max_pool2d / avg_pool2d                            ->  layout="NHWC"
    concat(axis=1)                                     ->  concat(axis=3)
    pad(pad_width over N, C, H, W)                     ->  pad over N, H, W, C
    matmul(x uint8 [.., K], w const int8 [K, N]) int32 ->  slice_N(qcc dense_packed(x, pack(w)))
    matmul(x uint8 [.., M, K], b uint8 [.., K, N]) int32 (activations, e.g. attention)
                                                       ->  batch_dense_packed(x, pack_rhs(b - 128))
                                                           + 128 * rowsum(x)   (int8 b: no shift)

An elementwise op is rewritten only when one operand already has a twin (a graph that never meets a
conv keeps its layout). Symbolic dims (batch, sequence length, image size) pass through to the
kernels as loop bounds; channel and weight dims must be static.
"""

from __future__ import annotations

import numpy as np

from .. import compat
from ..compat import R, relax
from . import kernels

TO_NHWC = [0, 2, 3, 1]
TO_NCHW = [0, 3, 1, 2]

ELEMENTWISE = {
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.floor_divide",
    "relax.right_shift", "relax.left_shift", "relax.bitwise_and", "relax.bitwise_or",
    "relax.bitwise_xor", "relax.maximum", "relax.minimum", "relax.power",
}
UNARY = {"relax.astype", "relax.clip", "relax.nn.relu", "relax.round", "relax.floor", "relax.ceil",
         "relax.abs", "relax.negative", "relax.sigmoid", "relax.tanh", "relax.exp", "relax.sqrt",
         "relax.nn.gelu", "relax.nn.silu", "relax.erf"}


def _static_shape(expr) -> list[int] | None:
    shape = compat.tensor_shape(expr)
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return shape


def _numel(shape) -> int:
    """Elements of a shape counting each symbolic dim once (MAC counts are per unit of a dynamic dim)."""
    return int(np.prod([d for d in shape if isinstance(d, int)]))


def _const_nhwc(a: np.ndarray) -> np.ndarray | None:
    """A constant operand of a rank-4 NCHW op as its NHWC counterpart (None if rank > 4)."""
    if a.ndim == 0:
        return a
    if a.ndim > 4:
        return None
    return np.ascontiguousarray(a.reshape((1,) * (4 - a.ndim) + a.shape).transpose(TO_NHWC))


@compat.mutator
class _ChannelsLast(compat.PyExprMutator):
    def __init__(self, mod, vnni: bool, avx2: bool = False):
        super().__init__(mod)
        self.mod_ = mod
        self.vnni = vnni
        self.gemm = vnni or avx2        # packed int8 conv / dense kernels (k-major weights without VNNI)
        self.isa = "vnni" if vnni else "avx2"
        self.twin: dict = {}       # new NCHW var -> its NHWC twin
        self.lane: dict = {}       # NHWC twin in lane order (kernels.lane_order) -> natural channel count
        self.counts: dict = {}
        self.macs: dict = {}       # rule -> multiply-accumulates it carries (per inference)
        # original vars: convs / chain values to compute in lane order, depthwise convs reading them
        self.lane_vars, self.lane_dw = _lane_order_chains(mod["main"]) if vnni else (set(), set())

    # -- operands ---------------------------------------------------------------------------
    def nhwc(self, expr):
        """The NHWC form of an operand of a rank-4 op."""
        if isinstance(expr, compat.Constant):
            a = _const_nhwc(compat.const_numpy(expr))
            return compat.const(a) if a is not None else None
        if expr in self.twin:
            t = self.twin[expr]
            return self._natural(t) if t in self.lane else t
        shape = compat.tensor_shape(expr)
        if shape is None or len(shape) not in (0, 4):
            return None
        if len(shape) == 0:
            return expr
        t = self.builder_.emit(R.permute_dims(expr, TO_NHWC))
        self.twin[expr] = t
        return t

    def _natural(self, t):
        """A lane-order twin back in natural channel order (its C channels): a gather along C."""
        c = self.lane[t]
        pos = np.argsort(kernels.lane_order(c))[:c].astype("int64")
        return self.builder_.emit(R.take(t, compat.const(pos), axis=3))

    def _count(self, kind, macs=0):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.macs[kind] = self.macs.get(kind, 0) + int(macs)

    # -- rules ------------------------------------------------------------------------------
    def _conv2d(self, call, args):
        x, w = args[0], call.args[1]
        attrs = call.attrs
        wq = compat.const_numpy(w)
        xs, ys = compat.tensor_shape(x), compat.tensor_shape(call)
        if (wq is None or wq.dtype != np.int8 or xs is None or ys is None or not isinstance(xs[1], int)
                or str(attrs.out_dtype) != "int32"
                or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"):
            return None
        groups = int(attrs.groups)
        strides, dilation = compat.int_tuple(attrs.strides), compat.int_tuple(attrs.dilation)
        top, left, bottom, right = compat.int_tuple(attrs.padding)
        pads = (top, left, bottom, right)
        c, o = xs[1], wq.shape[0]
        xdt = compat.tensor_dtype(x)
        if groups == 1 and self.gemm and xdt == "uint8":
            xt = self.nhwc(x)
            lane = self._binding_var in self.lane_vars
            # lane order: output channels permuted (and zero-padded to 64) by permuting weight rows
            wl = kernels.to_lane_order(wq, 0) if lane else wq
            wp = compat.const(kernels.pack_conv_weight(wl, kmajor=not self.vnni))
            y = self.builder_.emit_te(kernels.conv2d_nhwc_packed, xt, wp, strides, pads, dilation,
                                      primfunc_name_hint=f"qcc_conv2d_nhwc_{self.isa}")
            if not lane and kernels.ceil_to(o, 16) != o:
                y = self.builder_.emit(R.strided_slice(y, axes=[3], begin=[0], end=[o]))
            self._count(f"conv2d_{self.isa}", _numel(ys) * wq[0].size)
            if lane:
                self.lane[y] = o
            return y
        if groups == c == o and wq.shape[1] == 1 and self._binding_var in self.lane_dw \
                and x in self.twin and self.twin[x] in self.lane:
            xt = self.twin[x]
            y = self.builder_.emit_te(kernels.depthwise_nhwc_vnni, xt,
                                      compat.const(kernels.pack_depthwise_weight_vnni(wq)), strides, pads,
                                      dilation, primfunc_name_hint="qcc_dwconv2d_vnni")
            if kernels.ceil_to(c, 64) != c:
                y = self.builder_.emit(R.strided_slice(y, axes=[3], begin=[0], end=[c]))
            self._count("depthwise_vnni", _numel(ys) * wq[0].size)
            return y
        if groups == c == o and wq.shape[1] == 1 and xdt in ("uint8", "int8"):
            xt = self.nhwc(x)
            wd = compat.const(kernels.pack_depthwise_weight(wq))
            self._count("depthwise", _numel(ys) * wq[0].size)
            return self.builder_.emit_te(kernels.depthwise_nhwc, xt, wd, strides, pads, dilation,
                                         primfunc_name_hint="qcc_dwconv2d_nhwc")
        return None

    def _elementwise(self, call, args):
        if not any(a in self.twin for a in args if isinstance(a, relax.Var)):
            return None
        if len(compat.tensor_shape(call) or []) != 4:
            return None
        if self._binding_var in self.lane_vars:
            out = self._elementwise_lane(call, args)
            if out is not None:
                return out
        new = []
        for a in args:
            if isinstance(a, (relax.Var, compat.Constant)) and compat.tensor_shape(a) is not None:
                t = self.nhwc(a)
                if t is None:
                    return None
                new.append(t)
            else:
                new.append(a)
        return self.builder_.emit(compat.rebuild_call(call, new))

    def _elementwise_lane(self, call, args):
        """An elementwise op of a lane-order chain: its var operand in lane order, its per-channel
        constants permuted likewise; None if an operand does not fit (the natural-order rule then)."""
        c = None
        new = []
        for a in args:
            if isinstance(a, relax.Var):
                t = self.twin.get(a)
                if t is None or t not in self.lane or (c is not None and self.lane[t] != c):
                    return None
                c = self.lane[t]
                new.append(t)
            elif isinstance(a, compat.Constant) and compat.tensor_shape(a) is not None:
                v = _const_nhwc(compat.const_numpy(a))
                if v is None:
                    return None
                new.append(a if v.ndim == 0 else None if v.shape[3] not in (1, c or v.shape[3]) else v)
            else:
                new.append(a)
        if c is None:
            return None
        for i, v in enumerate(new):
            if isinstance(v, np.ndarray):
                new[i] = compat.const(kernels.to_lane_order(v, 3) if v.shape[3] == c and c > 1 else v)
            elif v is None:
                return None
        y = self.builder_.emit(compat.rebuild_call(call, new))
        self.lane[y] = c
        return y

    def _qdq(self, call, args):
        """quantize / dequantize of a value with a twin: the same op on the twin. Element by element
        (per tensor, or per channel along `axis`, which moves to its NHWC position), so
        t(Q(x)) = Q(t(x)) bit for bit."""
        x = args[0]
        if not isinstance(x, relax.Var) or x not in self.twin or len(compat.tensor_shape(x) or []) != 4:
            return None
        s, z = compat.const_numpy(args[1]), compat.const_numpy(args[2])
        if s is None or z is None:
            return None
        axis = TO_NHWC.index(int(call.attrs.axis) % 4)
        t = self.nhwc(x)
        fn = R.quantize if compat.op_name(call) == "relax.quantize" else R.dequantize
        return self.builder_.emit(fn(t, args[1], args[2], axis=axis, out_dtype=str(call.attrs.out_dtype)))

    def _reduce(self, call, args):
        x = args[0]
        axes = call.attrs.axis
        if x not in self.twin or axes is None or sorted(compat.int_tuple(axes)) != [2, 3] \
                or not call.attrs.keepdims:
            return None
        fn = R.sum if compat.op_name(call) == "relax.sum" else R.mean
        return self.builder_.emit(fn(self.nhwc(x), axis=[1, 2], keepdims=True))

    def _pool(self, call, args):
        x = args[0]
        a = call.attrs
        if x not in self.twin or a.layout != "NCHW" or (a.out_layout or "NCHW") != "NCHW":
            return None
        fn = R.nn.max_pool2d if compat.op_name(call) == "relax.nn.max_pool2d" else R.nn.avg_pool2d
        return self.builder_.emit(fn(self.nhwc(x), pool_size=a.pool_size, strides=a.strides, padding=a.padding,
                                     dilation=a.dilation, ceil_mode=bool(a.ceil_mode),
                                     count_include_pad=bool(a.count_include_pad), layout="NHWC",
                                     out_layout="NHWC"))

    def _concat(self, call, args):
        fields = list(args[0].fields) if isinstance(args[0], relax.Tuple) else None
        if fields is None or int(call.attrs.axis) not in (1, -3) or not any(f in self.twin for f in fields):
            return None
        ts = [self.nhwc(f) for f in fields]
        if any(t is None for t in ts):
            return None
        return self.builder_.emit(R.concat(ts, axis=3))

    def _pad(self, call, args):
        x = args[0]
        if x not in self.twin or len(call.attrs.pad_width) != 8:
            return None
        p = compat.int_tuple(call.attrs.pad_width)
        width = p[0:2] + p[4:6] + p[6:8] + p[2:4]
        t = self.twin[x]
        lane = t in self.lane and self._binding_var in self.lane_vars and not any(p[2:4])
        if t in self.lane and not lane:
            t = self._natural(t)
        y = self.builder_.emit(R.nn.pad(t, pad_width=width, pad_value=float(call.attrs.pad_value),
                                        pad_mode=call.attrs.pad_mode))
        if lane:
            self.lane[y] = self.lane[self.twin[x]]
        return y

    def _matmul_activations(self, x, b, xs, bs):
        """uint8 activation @ uint8 / int8 activation (attention's products) on VNNI: b packed at run
        time, as b - 128 when uint8 (kernels.pack_rhs) with the 128 * rowsum(x) term added back."""
        bdt = compat.tensor_dtype(b)
        if (len(xs) != len(bs) or len(xs) < 2 or not all(compat.prove_equal(a, c) for a, c in zip(xs[:-2], bs[:-2]))
                or not compat.prove_equal(xs[-1], bs[-2]) or bdt not in ("uint8", "int8")):
            return None
        m, k, n = xs[-2], xs[-1], bs[-1]
        bp = self.builder_.emit_te(kernels.pack_rhs, b, primfunc_name_hint="qcc_pack_rhs")
        y = self.builder_.emit_te(kernels.batch_dense_packed, x, bp, primfunc_name_hint="qcc_dense_vnni")
        if not isinstance(n, int) or kernels.ceil_to(n, 16) != n:
            y = self.builder_.emit(R.strided_slice(y, axes=[len(xs) - 1], begin=[0], end=[n]))
        if bdt == "uint8":
            rowsum = R.sum(R.astype(x, "int32"), axis=[-1], keepdims=True)
            y = self.builder_.emit(R.add(y, R.multiply(rowsum, compat.const(np.int32(128)))))
        self._count("dense_vnni", _numel([*xs[:-2], m, k, n]))
        return ("plain", y)

    def _matmul(self, call, args):
        x, w = args[0], call.args[1]
        wq = compat.const_numpy(w)
        xs = compat.tensor_shape(x)
        if (self.vnni and wq is None and xs is not None and compat.tensor_dtype(x) == "uint8"
                and str(call.attrs.out_dtype) == "int32" and compat.tensor_shape(args[1]) is not None):
            return self._matmul_activations(x, args[1], xs, compat.tensor_shape(args[1]))
        if (not self.gemm or wq is None or wq.dtype != np.int8 or wq.ndim != 2 or xs is None or len(xs) < 2
                or compat.tensor_dtype(x) != "uint8" or str(call.attrs.out_dtype) != "int32"):
            return None
        k, n = wq.shape
        row_tile = kernels.ROW_TILE if self.vnni else 1   # AVX2's tile takes a bounds predicate
        y = self.builder_.emit_te(kernels.dense_packed, x,
                                  compat.const(kernels.pack_dense_weight(wq, kmajor=not self.vnni)), row_tile,
                                  primfunc_name_hint=f"qcc_dense_{self.isa}")
        if kernels.pads_rows(xs[-2], row_tile):
            y = self.builder_.emit_te(kernels.first_rows, y, xs[-2], n, primfunc_name_hint="qcc_first_rows")
        elif kernels.ceil_to(n, 16) != n:
            y = self.builder_.emit(R.strided_slice(y, axes=[len(xs) - 1], begin=[0], end=[n]))
        self._count(f"dense_{self.isa}", _numel(xs[:-1]) * k * n)
        return ("plain", y)

    # -- driver -----------------------------------------------------------------------------
    def visit_var_binding_(self, binding):
        value = binding.value
        name = compat.op_name(value)
        out = None
        self._binding_var = binding.var
        if name is not None and name != "relax.call_tir":
            args = [self.visit_expr(a) for a in value.args]
            try:
                out = self._rule(name, value, args)
            except (ValueError, TypeError, AttributeError):  # an attribute layout this pass does not know
                out = None
        if out is None:
            return super().visit_var_binding_(binding)
        # a rule returns the NHWC twin of a rank-4 NCHW value, or ("plain", expr) for a value that
        # keeps its layout (the matmul rule)
        plain = isinstance(out, tuple)
        twin = out[1] if plain else out
        expr = twin if plain else R.permute_dims(self._natural(twin) if twin in self.lane else twin, TO_NCHW)
        if plain and isinstance(binding.var, compat.DataflowVar):
            # no alias binding (v = kernel_result): FuseOps does not fuse across one, and the
            # kernel's epilogue would stay a separate function
            new_var = twin
        elif isinstance(binding.var, compat.DataflowVar):
            new_var = self.builder_.emit(expr, binding.var.name)
        else:
            new_var = self.builder_.emit_output(expr, binding.var.name)
        if not plain:
            self.twin[new_var] = twin
        self.set_var_remap(binding.var, new_var)

    def _rule(self, name, call, args):
        if name == "relax.nn.conv2d":
            return self._conv2d(call, args)
        if name == "relax.matmul":
            return self._matmul(call, args)
        if name in ELEMENTWISE or name in UNARY:
            return self._elementwise(call, args)
        if name in ("relax.quantize", "relax.dequantize"):
            return self._qdq(call, args)
        if name in ("relax.sum", "relax.mean"):
            return self._reduce(call, args)
        if name in ("relax.nn.max_pool2d", "relax.nn.avg_pool2d"):
            return self._pool(call, args)
        if name == "relax.concat":
            return self._concat(call, args)
        if name == "relax.nn.pad":
            return self._pad(call, args)
        return None

    def transform(self):
        for gv, func in self.mod_.functions_items():
            if gv.name_hint == "main" and isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()


_LANE_CHAIN_OPS = ELEMENTWISE | UNARY | {"relax.nn.pad"}


def _lane_order_chains(func) -> tuple[set, set]:
    """(vars to compute in lane order, depthwise conv vars that read one): for each uint8 depthwise
    conv2d whose input comes, through elementwise ops with one variable operand each (and spatial
    pads), from a groups = 1 conv2d, every value on the way read by nothing else."""
    bindings, uses = compat.bindings_and_uses(func)
    chains, dws = set(), set()
    for var, value in bindings.items():
        if compat.op_name(value) != "relax.nn.conv2d" or compat.tensor_dtype(value.args[0]) != "uint8":
            continue
        w, xs = compat.tensor_shape(value.args[1]), compat.tensor_shape(value.args[0])
        # whole 64-channel groups only: padding C to 64 costs the producer conv more than it saves
        if (w is None or xs is None or int(value.attrs.groups) != xs[1] or w[0] != xs[1] or w[1] != 1
                or xs[1] % 64):
            continue
        chain, cur = [], value.args[0]
        while isinstance(cur, relax.Var) and cur in bindings and uses.get(cur, 0) == 1:
            v = bindings[cur]
            name = compat.op_name(v)
            chain.append(cur)
            if name == "relax.nn.conv2d":
                if int(v.attrs.groups) == 1 and compat.tensor_dtype(v.args[0]) == "uint8":
                    chains.update(chain)
                    dws.add(var)
                break
            operands = [a for a in v.args if isinstance(a, relax.Var)] if name in _LANE_CHAIN_OPS else []
            if len(operands) != 1:
                break
            cur = operands[0]
    return chains, dws


def channels_last(mod, vnni: bool, avx2: bool = False):
    """Returns (module, {rule: count}, {rule: multiply-accumulates}). vnni: AVX-512 VNNI kernels;
    avx2 (without vnni): the same packed conv / dense kernels with k-major weights (vpmaddwd)."""
    rw = _ChannelsLast(mod, vnni, avx2)
    new = compat.dead_code_elimination(rw.transform())
    return new, dict(rw.counts), dict(rw.macs)


def int8_macs(mod) -> int:
    """Multiply-accumulates of the int32-accumulating conv2d / matmul ops in main (NCHW / OIHW)."""
    total = 0
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            name = compat.op_name(b.value)
            out = compat.tensor_shape(b.var)
            if out is None or compat.tensor_dtype(b.var) != "int32":
                continue
            w = _static_shape(b.value.args[1]) if name in ("relax.nn.conv2d", "relax.matmul") else None
            if w is None:
                continue
            if name == "relax.nn.conv2d":
                total += _numel(out) * int(np.prod(w[1:]))
            else:
                total += _numel(out) * int(w[-2])
    return total
