"""4/8-bit weight mixed precision under a size budget.

Every quantized layer i with n_i weights costs n_i / 2 bytes at 4 bits and n_i bytes at 8. Its
sensitivity is measured, one layer at a time, on calibration samples:

    S_i = mean KL( softmax(f(x)) || softmax(f_i(x)) )      (f_i: only W_i rounded to 4 bits)

(for an output that is not [batch, classes] logits, its normalised squared error is used instead).
With x_i = 1 when layer i keeps 8 bits, the choice is the integer program

    max  sum_i S_i x_i    s.t.   sum_i n_i / 2 + sum_i x_i n_i / 2  <=  budget * sum_i n_i,   x_i in {0, 1}

(a 0/1 knapsack: with additive sensitivities, minimising the total sensitivity left at 4 bits). It is
solved exactly by dynamic programming over the extra bytes, counted in units of 1/UNITS of the
capacity and rounded UP, so the chosen set never exceeds the budget.

The result is a set of per-tensor overrides {weight name: 8-bit scheme} on top of a 4-bit-weight
scheme (w4a8); the emitter then writes those weights as int8 and the rest as int4. Collection
(`sensitivity`) is separate from the choice (`choose`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper as oh
from onnx import numpy_helper as nh

from ..backends import onnxruntime as ort_backend
from ..config import SCHEMES
from ..qtypes import QType
from .registry import Pass, PassContext

N_SAMPLES = 32
UNITS = 2000
HIGH_SCHEME = "int8"      # override for layers kept at 8 bits (same U8 activations as w4a8)


def candidates(plan) -> dict[str, int]:
    """4-bit weights of the plan: weight tensor name -> element count."""
    out = {}
    for spec in plan.weights:
        if spec.qtype == QType.INT4:
            w = spec.node.inputs[spec.index]
            out[w.name] = int(np.prod(w.const_value.shape))
    return out


def qdq_weight_bytes(qdq_model: onnx.ModelProto) -> tuple[float, float]:
    """(bytes of the int4 / int8 weights stored in an emitted QDQ graph, the same weights at 8 bits)."""
    bits = {onnx.TensorProto.INT4: 4, onnx.TensorProto.INT8: 8}
    used = int8 = 0.0
    for t in qdq_model.graph.initializer:
        if t.name.endswith("_quantized") and t.data_type in bits:
            n = float(np.prod(t.dims))
            used += n * bits[t.data_type] / 8
            int8 += n
    return used, int8


def _rtn(w: np.ndarray, qmax: int, axis: int | None) -> np.ndarray:
    if axis is None:
        s = np.abs(w).max() / qmax
    else:
        s = np.abs(w).max(axis=tuple(d for d in range(w.ndim) if d != axis % w.ndim), keepdims=True) / qmax
    s = np.where(s > 0, s, 1.0)
    return (np.clip(np.rint(w / s), -qmax, qmax) * s).astype(np.float32)


def _distance(ref: np.ndarray, out: np.ndarray) -> float:
    if ref.ndim == 2:
        lp = ref - ref.max(1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(1, keepdims=True))
        lq = out - out.max(1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(1, keepdims=True))
        return float((np.exp(lp) * (lp - lq)).sum(1).mean())
    return float(((out - ref) ** 2).mean() / max((ref ** 2).mean(), 1e-30))


def sensitivity(float_model: onnx.ModelProto, weights: dict[str, int | None], feeds: dict[str, np.ndarray],
                n_samples: int = N_SAMPLES, qmax: int = 7) -> dict[str, float]:
    """S_i per weight tensor name (`weights`: name -> per-channel axis or None), one session: the weights
    become overridable graph inputs and each is fed rounded to 4 bits in turn."""
    model = onnx.ModelProto()
    model.CopyFrom(float_model)
    inits = {t.name: t for t in model.graph.initializer}
    for name in weights:
        t = inits[name]
        model.graph.input.append(oh.make_tensor_value_info(name, t.data_type, list(t.dims)))
    session = ort_backend.make_session(model)
    sub = {k: v[:n_samples] for k, v in feeds.items()}
    ref = session.run(None, sub)
    out = {}
    for name, axis in weights.items():
        w = nh.to_array(inits[name])
        got = session.run(None, {**sub, name: _rtn(w, qmax, axis)})
        out[name] = sum(_distance(r, g) for r, g in zip(ref, got))
    return out


def choose(sens: dict[str, float], numel: dict[str, int], budget: float, units: int = UNITS) -> set[str]:
    """The layers to keep at 8 bits: exact 0/1 knapsack on the extra bytes (costs rounded up)."""
    total = sum(numel.values())
    capacity = budget * total - total / 2              # bytes left after every weight at 4 bits
    if capacity <= 0:
        return set()
    names = [n for n in numel if sens.get(n, 0.0) > 0]
    unit = capacity / units
    cost = [math.ceil((numel[n] / 2) / unit - 1e-9) for n in names]
    value = [sens[n] for n in names]
    best = np.zeros(units + 1)
    take = np.zeros((len(names), units + 1), bool)
    for i, (c, v) in enumerate(zip(cost, value)):
        if c > units:
            continue
        cand = np.full(units + 1, -np.inf)
        cand[c:] = best[:units + 1 - c] + v
        take[i] = cand > best
        best = np.maximum(best, cand)
    keep, cap = set(), units
    for i in range(len(names) - 1, -1, -1):
        if take[i, cap]:
            keep.add(names[i])
            cap -= cost[i]
    return keep


def plan_overrides(float_model: onnx.ModelProto, plan, feeds: dict[str, np.ndarray], budget: float,
                   per_channel: bool, n_samples: int = N_SAMPLES) -> tuple[dict[str, str], dict]:
    """Overrides {weight: HIGH_SCHEME} for the layers kept at 8 bits, and a summary."""
    numel = candidates(plan)
    if not numel:
        return {}, {"layers": 0, "kept_8bit": 0}
    axes = {}
    for spec in plan.weights:
        name = spec.node.inputs[spec.index].name
        if name in numel:
            axes[name] = spec.axis if per_channel else None
    sens = sensitivity(float_model, axes, feeds, n_samples)
    keep = choose(sens, numel, budget)
    assert SCHEMES[HIGH_SCHEME][2] == QType.INT8
    total = sum(numel.values())
    chosen_bytes = sum(numel[n] for n in keep) + sum(numel[n] / 2 for n in numel if n not in keep)
    return ({n: HIGH_SCHEME for n in keep},
            {"layers": len(numel), "kept_8bit": len(keep), "weight_bytes_ratio": chosen_bytes / total,
             "sensitivity": sens})


# ---- registration -------------------------------------------------------------------------------
def _run(ctx: PassContext) -> dict:
    import dataclasses

    from ..plan import build_plan

    config = ctx.config
    overrides, summary = plan_overrides(ctx.float_proto, build_plan(ctx.model, config, ctx.stats), ctx.calib,
                                        config.weight_budget, config.per_channel)
    ctx.config = dataclasses.replace(config, overrides={**overrides, **config.overrides})
    return {**summary, "budget": config.weight_budget}


PASS = Pass(
    name="mixed-precision", phase="weights", order=50,
    summary="per-layer 4-bit sensitivity (output KL), 0/1 knapsack picks which layers keep 8 bits under `--weight-budget`",
    where="W4A8",
    run=_run,
    describe=lambda s: (f"mixed precision: {s['kept_8bit']}/{s['layers']} layers kept at 8 bits, weight bytes "
                        f"{s.get('weight_bytes_ratio', 1.0):.3f}x of int8 (budget {s['budget']})"),
    params={"weight_budget": [0.4, 0.6, 0.8]},
    to_config=lambda p: {"weight_budget": float(p["weight_budget"])})
