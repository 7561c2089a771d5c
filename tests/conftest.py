"""Shared helpers for the qcc test suite: tiny ONNX graphs, onnxruntime reference runs, configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

FLOAT = TP.FLOAT


def make_model(nodes, inputs, outputs, initializers=None, opset: int = 17, ir_version: int | None = None):
    """An onnx.ModelProto from helper nodes; `inputs` / `outputs` are (name, shape) pairs or ValueInfos,
    `initializers` a name -> array dict."""

    def vi(item):
        if isinstance(item, onnx.ValueInfoProto):
            return item
        name, shape = item[0], item[1]
        dtype = item[2] if len(item) > 2 else FLOAT
        return oh.make_tensor_value_info(name, dtype, shape)

    inits = [nh.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = oh.make_graph(nodes, "test_graph", [vi(i) for i in inputs], [vi(o) for o in outputs], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = ir_version or (7 if opset <= 13 else 8 if opset <= 18 else 9 if opset <= 20 else 10)
    return model


def session(model, optimize: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    from qcc.backends.onnxruntime import fuses_exactly

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if not fuses_exactly(proto):   # the QDQ graph's meaning (u8s8 saturation without VNNI, QLinearSoftmax)
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def run(model, feeds: dict, optimize: bool = True) -> list[np.ndarray]:
    return session(model, optimize).run(None, feeds)


def max_rel_err(ref: np.ndarray, test: np.ndarray) -> float:
    """max |ref - test| / max |ref| (a scale-aware relative error that tolerates zeros)."""
    ref = np.asarray(ref, np.float64)
    test = np.asarray(test, np.float64)
    assert ref.shape == test.shape, (ref.shape, test.shape)
    return float(np.abs(ref - test).max() / max(np.abs(ref).max(), 1e-30))


def config(**kw):
    """A QuantConfig with optional graph passes (e.g. bias correction) switched off unless asked for,
    so unit tests of planning / emission see exactly the float biases they built."""
    from qcc import QuantConfig

    fields = {f.name for f in dataclasses.fields(QuantConfig)}
    if "passes" in fields:
        kw.setdefault("passes", [])
    kw.setdefault("calibration", "minmax")
    return QuantConfig(**kw)


def compile_quiet(model, calib, **kw):
    import qcc

    cfg = kw.pop("config", None) or config()
    return qcc.compile_model(model, calib, config=cfg, progress=False, **kw)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for t in model.graph.initializer}


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


@pytest.fixture(scope="session")
def fashion_paths():
    from qcc.models import bundled_calib_path, bundled_model_path

    return Path(bundled_model_path()), Path(bundled_calib_path())


@pytest.fixture(scope="session")
def fashion_calib(fashion_paths):
    with np.load(fashion_paths[1]) as z:
        return {"input": z["input"][:64].copy()}
