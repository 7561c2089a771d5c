"""onnxruntime: the reference backend. It runs the float graph for calibration and the QDQ graph
as the reference every compiled backend is compared against."""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import onnx
import onnxruntime as ort

from ..threads import default_threads


def fused_qdq_is_exact() -> bool:
    """Whether onnxruntime's fused QDQ kernels compute what the QDQ graph says on this CPU: on x86
    only with VNNI (without it, u8s8 kernels add int16 pairs with saturation: the bundled CNN's
    accuracy reads 0.833 instead of 0.927 on an AVX2-only EPYC); ARM's int8 dot products are exact."""
    global _FUSED_EXACT
    if _FUSED_EXACT is None:
        import platform

        _FUSED_EXACT = True
        if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86"):
            try:
                flags = open("/proc/cpuinfo").read()
                _FUSED_EXACT = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
            except OSError:
                _FUSED_EXACT = False
    return _FUSED_EXACT


_FUSED_EXACT: bool | None = None


def make_session(model: onnx.ModelProto | str | os.PathLike, threads: int | None = None,
                 optimize: bool = True, fuse_qdq: bool | None = None,
                 few_runs: bool = False) -> ort.InferenceSession:
    """A CPU session that keeps the QDQ graph's meaning: onnxruntime's QDQ fusions (QLinearConv,
    MatMulIntegerToFloat, ...) only where they are exact on this CPU and for this graph (fuses_exactly).
    `fuse_qdq=True`: the fused graph whatever the CPU (what an onnxruntime user gets: latency).
    `few_runs=True`: a statistics session (a few batches, many outputs): no memory pattern, whose
    planning on the first run costs more than it saves (MobileNetV2, all outputs: -10%)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    opts = ort.SessionOptions()
    if not (fuses_exactly(model) if fuse_qdq is None else fuse_qdq):
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    opts.intra_op_num_threads = threads or default_threads()
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = not few_runs
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    # onnxruntime 1.32's Clip/Relu-into-Q rewrites assume integer zero points: on FP8 graphs the
    # first aborts and the second deletes the Relu (negatives pass through). Both are only
    # optimizations, so FP8 graphs run without them.
    disabled = ["ClipQuantRewrite", "ReluQuantRewrite"] if _has_float8(model) else None
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled)


def fuses_exactly(model: onnx.ModelProto) -> bool:
    """Whether onnxruntime's fused QDQ graph computes what `model` says, here: on a CPU where the fused
    kernels are exact, and without a quantized Softmax."""
    return fused_qdq_is_exact() and not _quantized_softmax(model)


def _quantized_softmax(model: onnx.ModelProto) -> bool:
    """A Softmax between DequantizeLinear and QuantizeLinear: onnxruntime fuses it into QLinearSoftmax,
    whose exp table rounds differently from the graph's float Softmax (on a small attention block,
    14% of the outputs a step or more off the unfused graph, which qcc's TVM build matches to 1e-7)."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    consumers: dict = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    return any(n.op_type == "Softmax" and producer.get(n.input[0]) == "DequantizeLinear"
               and consumers.get(n.output[0]) == ["QuantizeLinear"] for n in model.graph.node)


_FLOAT8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E4M3FNUZ,
           onnx.TensorProto.FLOAT8E5M2FNUZ}


def _has_float8(model: onnx.ModelProto) -> bool:
    return any(t.data_type in _FLOAT8 for t in model.graph.initializer)


def with_outputs(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of `model` that also returns the named intermediate tensors (float32)."""
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    present = {o.name for o in extra.graph.output}
    for name in names:
        if name not in present:
            extra.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return extra


def fixed_batch(model: onnx.ModelProto) -> bool:
    """True when an input's axis 0 is a fixed 1 (the model cannot take a bigger batch)."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            return True
    return False


def batch_size_for(model: onnx.ModelProto, wanted: int) -> int:
    return 1 if fixed_batch(model) else wanted


def batches(feeds: dict[str, np.ndarray], batch_size: int) -> Iterable[dict[str, np.ndarray]]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in feeds.items()}


def run_all(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch_size: int = 32,
            output_names: list[str] | None = None) -> list[np.ndarray]:
    """Run every sample in `feeds` through the session and concatenate outputs along axis 0, in
    batches of `batch_size` (of the model's own batch where it fixes one: most exports fix 1)."""
    fixed = {i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    if fixed:
        batch_size = min(fixed)
    parts: list[list[np.ndarray]] = []
    for batch in batches(feeds, batch_size):
        parts.append(session.run(output_names, batch))
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]
