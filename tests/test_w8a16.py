"""W8A16: int16 symmetric activations with int8 weights, whole-model (--scheme w8a16) and per tensor
(overrides), from the qparams and range search to the QDQ graph onnxruntime runs and the TVM llvm
build's int16 x int8 kernels (bit-exact against onnxruntime on the same QDQ graph, within one step
where onnxruntime's float accumulation rounds the other way at a tie)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from conftest import compile_quiet, config, make_model, session
from qcc.config import SCHEMES
from qcc.qparams import dequantize_values, quantize_values, range_to_qparams
from qcc.qtypes import QType
from qcc.ranges import select_range
from qcc.statistics import TensorStats

RNG = np.random.default_rng(1616)


def _w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _signs(*shape, v=0.05):
    """Weights of one magnitude: every int8 code is +-127, the worst case for the int32 bound."""
    return (np.where(RNG.standard_normal(shape) < 0, -v, v)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# types, qparams, ranges
# ---------------------------------------------------------------------------------------------

def test_int16_type_and_scheme():
    t = QType.INT16
    assert (t.qmin, t.qmax, t.bits, t.numpy_dtype, t.min_opset) == (-32768, 32767, 16, np.dtype(np.int16), 21)
    assert SCHEMES["w8a16"] == (QType.INT16, True, QType.INT8)
    s, z = range_to_qparams(-3.0, 5.0, QType.INT16, symmetric=True)
    assert z == 0 and s == np.float32(5.0 / 32767.5)


def test_int16_quantize_matches_onnxruntime_quantize_linear():
    """numpy QuantizeLinear / DequantizeLinear twins == onnxruntime's opset-21 int16 kernels
    (ties, saturation at both ends)."""
    s = np.float32(0.01)
    x = np.concatenate([RNG.standard_normal(4000).astype(np.float32) * 100,
                        (np.arange(-50, 50) + 0.5).astype(np.float32) * s,   # exact ties
                        np.array([400.0, -400.0, 327.675, -327.685], np.float32)]).astype(np.float32)
    nodes = [oh.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             oh.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    model = make_model(nodes, [("x", [x.size])], [("q", [x.size], TP.INT16), ("y", [x.size])],
                       {"s": s, "z": np.array(0, np.int16)}, opset=21)
    q_ort, y_ort = session(model, optimize=False).run(None, {"x": x})
    q = quantize_values(x, s, 0, QType.INT16)
    assert q.dtype == np.int16 and np.array_equal(q, q_ort)
    assert np.array_equal(dequantize_values(q, s, 0), y_ort)
    assert q.min() == -32768 and q.max() == 32767


def _stats(x):
    st = TensorStats()
    for chunk in np.array_split(x, 4):
        st.update(chunk)
    return st


def _mse(x, lo, hi, qtype):
    s, z = range_to_qparams(lo, hi, qtype, symmetric=True)
    return float(np.mean((dequantize_values(quantize_values(x, s, z, qtype), s, z) - x) ** 2))


@pytest.mark.parametrize("outliers", [0, 20])
def test_int16_range_search_is_no_worse_than_minmax_on_the_samples(outliers):
    """4096 histogram bins are 16x coarser than int16's levels: the int16 MSE search scores
    clipping on the histogram plus step^2/12 rounding noise, so its range is never worse than
    minmax on the actual samples, and far below int8's best."""
    x = RNG.standard_normal(200_000).astype(np.float32)
    x[:outliers] = RNG.choice([-1, 1], outliers) * 60.0
    st = _stats(x)
    mm = select_range(st, "minmax", QType.INT16, True)
    lo, hi = select_range(st, "mse", QType.INT16, True)
    assert _mse(x, lo, hi, QType.INT16) <= 1.02 * _mse(x, *mm, QType.INT16)
    # entropy: a KL threshold over 32768 levels is not resolvable on 2048 bins per side -> minmax
    assert select_range(st, "entropy", QType.INT16, True) == mm
    if outliers:
        lo8, hi8 = select_range(st, "mse", QType.INT8, True)
        assert _mse(x, lo8, hi8, QType.INT8) > 50 * _mse(x, lo, hi, QType.INT16)


# ---------------------------------------------------------------------------------------------
# QDQ graphs
# ---------------------------------------------------------------------------------------------

def _convnet(deep_k: bool = True):
    """conv -> relu -> depthwise (stride 2) -> relu6 -> conv (K = 576, codes +-127: an int64
    accumulator in int16) -> relu -> maxpool -> global average pool -> flatten -> Gemm."""
    nodes = [oh.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("Conv", ["r1", "Wd", "Bd"], ["d"], group=64, pads=[1, 1, 1, 1], strides=[2, 2], name="dw"),
             oh.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="relu6"),
             oh.make_node("Conv", ["d6", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             oh.make_node("MaxPool", ["r2"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             oh.make_node("GlobalAveragePool", ["mp"], ["g"], name="gap"),
             oh.make_node("Flatten", ["g"], ["f"], name="flat"),
             oh.make_node("Gemm", ["f", "W3", "B3"], ["y"], transB=1, name="fc")]
    inits = {"W1": _w(64, 3, 3, 3), "B1": _w(64, scale=0.1), "Wd": _w(64, 1, 3, 3, scale=1.0),
             "Bd": _w(64, scale=0.1), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
             "W2": _signs(32, 64, 3, 3) if deep_k else _w(32, 64, 3, 3, scale=0.05), "B2": _w(32, scale=0.1),
             "W3": _w(10, 32), "B3": _w(10, scale=0.1)}
    return make_model(nodes, [("x", ["N", 3, 16, 16])], [("y", ["N", 10])], inits)


def _x(n):
    return RNG.standard_normal((n, 3, 16, 16)).astype(np.float32)


def _inits(q: onnx.ModelProto) -> dict:
    return {t.name: nh.to_array(t) for t in q.graph.initializer}


def _act_types(q: onnx.ModelProto) -> dict[str, int]:
    """activation tensor -> elem type of its QuantizeLinear's zero point."""
    zp = {t.name: t.data_type for t in q.graph.initializer}
    return {n.input[0]: zp[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"}


def _sqnr(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return 10 * np.log10((ref ** 2).sum() / max(((ref - got) ** 2).sum(), 1e-30))


def test_w8a16_qdq_graph_runs_in_onnxruntime():
    model, calib, x = _convnet(deep_k=False), {"x": _x(32)}, _x(8)
    ref = session(model).run(None, {"x": x})[0]
    out = {}
    for scheme in ("int8", "w8a16"):
        q = compile_quiet(model, calib, config=config(scheme=scheme)).qdq_model
        onnx.checker.check_model(q)
        types = _act_types(q)
        if scheme == "w8a16":
            assert q.opset_import[0].version >= 21
            assert set(types.values()) == {TP.INT16}, types
            inits = _inits(q)
            for n in q.graph.node:
                if n.op_type == "QuantizeLinear":
                    assert inits[n.input[2]] == 0                     # symmetric: zero point 0
            weights = [t for t in q.graph.initializer if t.name.startswith("W") and t.name.endswith("_quantized")]
            assert weights and all(t.data_type == TP.INT8 for t in weights)
            biases = [t for t in q.graph.initializer if t.name.startswith("B") and t.name.endswith("_quantized")]
            assert biases and all(t.data_type == TP.INT32 for t in biases)
        out[scheme] = _sqnr(ref, session(q).run(None, {"x": x})[0])
    # int8 weights in both (their rounding dominates this small net): 16-bit activations only add
    assert out["w8a16"] > out["int8"] > 30, out


def test_overrides_mix_int8_and_int16_layers():
    """--override r1=w8a16 in an int8 graph: r1 (conv1's output, dw's input) is int16, its neighbours
    uint8; the depthwise reads an int16 DequantizeLinear and its int32 bias has scale s_r1 * s_w;
    an override of a shared-scale member (the MaxPool output) is its group's (r2 and mp)."""
    model, calib, x = _convnet(deep_k=False), {"x": _x(32)}, _x(8)
    res = compile_quiet(model, calib, config=config(scheme="int8", overrides={"r1": "w8a16", "mp": "w8a16"}))
    q = res.qdq_model
    types = _act_types(q)
    assert types["r1"] == TP.INT16 and types["d6"] == TP.UINT8 and types["x"] == TP.UINT8
    assert types["r2"] == TP.INT16 and res.plan.activations["mp"].qtype == QType.INT16
    producer = {o: n for n in q.graph.node for o in n.output}
    dw = next(n for n in q.graph.node if n.name == "dw")
    dq = producer[dw.input[0]]
    assert dq.op_type == "DequantizeLinear" and _inits(q)[dq.input[2]].dtype == np.int16
    inits = _inits(q)
    s_x = inits[dq.input[1]]
    s_b = inits[producer[dw.input[2]].input[1]]
    s_w = inits[producer[dw.input[1]].input[1]]
    np.testing.assert_allclose(s_b, (s_x * s_w).astype(np.float32), rtol=0)
    ref = session(model).run(None, {"x": x})[0]
    got = session(q).run(None, {"x": x})[0]
    assert _sqnr(ref, got) > 20


def test_cli_scheme_and_override(tmp_path):
    from qcc.cli import main

    path, calib = tmp_path / "m.onnx", tmp_path / "c.npz"
    onnx.save(_convnet(deep_k=False), path)
    np.savez(calib, x=_x(16))
    assert main(["compile", str(path), "--calib", str(calib), "--scheme", "int8", "--override", "r1=w8a16",
                 "-o", str(tmp_path / "a")]) == 0
    q = onnx.load(str(tmp_path / "a" / "model.qdq.onnx"))
    assert _act_types(q)["r1"] == TP.INT16 and _act_types(q)["d6"] == TP.UINT8


# ---------------------------------------------------------------------------------------------
# TVM: int16 x int8 kernels
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def target():
    pytest.importorskip("tvm")
    import qcc.backends.tvm as tvm_backend

    return tvm_backend.detect_target()


def _build_and_check(model, calib, feeds, tmp_path, target, **cfg):
    import qcc.backends.tvm as tvm_backend
    from qcc.backends.tvm import verify

    q = compile_quiet(model, calib, config=config(**cfg)).qdq_model
    info = tvm_backend.build(q, target, tmp_path / "e2e")
    got = tvm_backend.Runner(tmp_path / "e2e").run(feeds)
    e2e = verify.end_to_end(q, got, feeds)
    lw = verify.layerwise(q, feeds, tmp_path / "lw", target)
    return q, info, e2e, lw


def _assert_layerwise(lw, min_exact=0.995):
    """Teacher-forced: every quantized tensor from identical integer inputs, within one step of
    onnxruntime everywhere; bit-exact but at rounding ties (onnxruntime sums float products)."""
    assert lw["within_1_step"] == 1.0, lw["worst_tensor"]
    for name, r in lw["per_tensor"].items():
        assert r["max_steps"] <= 1 and r["exact"] >= min_exact, (name, r)


def test_llvm_convnet_w8a16_is_integer_and_exact(tmp_path, target):
    """Whole-model w8a16: conv / depthwise / conv (int64 accumulator: 576 * 127 * 32768 > 2^31) /
    mean / Gemm as int16 x int8 integer kernels, no float fallback; on AVX2 / VNNI the split convs
    run on the packed uint8 kernels."""
    model, calib, feeds = _convnet(), {"x": _x(32)}, {"x": _x(6)}
    q, info, e2e, lw = _build_and_check(model, calib, feeds, tmp_path, target, scheme="w8a16")
    ops = info["integer_ops"]
    assert info["float_fallback"] == [], info["float_fallback"]
    # dense convs: the high / low byte split (two uint8 x int8 convs), combined in int32 / int64
    assert ops.get("conv2d_w8a16_split") == 1 and ops.get("conv2d_w8a16_acc64_split") == 1, ops
    assert ops.get("depthwise_conv2d_w8a16") == 1 and ops.get("matmul_w8a16") == 1, ops
    _assert_layerwise(lw)
    assert e2e["y"]["within_step"] >= 0.95, e2e
    sched = info.get("cpu_schedule", {})
    if sched.get("scheduled") and (sched.get("vnni") or "conv2d_avx2" in sched.get("kernels", {})):
        assert sum(sched["kernels"].values()) >= 4, sched     # 2 split convs x 2 halves


def test_llvm_mixed_int8_int16_neighbours(tmp_path, target):
    """int8 graph with r1 and f int16: int8 -> int16 (conv1 requantizes into int16), int16 -> int8
    (the depthwise reads int16, writes uint8), and an int16 Gemm input after an int8 mean."""
    model, calib, feeds = _convnet(), {"x": _x(32)}, {"x": _x(6)}
    q, info, e2e, lw = _build_and_check(model, calib, feeds, tmp_path, target, scheme="int8",
                                        overrides={"r1": "w8a16", "f": "w8a16"})
    ops = info["integer_ops"]
    assert info["float_fallback"] == [], info["float_fallback"]
    assert ops.get("conv2d") == 2 and ops.get("depthwise_conv2d_w8a16") == 1 and ops.get("matmul_w8a16") == 1, ops
    _assert_layerwise(lw)
    assert e2e["y"]["within_step"] >= 0.99, e2e


def _matmul_net():
    """MatMul + bias, Relu, MatMul + bias, then attention-style hr @ g^T (two int16 activations: an
    int64 accumulator) and a Softmax over it (the int8 kernel does not take int16: float, with the
    reason), then a MatMul of the softmax."""
    d = 24
    nodes = [oh.make_node("MatMul", ["x", "W1"], ["h0"]), oh.make_node("Add", ["h0", "b1"], ["h"]),
             oh.make_node("Relu", ["h"], ["hr"]),
             oh.make_node("MatMul", ["hr", "W2"], ["g0"]), oh.make_node("Add", ["g0", "b2"], ["g"]),
             oh.make_node("Transpose", ["g"], ["gt"], perm=[0, 2, 1]),
             oh.make_node("MatMul", ["hr", "gt"], ["s"]),
             oh.make_node("Softmax", ["s"], ["p"], axis=-1),
             oh.make_node("MatMul", ["p", "W3"], ["y"])]
    inits = {"W1": _w(d, 32), "b1": _w(32, scale=0.1), "W2": _w(32, 32), "b2": _w(32, scale=0.1),
             "W3": _w(8, 16)}
    return make_model(nodes, [("x", ["N", 8, d])], [("y", ["N", 8, 16])], inits)


def test_llvm_matmul_net_w8a16(tmp_path, target):
    model = _matmul_net()
    calib = {"x": RNG.standard_normal((32, 8, 24)).astype(np.float32)}
    feeds = {"x": RNG.standard_normal((4, 8, 24)).astype(np.float32)}
    q, info, e2e, lw = _build_and_check(model, calib, feeds, tmp_path, target, scheme="w8a16")
    ops = info["integer_ops"]
    assert ops.get("matmul_w8a16", 0) >= 2, ops
    assert ops.get("matmul_int_x_int_w8a16_acc64") == 1, ops
    reasons = {f["reason"] for f in info["float_fallback"]}
    assert any("softmax of int16 codes" in r for r in reasons), info["float_fallback"]
    _assert_layerwise(lw)


def test_int32_bound_and_fixed_point_overflow_checks():
    from qcc.backends.tvm.lowering import NoMatch, Term
    from qcc.backends.tvm.lowering.ir import accumulator, max_code
    from qcc.backends.tvm.lowering.requantize import _check_fixed_point, int32_sum

    assert max_code("int16") == 32768 and max_code("uint8") == 255
    assert accumulator(2**31 - 1) == "int32" and accumulator(2**31) == "int64"
    t = Term(None, np.array(1.0), np.array(0, np.int64), [], "conv2d_w8a16", "int32", 2**31 - 10)
    assert int32_sum(t, np.array([5])) and not int32_sum(t, np.array([20]))
    wide = Term(None, np.array(1.0), np.array(0, np.int64), [], "conv2d_w8a16_acc64", "int64", 2**36)
    with pytest.raises(NoMatch, match="fixed-point requantization could overflow"):
        _check_fixed_point([wide], [np.array(0.5)])
