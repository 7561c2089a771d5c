"""report.json: what was quantized and how, what stayed float and why, and what it cost.

- fidelity: final outputs of the float vs the QDQ graph on the evaluation set (or the calibration
  set, flagged, when no evaluation set is given) - see metrics.py; fidelity.metrics: the loss of each
  metric asked for (`qcc compile --metric`, loss_metrics.py), lower is better.
- layers: one row per quantized node: op, role, weight type / granularity / scale range, input
  activation encoding, and the SQNR (dB) of the node's output, float graph vs QDQ graph, streamed
  over up to `sqnr_samples` samples (noise and signal energies are summed per batch, never stored).
- sensitivity: each layer alone quantized on the float graph's own inputs (sensitivity.py), ranked
  lowest SQNR first; the layer rows carry it as `sensitivity_db` (local, where sqnr_db is accumulated).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from tqdm import tqdm

from .backends import onnxruntime as ort_backend
from .data import n_samples, subset
from .loss_metrics import evaluate_all
from .metrics import fidelity
from .plan import QuantPlan
from .sensitivity import sweep


def build_report(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, plan: QuantPlan,
                 encodings: dict[str, dict], calib: dict[str, np.ndarray], eval_data: dict[str, np.ndarray] | None,
                 labels: np.ndarray | None, progress: bool = True, sqnr_samples: int = 32,
                 metrics: list | None = None) -> dict:
    output_names = [o.name for o in float_model.graph.output]
    data, on = (eval_data, "evaluation") if eval_data is not None else (calib, "calibration")
    ref_sess = ort_backend.make_session(float_model)
    q_sess = ort_backend.make_session(qdq_model)
    batch = ort_backend.batch_size_for(float_model, 32)
    ref_out, q_out = [], []
    for b in tqdm(list(ort_backend.batches(data, batch)), desc="evaluate", unit="batch", disable=not progress,
                  leave=False):
        ref_out.append(ref_sess.run(output_names, b))
        q_out.append(q_sess.run(output_names, b))
    ref = [np.concatenate([r[i] for r in ref_out]) for i in range(len(output_names))]
    qq = [np.concatenate([r[i] for r in q_out]) for i in range(len(output_names))]
    report = {
        "fidelity": {"data": on, "samples": n_samples(data),
                     "outputs": fidelity(ref, qq, output_names, labels if on == "evaluation" else None)},
        "layers": _layers(float_model, qdq_model, plan, encodings, subset(calib, sqnr_samples)),
        "float_nodes": [{"node": n, "op": op, "reason": why} for n, (op, why) in plan.float_nodes.items()],
        "quantized_nodes": dict(Counter(plan.roles.values())),
        "unsupported_ops": sorted({op for op, why in plan.float_nodes.values() if why.startswith("no integer")}),
    }
    if metrics:
        report["fidelity"]["metrics"] = evaluate_all(metrics, ref, qq, labels if on == "evaluation" else None)
    report["sensitivity"] = _sensitivity(float_model, qdq_model, plan, calib, report["layers"])
    return report


SENSITIVITY_SAMPLES = 8


def _sensitivity(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, plan: QuantPlan,
                 calib: dict[str, np.ndarray], rows: list[dict]) -> dict:
    """sensitivity.py's sweep (each layer alone quantized, on the float graph's own inputs), ranked
    lowest first; each layer row it measured gets its local `sensitivity_db`. An analysis only: a
    graph it cannot take leaves {"error": ...} in the report, not a failed compile."""
    try:
        result = sweep(float_model, qdq_model, plan.roles, calib, samples=SENSITIVITY_SAMPLES)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", "layers": []}
    local = {r["node"]: r["sqnr_db"] for r in result["layers"]}
    for row in rows:
        if row["node"] in local:
            row["sensitivity_db"] = local[row["node"]]
    return result


def _layers(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, plan: QuantPlan,
            encodings: dict[str, dict], data: dict[str, np.ndarray]) -> list[dict]:
    rows, tensors = [], []
    for node in float_model.graph.node:  # graph order, so the table reads input to output
        role = plan.roles.get(node.name)
        if role is None or not node.output:
            continue
        name = node.name
        out = node.output[0]
        row = {"node": name, "op": node.op_type, "role": role, "output": out}
        act = next((encodings[i] for i in node.input if i in encodings and encodings[i]["kind"] == "activation"), None)
        weight = next((encodings[i] for i in node.input if i in encodings and encodings[i]["kind"] == "weight"), None)
        if act:
            row["input"] = {"dtype": act["dtype"], "scale": act["scale"], "zero_point": act["zero_point"]}
        if weight:
            s = np.asarray(weight["scale"])
            row["weight"] = {"dtype": weight["dtype"], "granularity": "per-channel" if s.ndim else "per-tensor",
                             "scale_min": float(s.min()), "scale_max": float(s.max())}
        if out in encodings:
            row["output_encoding"] = {"dtype": encodings[out]["dtype"], "scale": encodings[out].get("scale")}
        rows.append(row)
        tensors.append(out)
    if not tensors:
        return rows
    ref_sess = ort_backend.make_session(ort_backend.with_outputs(float_model, tensors))
    q_sess = ort_backend.make_session(ort_backend.with_outputs(qdq_model, tensors))
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    for b in ort_backend.batches(data, ort_backend.batch_size_for(float_model, 8)):
        ref = dict(zip(tensors, ref_sess.run(tensors, b)))
        q = dict(zip(tensors, q_sess.run(tensors, b)))
        for t in tensors:
            # float32 dot products (BLAS accumulates in blocks): a dB figure needs no float64 copy
            r = np.ascontiguousarray(ref[t], np.float32).ravel()
            d = r - q[t].astype(np.float32, copy=False).ravel()
            signal[t] += float(np.dot(r, r))
            noise[t] += float(np.dot(d, d))
    for row in rows:
        t = row["output"]
        row["sqnr_db"] = float(10 * np.log10(signal[t] / noise[t])) if noise[t] > 0 and signal[t] > 0 else (
            float("inf") if noise[t] == 0 else float("-inf"))
    return rows
