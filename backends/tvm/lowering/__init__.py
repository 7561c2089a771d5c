"""QDQ -> integer: qcc's rewrite of TVM's fake-quantized Relax into integer Relax.

TVM's ONNX frontend imports a QDQ graph literally: every quantized layer is

    x_f = R.dequantize(x_q, s_x, zp_x)             (int8 / uint8 activation -> float)
    w_f = R.dequantize(w_q, s_w, 0, axis=0)        (constant int8 weight, per-channel scales)
    b_f = R.dequantize(b_q, s_x * s_w, 0)          (constant int32 bias)
    y_f = R.nn.conv2d(x_f, w_f) + b_f  (-> relu / clip)
    y_q = R.quantize(y_f, s_y, zp_y)

so all arithmetic runs in float. This package walks the bindings of ``main`` and replaces every
``R.quantize`` whose float input it can express exactly in integers by integer code:

    acc = R.nn.conv2d(x_q, w_q, out_dtype="int32")         (uint8/int8 x int8 -> int32)
    acc = acc + (b_q - zp_x * sum(w_q))                     (int32 bias; zero point folded in)
    y_q = clamp(round_half_even(float32(acc) * float32(m)) + zp_y, lo, hi)   (fixedpoint.py)

with ``m = s_x * s_w[c] / s_y`` and the activation folded into the clamp (Relu: lo = zp_y; Clip(a, b):
lo/hi = Q(a)/Q(b)); sums of several requantized terms (residual Add) use int64 fixed point instead.
The float chain is left in place and removed by dead-code elimination. A float tensor known to be
``dequantize(int tensor)`` is a *view*; layout ops and max pooling of a view are views too, so
``Q(reshape(DQ(x)))`` with equal parameters becomes ``reshape(x)`` on integers. The value a rule
computes is an *affine sum* ``sum_i m_i * (t_i + k_i) + offset`` of integer terms ``t_i`` with real
multipliers ``m_i``, integer constants ``k_i`` and a real ``offset``; a quantize site requantizes it,
and a quantized layer whose output is consumed in float (the final Gemm of a classifier) converts
it to float32 instead (``float(acc + k) * m + offset``). Whatever matches no rule keeps TVM's
dequantize -> float op -> quantize and is reported as a float fallback.

Modules:

    registry.py     the Rule classes, roles, the @rule decorator and the lookup by Relax op
    rules/*.py      the rules, by kind (views, activation, conv, matmul, elementwise, pooling)
    ir.py           views, affine sums, plans, quantize sites
    index.py        producer / consumers / use counts of a function, built once
    analysis.py     Lowering: plans every quantize site with the rules, and the report
    requantize.py   the emitted requantization (float32 MLAS order, or int64 fixed point)
    rewriter.py     the rewrite itself, lower_to_integer and heavy_ops
"""

from __future__ import annotations

from . import registry, rules  # noqa: F401  (importing rules registers every rule)
from .analysis import Lowering
from .index import UseIndex
from .ir import QRANGE, Affine, Plan, Site, Term, View
from .registry import (AFFINE, CLAMP, ROLES, SITE, VIEW, AffineRule, ClampRule, NoMatch, Rule, SiteRule, Unquantized,
                       ViewRule, rule, rule_for, unquantized)
from .registry import rules as registered_rules
from .requantize import emit_float, emit_requantize, requantizer
from .rewriter import heavy_ops, lower_to_integer

# the ops a float sink may be (the heavy, integer-accumulating ones)
HEAVY_OPS = tuple(sorted(registry.ops(AFFINE, float_sink=True)))

__all__ = ["AFFINE", "CLAMP", "HEAVY_OPS", "QRANGE", "ROLES", "SITE", "VIEW", "Affine", "AffineRule", "ClampRule",
           "Lowering", "NoMatch", "Plan", "Rule", "Site", "SiteRule", "Term", "Unquantized", "UseIndex", "View",
           "ViewRule", "emit_float", "emit_requantize", "heavy_ops", "lower_to_integer", "registered_rules",
           "registry", "requantizer", "rule", "rule_for", "rules", "unquantized"]
