"""Exactness checks of a TVM build against onnxruntime on the same QDQ model (no TVM here: every
target's build imports this to check what it built; verify.py adds the teacher-forced build).

Two figures, because deep quantized networks are *chaotic* in their rounding: one tensor element
that lands on the other side of a rounding tie moves by one step, and the layers after it can turn
that into several steps (a depthwise filter with large weights and a small output scale maps one
input step onto ~7 output steps). onnxruntime's own fused (ORT_ENABLE_ALL) and unfused
(ORT_DISABLE_ALL) executions of qcc's MobileNetV2 QDQ graph already differ in ~80 % of the pooled
features, so an end-to-end element-wise bar cannot tell a correct lowering from a wrong one there.

* ``layerwise`` (verify.py, it builds): teacher forcing. Every activation ``DequantizeLinear`` reads a new graph input
  instead of its ``QuantizeLinear``; both backends get onnxruntime's own quantized tensors there,
  so each quantized tensor is computed by one layer from identical integer inputs. An exact
  lowering agrees to within one step everywhere but at rounding ties.
* ``end_to_end``: the plain outputs, with the tolerance one step of the output's quantizer (or, for
  a float output, the scale of the nearest upstream QuantizeLinear), next to the same figure for
  onnxruntime fused vs unfused as the noise floor (fused only where exact on this CPU).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

FORCED_SUFFIX = "__forced"


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def activation_quantizers(model: onnx.ModelProto) -> dict[str, dict]:
    """QuantizeLinear outputs -> {scale, zero_point, elem_type} (per-tensor activations only)."""
    inits = _initializers(model)
    out = {}
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        s = inits.get(n.input[1])
        z = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else np.array(0, np.uint8)
        if s is None or z is None or s.size != 1:
            continue
        out[n.output[0]] = {"scale": float(s.reshape(())), "zero_point": int(z.reshape(())),
                            "elem_type": onnx.helper.np_dtype_to_tensor_dtype(z.dtype)}
    return out


def with_quantized_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    quant = activation_quantizers(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in names:
        if name not in present:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, quant[name]["elem_type"], None))
    return m


def teacher_forced(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy whose activation DequantizeLinear nodes read graph inputs `<q>__forced` instead of the
    QuantizeLinear output <q>; every <q> becomes a graph output. Returns (model, forced input -> q)."""
    quant = activation_quantizers(model)
    m = with_quantized_outputs(model, list(quant))
    forced: dict[str, str] = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in quant:
            q = n.input[0]
            name = q + FORCED_SUFFIX
            if name not in forced:
                forced[name] = q
                m.graph.input.append(onnx.helper.make_tensor_value_info(name, quant[q]["elem_type"], None))
            n.input[0] = name
    return m, forced


def _within(a: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64)) <= tol * (1 + 1e-6)


def _nearest_upstream_scale(model: onnx.ModelProto, name: str) -> float | None:
    """Scale of the closest QuantizeLinear above tensor `name` (breadth-first over producers)."""
    inits = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    frontier, seen = [name], set()
    while frontier:
        nxt = []
        for t in frontier:
            n = producer.get(t)
            if n is None or t in seen:
                continue
            seen.add(t)
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0] not in inits:
                s = inits.get(n.input[1])
                if s is not None and s.size == 1:
                    return float(s.reshape(()))
            nxt.extend(i for i in n.input if i and i not in inits)
        frontier = nxt
    return None


def output_steps(model: onnx.ModelProto) -> list[float | None]:
    """The tolerance per graph output: its own quantizer's step, else the nearest upstream scale."""
    return [_nearest_upstream_scale(model, o.name) for o in model.graph.output]


def end_to_end(qdq_model: onnx.ModelProto, tvm_outputs: list[np.ndarray], feeds: dict[str, np.ndarray]) -> dict:
    """Fraction of output elements within one step of onnxruntime (fused where that is exact on this
    CPU and graph: ort_backend.fuses_exactly), and the same figure for onnxruntime fused vs unfused (the
    floor set by rounding ties)."""
    from qcc.backends import onnxruntime as ort_backend

    ref = ort_backend.run_all(ort_backend.make_session(qdq_model), feeds)
    unfused = ort_backend.run_all(ort_backend.make_session(qdq_model, optimize=False), feeds)
    steps = output_steps(qdq_model)
    quant = activation_quantizers(qdq_model)
    result = {}
    for o, step, a, b, c in zip(qdq_model.graph.output, steps, tvm_outputs, ref, unfused):
        step = quant[o.name]["scale"] if o.name in quant else step
        if o.name in quant:
            tol = 1.0       # integer outputs: compare codes
        else:
            tol = step if step is not None else 1e-5 * float(np.abs(b).max())
        result[o.name] = {
            "step": step,
            "within_step": float(_within(a, b, tol).mean()),
            "ort_fused_vs_unfused_within_step": float(_within(c, b, tol).mean()),
            "max_abs": float(np.abs(a.astype(np.float64) - b).max()),
            "mean_abs": float(np.abs(a.astype(np.float64) - b).mean()),
            "ort_fused_vs_unfused_mean_abs": float(np.abs(c.astype(np.float64) - b).mean()),
        }
    return result


def check_with_runner(job, info: dict, open_runner, after_run=None) -> dict:
    """How a cross build is checked at compile time: where the tools its target record names are
    installed (job.missing_tools()), open its runner on job.folder, run job.check_feeds() and
    compare with onnxruntime (info["exactness"]); else say why not (info["exactness_skipped"]).
    `after_run(runner, info)` adds what the runner measured (the c target's code size)."""
    info["exactness"] = {}
    missing = job.missing_tools()
    if missing:
        info["exactness_skipped"] = f"{', '.join(missing)} not installed: the build was not run here"
        job.log(f"{job.name} build not checked: {info['exactness_skipped']}")
        return info
    sample = job.check_feeds()
    runner = open_runner(job.folder)
    outputs = runner.run(sample)
    if after_run is not None:
        after_run(runner, info)
    info["exactness"] = end_to_end(job.qdq_model, outputs, sample)
    return info


def fidelity_vs_fp32(float_model: onnx.ModelProto, qdq_model: onnx.ModelProto, tvm_outputs: list[np.ndarray],
                     feeds: dict[str, np.ndarray], labels: np.ndarray | None = None) -> dict:
    """qcc's fidelity metrics (agreement / KL / cosine / SQNR vs the FP32 model) for the TVM build,
    onnxruntime on the QDQ model (fused), and onnxruntime unfused (the noise floor of the first two)."""
    from qcc import metrics
    from qcc.backends import onnxruntime as ort_backend

    names = [o.name for o in qdq_model.graph.output]
    ref = ort_backend.run_all(ort_backend.make_session(float_model), feeds)
    ort = ort_backend.run_all(ort_backend.make_session(qdq_model), feeds)
    unfused = ort_backend.run_all(ort_backend.make_session(qdq_model, optimize=False), feeds)
    return {"tvm": metrics.fidelity(ref, tvm_outputs, names, labels),
            "ort": metrics.fidelity(ref, ort, names, labels),
            "ort_unfused": metrics.fidelity(ref, unfused, names, labels)}


def perturbation_floor(qdq_model: onnx.ModelProto, feeds: dict[str, np.ndarray], rel: float = 1e-4,
                       seeds: int = 3, float_model: onnx.ModelProto | None = None) -> dict:
    """How far onnxruntime moves from itself when float inputs move by `rel` of one input
    quantization step (flipping only the few input codes that sit within `rel` of a rounding tie).
    The rounding-tie chaos of the QDQ model at its quietest: a backend whose distance to
    onnxruntime is at or below this is at the noise floor. Per output: mean / max abs difference
    and, with float_model, qcc's fidelity metrics vs FP32 per seed."""
    from qcc import metrics
    from qcc.backends import onnxruntime as ort_backend

    quant = activation_quantizers(qdq_model)
    sess = ort_backend.make_session(qdq_model)
    base = ort_backend.run_all(sess, feeds)
    names = [o.name for o in qdq_model.graph.output]
    ref = ort_backend.run_all(ort_backend.make_session(float_model), feeds) if float_model is not None else None
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(seeds):
        pert = {}
        for k, v in feeds.items():
            q = quant.get(k + "_quantized") or next((s for n, s in quant.items() if n.startswith(k)), None)
            if np.issubdtype(np.asarray(v).dtype, np.floating) and q is not None:
                pert[k] = (v + rng.uniform(-1, 1, np.shape(v)) * rel * q["scale"]).astype(v.dtype)
            else:
                pert[k] = v
        out = ort_backend.run_all(sess, pert)
        entry = {n: {"mean_abs": float(np.abs(o.astype(np.float64) - b).mean()),
                     "max_abs": float(np.abs(o.astype(np.float64) - b).max())} for n, o, b in zip(names, out, base)}
        if ref is not None:
            fid = metrics.fidelity(ref, out, names)
            for n in names:
                entry[n]["fidelity"] = fid[n]
        runs.append(entry)
    return {n: {"mean_abs": max(r[n]["mean_abs"] for r in runs), "max_abs": max(r[n]["max_abs"] for r in runs),
                "runs": [r[n] for r in runs]} for n in names}
