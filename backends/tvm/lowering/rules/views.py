"""Views and data movement: ops that only move int8 / uint8 elements around.

With a per-tensor scale s and zero point z, dequantize is applied element by element, so any op
that only selects, repeats or reorders elements commutes with it:

    op(DQ(x)) = op((x - z) * s) = (op(x) - z) * s = DQ(op(x))

and ``Q(op(DQ(x)))`` with the same output parameters is ``op(x)`` on the integers. Concat joins
several views at its quantize site, each requantized to the output's parameters.
"""

from __future__ import annotations

import numpy as np

from ... import compat
from ...compat import R, relax
from ..ir import QRANGE, Affine, Plan, View, view_term
from ..registry import SiteRule, ViewRule, rule, unquantized
from ..requantize import requantizer


class LayoutView(ViewRule):
    """op(DQ(x)) == DQ(op(x)) for an op that only moves elements (see the module docstring)."""

    lowers_to = "the same op on the int8/uint8 tensor"
    conditions = "input quantized per tensor; output keeps its scale and zero point"

    def short(self, call) -> str:
        return compat.op_name(call).split(".")[-1]

    def check(self, low, call, var):
        if low.view(call.args[0]) is None:
            return unquantized(self.short(call))
        return None

    def emit_op(self, e, call, data):
        """The op on the integer input `data` (the other arguments remapped)."""
        return compat.rebuild_call(call, [data] + [e.remap(x) for x in call.args[1:]])

    def rewrite(self, low, call, var, inner: View) -> View:
        def emit(e, call=call, inner=inner):
            return self.emit_op(e, call, e.view_expr(inner))

        return View(var, emit, inner.scale, inner.zp, inner.dtype, inner.sources, inner.ops + [self.short(call)])


@rule
class Reshape(LayoutView):
    """reshape(DQ(x), shape) == DQ(reshape(x, shape)): the elements keep their order."""
    pattern = ("relax.reshape",)
    onnx = ("Reshape", "Flatten")


@rule
class Flatten(LayoutView):
    """flatten(DQ(x)) == DQ(flatten(x))."""
    pattern = ("relax.flatten",)
    onnx = ("Flatten",)


@rule
class PermuteDims(LayoutView):
    """transpose(DQ(x), perm) == DQ(transpose(x, perm))."""
    pattern = ("relax.permute_dims",)
    onnx = ("Transpose",)


@rule
class ExpandDims(LayoutView):
    """unsqueeze(DQ(x), axes) == DQ(unsqueeze(x, axes))."""
    pattern = ("relax.expand_dims",)
    onnx = ("Unsqueeze",)


@rule
class Squeeze(LayoutView):
    """squeeze(DQ(x), axes) == DQ(squeeze(x, axes))."""
    pattern = ("relax.squeeze",)
    onnx = ("Squeeze",)


@rule
class StridedSlice(LayoutView):
    """slice(DQ(x), begin, end, step) == DQ(slice(x, begin, end, step)): a selection of elements."""
    pattern = ("relax.strided_slice",)
    onnx = ("Slice",)


@rule
class Resize2d(LayoutView):
    """resize_nearest(DQ(x)) == DQ(resize_nearest(x)): each output element copies one input element.
    Linear / cubic resizing interpolates (a weighted sum, not a view) and stays float."""
    pattern = ("relax.image.resize2d",)
    onnx = ("Resize", "Upsample")
    lowers_to = "`image.resize2d` (nearest) on the int8/uint8 tensor"
    conditions = "mode=nearest, input quantized per tensor; linear / cubic stay float"

    def check(self, low, call, var):
        why = super().check(low, call, var)
        if why is None and str(call.attrs.method) != "nearest_neighbor":
            why = f"resize2d method {call.attrs.method}: only nearest-neighbor resizing copies integers"
        return why

    def emit_op(self, e, call, data):
        a = call.attrs
        return R.image.resize2d(data, call.args[1], roi=[float(r) for r in a.roi],
                                layout=str(a.layout), method=str(a.method),
                                coordinate_transformation_mode=str(a.coordinate_transformation_mode),
                                rounding_method=str(a.rounding_method),
                                cubic_alpha=float(a.cubic_alpha), cubic_exclude=int(a.cubic_exclude),
                                extrapolation_value=float(a.extrapolation_value))


@rule
class Pad(LayoutView):
    """pad(DQ(x), c) == DQ(pad(x, q_c)) where c = s * (q_c - z) exactly (c = 0: q_c = z): the
    padded elements are the constant's integer. TVM's frontend imports a constant Pad as a TE
    function; its widths are read back from it (compat.te_pad_widths)."""
    pattern = ("call_tir:pad",)
    onnx = ("Pad",)
    lowers_to = "`nn.pad` of the int8/uint8 tensor with the constant's integer (the zero point for 0)"
    conditions = "constant mode, static shapes, input quantized per tensor, pad value on the input's grid"

    def short(self, call) -> str:
        return "pad"

    def padding(self, low, call):
        """(before, after, integer pad value), or a reason."""
        widths = compat.te_pad_widths(low.mod, call)
        if widths is None:
            return "pad with dynamic shapes or negative widths"
        before, after, c = widths
        v = low.view(compat.call_tir_args(call)[0])
        q = int(np.round(np.float32(c) / np.float32(v.scale))) + v.zp
        lo, hi = QRANGE[v.dtype]
        # on the grid to float32 rounding: Q(c) is q either way, far from a rounding tie
        if not lo <= q <= hi or abs((q - v.zp) * v.scale - c) > 1e-6 * max(abs(c), v.scale):
            return f"pad value {c} is not a value of the input's quantization grid"
        return before, after, q

    def check(self, low, call, var):
        if low.view(compat.call_tir_args(call)[0]) is None:
            return unquantized("pad")
        found = self.padding(low, call)
        return found if isinstance(found, str) else None

    def rewrite(self, low, call, var, inner: View) -> View:
        before, after, q = self.padding(low, call)
        width = [w for pair in zip(before, after) for w in pair]

        def emit(e, inner=inner):
            return R.nn.pad(e.view_expr(inner), width, pad_value=float(q))

        return View(var, emit, inner.scale, inner.zp, inner.dtype, inner.sources, inner.ops + ["pad"])


@rule
class SplitItem(ViewRule):
    """split(DQ(x))[i] == DQ(split(x)[i]): each part is a selection of elements. The integer split
    is emitted once and each quantized part reads its item."""
    pattern = ("item_of:relax.split",)
    onnx = ("Split",)
    lowers_to = "`split` of the int8/uint8 tensor (emitted once), each part an item of it"
    conditions = "input quantized per tensor; each part keeps its scale and zero point"

    def check(self, low, call, var):
        if low.view(low.value(call.tuple_value).args[0]) is None:
            return unquantized("split")
        return None

    def rewrite(self, low, call, var, inner: View) -> View:
        tup = call.tuple_value
        split = low.value(tup)
        if tup not in low.shared:
            attrs = split.attrs
            sections = attrs.indices_or_sections
            sections = int(sections) if isinstance(sections, int) or not hasattr(sections, "__len__") \
                else [int(i) for i in sections]

            def emit_split(e, inner=inner, sections=sections, axis=int(attrs.axis)):
                return R.split(e.view_expr(inner), sections, axis=axis)

            low.shared[tup] = View(tup, emit_split, inner.scale, inner.zp, inner.dtype, inner.sources)
        parts, index = low.shared[tup], int(call.index)

        def emit(e, parts=parts, index=index):
            return relax.TupleGetItem(e.view_expr(parts), index)

        return View(var, emit, inner.scale, inner.zp, inner.dtype, inner.sources, inner.ops + ["split"])


@rule
class Concat(SiteRule):
    """Q(concat(DQ_1(x_1), ..., DQ_n(x_n))) = concat(Q(DQ_1(x_1)), ..., Q(DQ_n(x_n))): each input is
    requantized to the output's scale and zero point, s_i / s_y * (x_i - z_i) + z_y (nothing to do
    where the parameters are equal), then the integers are joined; an activation folded at the site
    clamps the result."""
    pattern = ("relax.concat",)
    onnx = ("Concat",)
    lowers_to = "`concat` of the int8/uint8 inputs, each requantized to the output scale"
    conditions = "every input quantized per tensor (a no-op requantization where the parameters are equal)"

    def check(self, low, call, var):
        fields = call.args[0]
        if not isinstance(fields, relax.Tuple):
            return "concat of a non-literal tuple"
        if any(low.view(f) is None for f in fields.fields):
            return "concat of a non-quantized input"
        return None

    def rewrite(self, low, call, var, site, absorbed) -> Plan:
        views = [low.view(f) for f in call.args[0].fields]
        axis = int(call.attrs.axis)
        rank = len(compat.tensor_shape(var))
        dtype = site.dtype
        requant = []
        for v in views:
            if v.scale == site.scale and v.zp == site.zp and v.dtype == dtype:
                requant.append(None)
            else:
                aff = Affine([view_term(v)], None, rank, [])
                requant.append(requantizer(aff, site.scale, site.zp, dtype, *QRANGE[dtype]))
        lo, hi, full = site.lo, site.hi, site.full_range

        def emit(e):
            parts = []
            for v, rq in zip(views, requant):
                if rq is None:
                    parts.append(e.view_expr(v))
                else:
                    parts.append(e.emit(rq(e)))
            out = R.concat(parts, axis=axis)
            if not full:
                out = R.clip(e.emit(out), lo, hi)
            return out

        return Plan(site.var, emit, [s for v in views for s in v.sources], absorbed + [var], ["concat"])

