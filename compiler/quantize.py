"""Float graph + calibration statistics -> QDQ graph: the quantize stage's work.

    plan        which tensors are quantized, with which type and granularity (plan.py)
    qparams     clipping range (ranges.py) -> scale, zero point (qparams.py), per activation
    emit        QuantizeLinear / DequantizeLinear pairs at the plan's sites (qdq.py), plus the
                quantizers of passes that quantize at run time or on another grid (CrossQuant, RepQuant)

`with_passes` wraps it in the pass registry's "weights" phase (mixed precision, AdaRound, analytic bias
shifts: before the QDQ graph) and "correct" phase (measured bias correction: quantizes again).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from .config import QuantConfig
from .errors import QccError
from .passes import registry as passes
from .passes.bias_correction import apply_shift
from .plan import QuantPlan, build_plan
from .qdq import emit_qdq
from .qparams import range_to_qparams
from .ranges import select_range
from .trace import Trace


def quantize(float_proto: onnx.ModelProto, config: QuantConfig, stats,
             bias_shift: dict[str, np.ndarray] | None = None,
             weights: dict[str, np.ndarray] | None = None,
             range_cache: dict | None = None) -> tuple[ir.Model, QuantPlan, dict]:
    """A fresh copy of the float graph -> (AdaRound weights, bias shift applied) -> plan -> qparams -> QDQ graph.
    `range_cache`: clipping ranges already chosen for these statistics (a bias shift changes no range)."""
    model = ir.serde.deserialize_model(float_proto)   # a copy: the float graph itself stays float
    if weights:
        from .passes import adaround

        adaround.apply_weights(model, weights)
    if bias_shift:
        apply_shift(model, build_plan(model, config, stats).roles, bias_shift)
    plan = build_plan(model, config, stats)
    emit_runtime = runtime_quantizers(model, plan, config)
    ranges = assign_qparams(plan, stats, config, range_cache)
    encodings = emit_qdq(model, plan, config.power_of_two)
    encodings.update(emit_runtime(model))
    for name, (lo, hi) in ranges.items():
        if name in encodings:
            encodings[name]["range"] = [lo, hi]
    ir_passes.RemoveUnusedNodesPass()(model)
    return model, plan, encodings


def with_passes(float_model: ir.Model, float_proto: onnx.ModelProto, config: QuantConfig, stats, calib,
                trace: Trace) -> tuple[QuantConfig, ir.Model, QuantPlan, dict]:
    """The registry's "weights" passes, the QDQ graph, then its "correct" passes. Returns (config with
    the passes' overrides, QDQ model, plan, encodings)."""
    ctx = passes.PassContext(float_model, float_proto, config, calib, stats=stats)
    passes.run_phase("weights", ctx, trace)
    chosen: dict = {}   # the range search runs once; requantizing after a bias shift reuses it
    ctx.quantized = quantize(float_proto, ctx.config, stats, ctx.analytic, ctx.weights, chosen)
    ctx.requantize = lambda shift: quantize(float_proto, ctx.config, stats, shift, ctx.weights, chosen)
    passes.run_phase("correct", ctx, trace)
    return (ctx.config, *ctx.quantized)


def runtime_quantizers(model: ir.Model, plan: QuantPlan, config: QuantConfig):
    """Quantizer-changing hook: tensors quantized at run time (CrossQuant per-token scales) or with a
    non-uniform grid (RepQuant's log-sqrt(2) Softmax quantizer) leave the static plan here; the
    returned function inserts their quantizers into the QDQ graph after emission."""
    quantizers = passes.quantizers(config, model)
    for q in quantizers:
        q.take(plan)

    def emit(qdq_model: ir.Model) -> dict:
        encodings = {}
        for q in quantizers:
            encodings.update(q.emit(qdq_model))
        return encodings

    return emit


def assign_qparams(plan: QuantPlan, stats, config: QuantConfig,
                   cache: dict | None = None) -> dict[str, tuple[float, float]]:
    """Clipping range -> (scale, zero point) for every quantized activation (shared groups use their root).
    `cache` keeps chosen ranges by (tensor, type, symmetry) across calls on the same statistics and config."""
    ranges: dict[str, tuple[float, float]] = {}
    cache = {} if cache is None else cache
    for name, spec in plan.activations.items():
        st = stats.get(spec.root)
        if st is None or st.count == 0:
            raise QccError(f"no calibration statistics for tensor {spec.root!r} (it was never computed)")
        if spec.root not in ranges:
            key = (spec.root, spec.qtype, spec.symmetric)
            if key not in cache:
                cache[key] = select_range(st, config.calibration, spec.qtype, spec.symmetric, config.percentile)
            ranges[spec.root] = cache[key]
        lo, hi = ranges[spec.root]
        spec.scale, spec.zero_point = range_to_qparams(lo, hi, spec.qtype, spec.symmetric, config.power_of_two)
        ranges[name] = (lo, hi)
    return ranges
