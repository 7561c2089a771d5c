"""Accuracy-aware precision (`qcc compile --max-loss L --metric M`): the cheapest per-layer precision
that keeps the evaluation-set loss under a budget.

With f the float graph's outputs and q_P the outputs of the QDQ graph quantized by plan P on the
evaluation set (the calibration set when none is given), M(f, q_P) the loss (loss_metrics.py, lower is
better) and L the budget:

    l_1, l_2, ...   the quantized layers, most sensitive first: largest gain in output SQNR when the layer
                    alone is kept float in the QDQ graph (sensitivity.py, recovered_db, on a few
                    calibration samples; ties in the local SQNR order)
    P_k(r)          int8 everywhere except l_1..l_k, raised to rung r of the ladder RUNGS
                    (cheapest first: int16 activations with int8 weights where the scheme exists, then float)
    cost(P)         sum over raised layers l of MACs(l) * (c_r - 1)    (modelled latency: int8 = 1 per MAC)

    choose the cheapest rung r, and for it the smallest k, with M(f, q_{P_k(r)}) <= L

k is found by doubling (1, 2, 4, ...) then bisection between the last failing and first passing k:
O(log n) trials, each a quantize stage on the cached statistics (ranges and statistics do not depend
on which layers are raised) and one onnxruntime run of the evaluation set. The loss need not be
monotone in k; every P reported as chosen was measured under L. When no P meets L the one with the
lowest loss is kept (the artifact is still written) and report.json says the budget was not met.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from tqdm import tqdm

from . import loss_metrics
from . import quantize as quantizing
from .backends import onnxruntime as ort_backend
from .calibrate import calibrate
from .config import SCHEMES, QuantConfig
from .plan import build_plan
from .sensitivity import sweep
from .trace import Trace

SENSITIVITY_SAMPLES = 16


@dataclass(frozen=True)
class Rung:
    """One precision a layer can be raised to: its modelled cost per MAC (int8 = 1) and how a
    config says it for a layer (head node, its fused epilogue, the float tensors its inputs quantize)."""

    name: str
    cost: float
    raise_layer: Callable[[QuantConfig, dict], QuantConfig]
    available: Callable[[QuantConfig], bool]
    scheme: str | None = None       # the scheme its layers take (None: float), for the opset it needs


def _as_float(config: QuantConfig, layer: dict) -> QuantConfig:
    nodes = [layer["node"], *layer["fused"]]
    return dataclasses.replace(config, exclude=config.exclude + [n for n in nodes if n not in config.exclude])


def _as_int16(config: QuantConfig, layer: dict) -> QuantConfig:
    overrides = dict(config.overrides)
    overrides.update({t: "w8a16" for t in layer["inputs"]})
    return dataclasses.replace(config, overrides=overrides)


# cheapest first; int16 x int8 costs about two int8 MACs (twice the bytes per activation, half the
# lanes per multiply), a float MAC about four (FP32 vs int8 vector throughput on AVX2 / VNNI)
RUNGS = (Rung("w8a16", 2.0, _as_int16, lambda c: c.scheme == "int8", "w8a16"),
         Rung("float", 4.0, _as_float, lambda c: True))


def _min_opset(scheme: str | None) -> int:
    if scheme is None:
        return 0
    act, _, weight = SCHEMES[scheme]
    return max(act.min_opset, weight.min_opset)


def ladder_opset(config: QuantConfig) -> int:
    """The opset the float graph needs so that every rung open to `config` can be emitted (int16 Q / DQ:
    21): the load stage canonicalizes to it when a loss budget is given."""
    return max((_min_opset(r.scheme) for r in RUNGS if r.available(config)), default=0)


def layer_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv / ConvTranspose / Gemm / MatMul (shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        out = shapes.get(node.output[0])
        w = inits.get(node.input[1]) or shapes.get(node.input[1])
        if not out or not w or 0 in out[1:] or 0 in w:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            macs[node.name] = int(np.prod(out[1:])) * int(np.prod(w[1:]))
        else:   # [.., M, N] outputs, K = the weight's reduction dim
            k = w[-2] if node.op_type == "MatMul" else (w[1] if _transposed(node) else w[0])
            macs[node.name] = int(np.prod(out[1:])) * int(k)
    return macs


def _transposed(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


def search(state, max_loss: float, metric_spec: str = loss_metrics.AUTO, log=None) -> dict:
    """Raise layers' precision in `state` (a CompileState after its quantize stage) until the loss is
    at most `max_loss`; updates state.config / qdq_proto / plan / encodings and returns the
    report.json "precision" entry."""
    log = log or state.log
    data, labels = (state.eval_data, state.labels) if state.eval_data is not None else (state.calib, None)
    float_out = ort_backend.run_all(ort_backend.make_session(state.float_proto), data)
    name = loss_metrics.auto(float_out, labels) if metric_spec == loss_metrics.AUTO else metric_spec
    metric = loss_metrics.resolve(name)

    def loss_of(qdq: onnx.ModelProto) -> float:
        q = ort_backend.run_all(ort_backend.make_session(qdq), data)
        return loss_metrics.evaluate(metric, float_out, q, labels)

    base = loss_of(state.qdq_proto)
    entry = {"metric": metric.name, "max_loss": max_loss, "data": "evaluation" if state.eval_data is not None
             else "calibration", "int8_loss": base, "loss": base, "met": base <= max_loss, "raised": [],
             "trials": [{"rung": "int8", "k": 0, "loss": base}]}
    if entry["met"]:
        log(f"precision: all-int8 {metric.name} loss {base:.4g} <= {max_loss:g}: nothing raised")
        return entry

    # every layer's end-to-end effect: output SQNR with it alone kept float (one QDQ-graph run each on
    # a few samples); the local ranking alone puts many layers first whose error the network absorbs
    # (MobileNetV2, KL 0.09 -> 0.03: 25 layers to int16 by local SQNR)
    swept = sweep(state.float_proto, state.qdq_proto, state.plan.roles, state.calib, samples=SENSITIVITY_SAMPLES,
                  recover_top=len(state.plan.roles))
    layers = [r for r in swept["layers"] if math.isfinite(r["sqnr_db"])]
    layers.sort(key=lambda r: -np.nan_to_num(r.get("recovered_db", 0.0), nan=0.0))   # stable: ties stay local order
    macs = layer_macs(state.float_proto)
    base_config = state.config
    best = (base, 0, None, (state.config, state.qdq_proto, state.plan, state.encodings))
    bar = tqdm(desc="precision search", unit="trial", disable=not state.progress, leave=False)

    def trial(rung: Rung, k: int):
        config = base_config
        for layer in layers[:k]:
            config = rung.raise_layer(config, layer)
        # a float layer can make a tensor a shared-scale root that the int8 plan never calibrated
        missing = sorted(build_plan(state.float_model, config).roots() - set(state.stats))
        if missing:
            state.stats.update(calibrate(state.float_proto, missing, state.calib,
                                         batch_size=config.calib_batch_size, memory_mb=config.calib_memory_mb,
                                         progress=False))
        config, model, plan, encodings = quantizing.with_passes(state.float_model, state.float_proto, config,
                                                                state.stats, state.calib, Trace())
        proto = ir.to_proto(model)
        loss = loss_of(proto)
        bar.update(1)
        entry["trials"].append({"rung": rung.name, "k": k, "loss": loss})
        return loss, (config, proto, plan, encodings)

    chosen = None
    opset = next((o.version for o in state.float_proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    for rung in (r for r in RUNGS if r.available(base_config) and opset >= _min_opset(r.scheme)):
        passing, failing, k = None, 0, 1
        while k <= len(layers):          # doubling: the first k under the budget
            loss, built = trial(rung, k)
            if loss < best[0]:
                best = (loss, k, rung, built)
            if loss <= max_loss:
                passing = (k, loss, built)
                break
            failing = k
            k = len(layers) if k < len(layers) < 2 * k else 2 * k
        if passing is None:
            continue
        lo, hi = failing, passing[0]
        while hi - lo > 1:               # bisection between the last failing and the first passing k
            mid = (lo + hi) // 2
            loss, built = trial(rung, mid)
            if loss <= max_loss:
                hi, passing = mid, (mid, loss, built)
            else:
                lo = mid
        chosen = (passing[1], passing[0], rung, passing[2])
        break
    bar.close()
    loss, k, rung, built = chosen or best
    state.config, state.qdq_proto, state.plan, state.encodings = built
    entry.update(loss=loss, met=chosen is not None, rung=rung.name if rung else "int8")
    entry["raised"] = [{"node": l["node"], "op": l["op"], "to": rung.name, "sqnr_db": l["sqnr_db"],
                        "recovered_db": l.get("recovered_db"), "macs": macs.get(l["node"], 0)}
                       for l in layers[:k]] if rung else []
    total = sum(macs.values())
    extra = sum(r["macs"] * (rung.cost - 1.0) for r in entry["raised"]) if rung else 0.0
    entry["modelled_cost"] = {"int8_macs": total, "raised_macs": sum(r["macs"] for r in entry["raised"]),
                              "relative": (total + extra) / total if total else None}
    how = f"{k} of {len(layers)} layers to {rung.name}" if rung else "nothing raised"
    if entry["met"]:
        log(f"precision: {how}: {metric.name} loss {base:.4g} -> {loss:.4g} <= {max_loss:g}")
    else:
        log(f"precision: warning: no assignment met {metric.name} loss <= {max_loss:g}; kept the lowest "
            f"loss found, {loss:.4g} ({how})")
    return entry
