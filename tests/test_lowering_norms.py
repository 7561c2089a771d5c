"""Softmax and LayerNormalization between quantized tensors as one int8 -> int8 kernel each
(rules/norms.py): the rule fires (no float fallback), the codes are onnxruntime's on the same QDQ graph
(its graph optimizations off: the QDQ float semantics), a failed check reports its reason, and the
C tree builds the kernels bit-exact with llvm."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from conftest import compile_quiet, make_model, run

tvm_backend = pytest.importorskip("qcc.backends.tvm")
from qcc.backends.tvm import c_source  # noqa: E402
from qcc.backends.tvm.lowering.rules import norms  # noqa: E402

N = oh.make_node
NP = {TP.INT8: np.int8, TP.UINT8: np.uint8}


def _qdq(op_nodes, shape, dtype, s_in, z_in, s_out, z_out, extra=None, opset=17):
    """Q -> DQ -> op nodes (reading 'xf', writing 'y') -> Q -> DQ."""
    dt = NP[dtype]
    nodes = [N("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]), N("DequantizeLinear", ["xq", "s_in", "z_in"], ["xf"]),
             *op_nodes,
             N("QuantizeLinear", ["y", "s_out", "z_out"], ["yq"]), N("DequantizeLinear", ["yq", "s_out", "z_out"], ["out"])]
    inits = {"s_in": np.float32(s_in), "z_in": dt(z_in), "s_out": np.float32(s_out), "z_out": dt(z_out), **(extra or {})}
    return make_model(nodes, [("x", shape)], [("out", shape)], inits, opset=opset)


def _softmax(shape, dtype, s_in, axis=-1):
    z_in, z_out = (3, -128) if dtype == TP.INT8 else (131, 0)
    return _qdq([N("Softmax", ["xf"], ["y"], axis=axis)], shape, dtype, s_in, z_in, 1 / 256, z_out, opset=13)


def _layernorm(shape, dtype, s_in, beta=True, seed=0):
    rng = np.random.default_rng(seed)
    n = shape[-1]
    extra = {"g": rng.normal(1.0, 0.3, n).astype(np.float32)}
    ins = ["xf", "g"]
    if beta:
        extra["b"] = rng.normal(0.0, 0.2, n).astype(np.float32)
        ins.append("b")
    z_in, z_out = (-7, 4) if dtype == TP.INT8 else (120, 128)
    return _qdq([N("LayerNormalization", ins, ["y"], axis=-1, epsilon=1e-5)], shape, dtype, s_in, z_in, 0.03, z_out,
                extra)


def _steps(model, got, ref) -> np.ndarray:
    """|got - ref| in output quantization steps."""
    s = next(i for i in model.graph.initializer if i.name == "s_out")
    step = float(np.frombuffer(s.raw_data, np.float32)[0]) if s.raw_data else s.float_data[0]
    return np.abs(got.astype(np.float64) - ref.astype(np.float64)) / step


def _compare(tmp_path, model, shape, spread, seed=1):
    """Build, run on random data, compare with onnxruntime: (build info, fraction exact, max steps)."""
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    x = (np.random.default_rng(seed).normal(size=shape) * spread).astype(np.float32)
    (got,) = tvm_backend.Runner(tmp_path).run({"x": x})
    (ref,) = run(model, {"x": x}, optimize=False)
    d = _steps(model, got, ref)
    return info, float(np.mean(d < 1e-3)), float(d.max())


@pytest.mark.parametrize("dtype", [TP.INT8, TP.UINT8], ids=["int8", "uint8"])
@pytest.mark.parametrize("shape,s_in", [([1, 4, 16, 16], 0.05), ([1, 64, 384], 0.02), ([2, 3, 40], 0.2)])
def test_softmax_is_one_int8_kernel_equal_to_onnxruntime(tmp_path, shape, s_in, dtype):
    model = _softmax(shape, dtype, s_in)
    info, exact, worst = _compare(tmp_path, model, shape, spread=60 * s_in)
    assert info["float_fallback"] == [] and info["integer_ops"] == {"softmax": 1}, info
    assert worst <= 1.0 + 1e-6 and exact >= 0.999, (exact, worst)


@pytest.mark.parametrize("dtype", [TP.INT8, TP.UINT8], ids=["int8", "uint8"])
@pytest.mark.parametrize("shape,beta", [([1, 64, 384], True), ([1, 4, 16, 16], True), ([2, 8, 96], False)])
def test_layernorm_is_one_int8_kernel_equal_to_onnxruntime(tmp_path, shape, beta, dtype):
    model = _layernorm(shape, dtype, 0.04, beta)
    info, exact, worst = _compare(tmp_path, model, shape, spread=1.5)
    assert info["float_fallback"] == [] and info["integer_ops"] == {"layer_norm": 1}, info
    assert worst <= 1.0 + 1e-6 and exact >= 0.999, (exact, worst)


def test_exp_table_is_float32_exp_of_the_integer_differences():
    t = norms.exp_table(0.05)
    assert t.dtype == np.float32 and t.shape == (256,) and t[255] == 1.0
    assert t[0] == np.exp(np.float32(-255) * np.float32(0.05)) and np.all(np.diff(t) > 0)


def test_softmax_over_a_middle_axis_reports_its_reason(tmp_path):
    model = _softmax([1, 4, 16, 16], TP.INT8, 0.05, axis=1)
    _, _, ops, fallback = tvm_backend.lower(model)
    assert fallback == [{"op": "nn.softmax", "reason": "softmax over axis 1, not the last", "count": 1}], fallback
    assert "softmax" not in ops


def test_float_input_reports_not_quantized():
    """A LayerNorm reading a float tensor (no DequantizeLinear before it) keeps the float op, and says why."""
    model = _layernorm([1, 8, 32], TP.INT8, 0.04)
    g = model.graph
    dq = next(n for n in g.node if n.op_type == "DequantizeLinear")
    ln = next(n for n in g.node if n.op_type == "LayerNormalization")
    ln.input[0] = "x"
    g.node.remove(dq)
    g.node.remove(next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "x"))
    _, _, _, fallback = tvm_backend.lower(model)
    assert fallback == [{"op": "nn.layer_norm", "reason": "layer_norm: input is not a quantized tensor", "count": 1}]


def test_layernorm_with_a_second_float_consumer_stays_float():
    """The normalized value also read in float (a residual branch): the float op stays live, so the
    kernel would only add a pass; the rule declines with the reason."""
    model = _layernorm([1, 8, 32], TP.INT8, 0.04)
    model.graph.node.append(N("Relu", ["y"], ["r"]))
    model.graph.output.append(oh.make_tensor_value_info("r", TP.FLOAT, [1, 8, 32]))
    _, _, ops, fallback = tvm_backend.lower(model)
    assert "layer_norm" not in ops
    assert {"op": "nn.layer_norm", "reason": "intermediate result has several consumers", "count": 1} in fallback


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None,
                    reason="the C tree is built with gcc and make")
def test_c_tree_runs_the_kernels_bit_exact_with_llvm(tmp_path):
    """Softmax and LayerNorm kernels in one graph on the c target: the C tree prints their float
    constants exactly and computes the llvm build's bytes."""
    rng = np.random.default_rng(4)
    shape = [2, 6, 48]
    nodes = [N("QuantizeLinear", ["x", "s0", "z0"], ["xq"]), N("DequantizeLinear", ["xq", "s0", "z0"], ["xf"]),
             N("LayerNormalization", ["xf", "g", "b"], ["ln"], axis=-1, epsilon=1e-5),
             N("QuantizeLinear", ["ln", "s1", "z1"], ["lq"]), N("DequantizeLinear", ["lq", "s1", "z1"], ["lf"]),
             N("Softmax", ["lf"], ["p"], axis=-1),
             N("QuantizeLinear", ["p", "s2", "z2"], ["pq"]), N("DequantizeLinear", ["pq", "s2", "z2"], ["y"])]
    inits = {"s0": np.float32(0.03), "z0": np.int8(-2), "s1": np.float32(0.025), "z1": np.int8(0),
             "s2": np.float32(1 / 256), "z2": np.int8(-128),
             "g": rng.normal(1, 0.3, 48).astype(np.float32), "b": rng.normal(0, 0.2, 48).astype(np.float32)}
    model = make_model(nodes, [("x", shape)], [("y", shape)], inits, opset=17)
    info = c_source.build_c(model, tmp_path / "c")
    assert info["float_fallback"] == [], info["float_fallback"]
    x = rng.normal(size=shape).astype(np.float32)
    (got,) = c_source.CRunner(tmp_path / "c").run({"x": x})
    llvm = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path / "llvm")
    assert llvm["integer_ops"] == {"layer_norm": 1, "softmax": 1}, llvm
    (ref,) = tvm_backend.Runner(tmp_path / "llvm").run({"x": x})
    assert got.dtype == ref.dtype and np.array_equal(got.view(np.uint8), ref.view(np.uint8))
    (ort,) = run(model, {"x": x}, optimize=False)
    assert np.abs(np.round(got * 256) - np.round(ort * 256)).max() <= 1


def _attention(axis=-1):
    """x -> MatMul -> Softmax -> MatMul: an attention block's probabilities with no additive mask."""
    rng = np.random.default_rng(5)
    inits = {"wq": (rng.normal(size=(32, 32)) / 2).astype(np.float32),
             "wv": (rng.normal(size=(32, 8)) / 6).astype(np.float32)}
    nodes = [N("MatMul", ["x", "wq"], ["s"], name="scores"), N("Softmax", ["s"], ["p"], axis=axis, name="softmax"),
             N("MatMul", ["p", "wv"], ["y"], name="context")]
    return make_model(nodes, [("x", [1, 16, 32])], [("y", [1, 16, 8])], inits, opset=17)


def test_plan_quantizes_softmax_in_and_out_and_the_kernel_fires(tmp_path):
    """The plan's norm role: a Softmax over the last axis whose output a MatMul reads is quantized at
    its input too, so the compiled model runs it as the int8 kernel; over a middle axis it is not."""
    calib = {"x": np.random.default_rng(6).normal(size=(8, 16, 32)).astype(np.float32)}
    r = compile_quiet(_attention(), calib, target="llvm", out_dir=tmp_path / "a")
    assert r.plan.roles["softmax"] == "norm", r.plan.roles
    backend = r.report["backend"]
    assert backend["integer_ops"].get("softmax") == 1, backend["integer_ops"]
    assert not [f for f in backend["float_fallback"] if f["op"] == "nn.softmax"], backend["float_fallback"]
    r2 = compile_quiet(_attention(axis=1), calib)
    assert "softmax" not in r2.plan.roles and "softmax" in r2.plan.float_nodes
