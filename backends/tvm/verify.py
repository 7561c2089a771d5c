"""Exactness checks of a TVM build against onnxruntime on the same QDQ model: the figures of
exactness.py (see its docstring for why there are two), and ``layerwise``, which builds and runs a
teacher-forced copy of the model (the top of the backend's import graph: it builds and runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .artifact_io import input_shapes_from  # noqa: F401  (re-exported for the benchmarks)
from .exactness import (FORCED_SUFFIX, _within, activation_quantizers, end_to_end,  # noqa: F401
                        fidelity_vs_fp32, output_steps, perturbation_floor, teacher_forced, with_quantized_outputs)
from .pipeline import build
from .runtime import Runner


def layerwise(qdq_model: onnx.ModelProto, feeds: dict[str, np.ndarray], build_dir: Path, target: dict,
              ort_session=None) -> dict:
    """Teacher-forced per-layer comparison (see the module doc). Builds one TVM library."""
    from qcc.backends import onnxruntime as ort_backend

    quant = activation_quantizers(qdq_model)
    names = list(quant)
    ref_model = with_quantized_outputs(qdq_model, names)
    sess = ort_session or ort_backend.make_session(ref_model)
    ref_names = [o.name for o in ref_model.graph.output]
    ref = dict(zip(ref_names, ort_backend.run_all(sess, feeds, output_names=ref_names)))
    forced_model, forced = teacher_forced(qdq_model)
    shapes = {name: ["batch"] + list(ref[q].shape[1:]) for name, q in forced.items()}
    for vi in forced_model.graph.input:
        if vi.name in feeds:
            shapes[vi.name] = ["batch"] + list(np.shape(feeds[vi.name])[1:])
    info = build(forced_model, target, build_dir, input_shapes=shapes)
    runner = Runner(build_dir)
    tvm_feeds = dict(feeds)
    tvm_feeds.update({name: ref[q] for name, q in forced.items()})
    outs = dict(zip(runner.output_names, runner.run(tvm_feeds)))
    per_tensor = {}
    total = within = 0
    for q in names:
        a, b = outs[q], ref[q]
        ok = _within(a, b, 1.0)
        per_tensor[q] = {"within_1_step": float(ok.mean()), "max_steps": int(np.abs(a.astype(np.int64) - b).max()),
                         "exact": float((a == b).mean())}
        total += ok.size
        within += int(ok.sum())
    float_outs = {}
    steps = output_steps(qdq_model)
    for o, step in zip(qdq_model.graph.output, steps):
        if o.name in quant or step is None:
            continue
        ok = _within(outs[o.name], ref[o.name], step)
        float_outs[o.name] = {"step": step, "within_step": float(ok.mean()),
                              "max_abs": float(np.abs(outs[o.name] - ref[o.name]).max())}
        total += ok.size
        within += int(ok.sum())
    worst = min(per_tensor.items(), key=lambda kv: kv[1]["within_1_step"]) if per_tensor else (None, {})
    return {"within_1_step": within / max(total, 1), "tensors": len(per_tensor),
            "worst_tensor": worst[0], "worst": worst[1], "float_outputs": float_outs, "per_tensor": per_tensor,
            "build": info}
