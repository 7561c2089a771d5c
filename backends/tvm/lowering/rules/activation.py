"""Activations folded into the requantization clamp of the quantize site they feed.

Q(v) = clamp(round(v / s_y) + z_y, lo, hi) is monotone in v, so a bound on v is a bound on Q(v):

    Q(relu(v))       = max(Q(v), Q(0)) = max(Q(v), z_y)
    Q(clip(v, a, b)) = clip(Q(v), Q(a), Q(b))
    Q(max(v, c))     = max(Q(v), Q(c))          Q(min(v, c)) = min(Q(v), Q(c))

and the activation costs nothing: it narrows [lo, hi] of the requantization's clamp.
"""

from __future__ import annotations

from ... import compat
from ..ir import scalar
from ..registry import ClampRule, rule


@rule
class Relu(ClampRule):
    """Q(relu(v)) = max(Q(v), Q(0)): the clamp's low bound becomes max(lo, z_y)."""
    pattern = ("relax.nn.relu",)
    onnx = ("Relu",)
    lowers_to = "the requantization clamp"
    conditions = "feeds a QuantizeLinear, single consumer: low bound zp_y"

    def check(self, low, call, var):
        return None

    def rewrite(self, low, call, var, site):
        site.lo = max(site.lo, site.q(0.0))
        return call.args[0]


@rule
class Clip(ClampRule):
    """Q(clip(v, a, b)) = clip(Q(v), Q(a), Q(b)): [lo, hi] narrows to [max(lo, Q(a)), min(hi, Q(b))]."""
    pattern = ("relax.clip",)
    onnx = ("Clip",)
    lowers_to = "the requantization clamp"
    conditions = "constant bounds, feeds a QuantizeLinear, single consumer: [Q(a), Q(b)]"

    def check(self, low, call, var):
        if compat.prim_value(call.args[1]) is None or compat.prim_value(call.args[2]) is None:
            return "Clip bounds are not constants"
        return None

    def rewrite(self, low, call, var, site):
        a, b = compat.prim_value(call.args[1]), compat.prim_value(call.args[2])
        site.lo = max(site.lo, site.q(a))
        site.hi = min(site.hi, site.q(b))
        return call.args[0]


class ConstantBound(ClampRule):
    """Q(max(v, c)) = max(Q(v), Q(c)) and Q(min(v, c)) = min(Q(v), Q(c)) for a constant scalar c."""

    lowers_to = "the requantization clamp"

    def args(self, call) -> list:
        return compat.call_tir_args(call) if compat.op_name(call).startswith("call_tir:") else list(call.args)

    def check(self, low, call, var):
        args = self.args(call)
        if len(args) != 2:
            return f"{self.onnx[0]} with {len(args)} operands"
        c = low.cval(args[1])
        if c is None or scalar(c) is None:
            return f"{self.onnx[0]}: the bound is not a constant scalar"
        return None

    def rewrite(self, low, call, var, site):
        args = self.args(call)
        bound = float(scalar(low.cval(args[1])))
        if compat.op_name(call).endswith("maximum"):
            site.lo = max(site.lo, site.q(bound))
        else:
            site.hi = min(site.hi, site.q(bound))
        return args[0]


@rule
class MaximumConstant(ConstantBound):
    """Q(max(v, c)) = max(Q(v), Q(c)): the clamp's low bound becomes max(lo, Q(c))."""
    pattern = ("relax.maximum",)
    onnx = ("Max",)
    conditions = "with a constant scalar, feeds a QuantizeLinear, single consumer"


@rule
class MinimumConstant(ConstantBound):
    """Q(min(v, c)) = min(Q(v), Q(c)): the clamp's high bound becomes min(hi, Q(c))."""
    pattern = ("relax.minimum",)
    onnx = ("Min",)
    conditions = "with a constant scalar, feeds a QuantizeLinear, single consumer"


@rule
class ClipAsMaxMin(ConstantBound):
    """Clip(v, a) / Clip(v, None, b) as TVM's frontend imports them (maximum / minimum call_tir):
    Q(max(v, a)) = max(Q(v), Q(a)), Q(min(v, b)) = min(Q(v), Q(b))."""
    pattern = ("call_tir:maximum", "call_tir:minimum")
    onnx = ("Clip",)
    conditions = "one-sided Clip as the frontend emits it, constant bound, single consumer"
