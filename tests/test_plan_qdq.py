"""Quantization planning and QDQ emission on small graphs, checked structurally and numerically
(onnxruntime on the QDQ graph vs the float graph, against analytic quantization-error bounds)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from conftest import compile_quiet, config, initializers, make_model, max_rel_err, producers, run
from qcc import QccError

EPS32 = float(np.finfo(np.float32).eps)


# ---------------------------------------------------------------------------------------------
# graphs
# ---------------------------------------------------------------------------------------------

def cnn_model(seed=0):
    """x -> conv1 -> relu1 -> pool1 (MaxPool) -> conv2 -> relu2 -> flatten -> fc (Gemm) -> y"""
    rng = np.random.default_rng(seed)
    inits = {"W1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
             "B1": rng.standard_normal(8).astype(np.float32) * 0.1,
             "W2": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.15,
             "B2": rng.standard_normal(8).astype(np.float32) * 0.1,
             "Wf": rng.standard_normal((10, 8 * 4 * 4)).astype(np.float32) * 0.1,
             "Bf": rng.standard_normal(10).astype(np.float32) * 0.1}
    nodes = [oh.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             oh.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
             oh.make_node("Conv", ["p1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             oh.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             oh.make_node("Flatten", ["r2"], ["f"], name="flatten"),
             oh.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1, name="fc")]
    return make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 10])], inits)


def cnn_data(n=48, seed=1):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)}


def linear_model(kind="MatMul", k=16, n=8, seed=0, trans_b=1, rank=2):
    """x -> MatMul(W) -> Add(b) -> y   or   x -> Gemm(W, b) -> y"""
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(n).astype(np.float32) * 0.5
    x_shape = ["N", k] if rank == 2 else ["N", 5, k]
    y_shape = ["N", n] if rank == 2 else ["N", 5, n]
    if kind == "MatMul":
        w = rng.standard_normal((k, n)).astype(np.float32) * rng.uniform(0.05, 1.0, n).astype(np.float32)
        nodes = [oh.make_node("MatMul", ["x", "W"], ["h"], name="mm"), oh.make_node("Add", ["h", "b"], ["y"], name="bias")]
    else:
        w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32) * 0.3
        nodes = [oh.make_node("Gemm", ["x", "W", "b"], ["y"], transB=trans_b, name="gemm")]
    return make_model(nodes, [("x", x_shape)], [("y", y_shape)], {"W": w, "b": b})


def _quant_nodes(model, op, tensor):
    return [n for n in model.graph.node if n.op_type == op and n.input and n.input[0] == tensor]


def _qdq_params(model, tensor):
    """(scale, zero point) of the QuantizeLinear that reads `tensor`."""
    (q,) = _quant_nodes(model, "QuantizeLinear", tensor)
    inits = initializers(model)
    return inits[q.input[1]], inits[q.input[2]]


def _dq_feeding(model, node_name, index):
    node = next(n for n in model.graph.node if n.name == node_name)
    prod = producers(model).get(node.input[index])
    return prod if prod is not None and prod.op_type == "DequantizeLinear" else None


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return oh.get_attribute_value(a)
    return default


def _dequantized_weight(model, dq):
    inits = initializers(model)
    q = inits[dq.input[0]].astype(np.float32)
    s = inits[dq.input[1]]
    z = inits[dq.input[2]].astype(np.float32)
    axis = _attr(dq, "axis", 1)
    if s.ndim:
        shape = [1] * q.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return (q - z) * s


def _assert_outputs_float(float_model, qdq_model):
    assert [(o.name, o.type.tensor_type.elem_type) for o in qdq_model.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in float_model.graph.output]
    prods = producers(qdq_model)
    for o in qdq_model.graph.output:
        assert o.type.tensor_type.elem_type == TP.FLOAT
        assert prods[o.name].op_type not in ("DequantizeLinear", "QuantizeLinear")


# ---------------------------------------------------------------------------------------------
# roles and placement
# ---------------------------------------------------------------------------------------------

def test_conv_relu_fused_and_shared_scales():
    model = cnn_model()
    res = compile_quiet(model, cnn_data())
    q = res.qdq_model
    onnx.checker.check_model(q)
    # nothing quantized between a Conv and the ReLU it feeds; the ReLU reads the Conv output directly
    for conv_out, relu in (("c1", "relu1"), ("c2", "relu2")):
        assert not _quant_nodes(q, "QuantizeLinear", conv_out)
        assert next(n for n in q.graph.node if n.name == relu).input[0] == conv_out
        assert res.plan.roles[relu] == "fused-activation"
    # MaxPool and Flatten outputs reuse their input's scale and zero point
    s_r1, z_r1 = _qdq_params(q, "r1")
    s_p1, z_p1 = _qdq_params(q, "p1")
    assert s_p1 == s_r1 and z_p1 == z_r1
    s_r2, z_r2 = _qdq_params(q, "r2")
    s_f, z_f = _qdq_params(q, "f")
    assert s_f == s_r2 and z_f == z_r2
    assert res.plan.activations["p1"].root == "r1" and res.plan.activations["f"].root == "r2"
    assert res.plan.roles["pool1"] == res.plan.roles["flatten"] == "shared"
    # ReLU outputs are non-negative: asymmetric uint8 puts zero at code 0
    assert z_r1.dtype == np.uint8 and z_r1 == 0
    # compute ops read dequantized activations and weights
    for name, idx in (("conv1", 0), ("conv1", 1), ("conv2", 0), ("conv2", 1), ("fc", 0), ("fc", 1)):
        assert _dq_feeding(q, name, idx) is not None, (name, idx)
    _assert_outputs_float(model, q)
    assert not _quant_nodes(q, "QuantizeLinear", "y")
    assert res.report["float_nodes"] == []


def test_bias_is_int32_with_product_scale():
    model = linear_model("MatMul")
    x = np.random.default_rng(2).standard_normal((40, 16)).astype(np.float32) * 2
    res = compile_quiet(model, {"x": x})
    q = res.qdq_model
    assert res.plan.roles == {"mm": "compute", "bias": "bias-add"}
    s_x, z_x = _qdq_params(q, "x")
    w_dq = _dq_feeding(q, "mm", 1)
    s_w = initializers(q)[w_dq.input[1]]
    add = next(n for n in q.graph.node if n.name == "bias")
    b_dq = next(producers(q)[i] for i in add.input if producers(q).get(i) is not None
                and producers(q)[i].op_type == "DequantizeLinear")
    inits = initializers(q)
    b_q, s_b = inits[b_dq.input[0]], inits[b_dq.input[1]]
    assert b_q.dtype == np.int32 and inits[b_dq.input[2]].dtype == np.int32
    assert np.array_equal(s_b, np.float32(s_x) * s_w)  # s_b = s_x * s_w, per output channel
    assert _attr(b_dq, "axis", 0) == 0 and s_b.shape == (8,)
    b = nh.to_array(next(t for t in model.graph.initializer if t.name == "b"))
    assert np.array_equal(b_q, np.rint(b / s_b).astype(np.int32))
    # no leftover float copy of the bias or of the weight in the file
    assert "b" not in inits and "W" not in inits


@pytest.mark.parametrize("kind,trans_b,rank", [("MatMul", 1, 2), ("MatMul", 1, 3), ("Gemm", 1, 2), ("Gemm", 0, 2)])
@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
def test_linear_qdq_within_quantization_error_bound(kind, trans_b, rank, granularity):
    """|y_qdq - y| <= (s_x/2) sum|W| + (s_w/2) sum|x| + K s_x s_w / 4 + s_b/2, elementwise; with minmax
    calibration on the evaluated data nothing is clipped, so this bound is exact, not statistical."""
    model = linear_model(kind, trans_b=trans_b, rank=rank)
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((32, 16) if rank == 2 else (32, 5, 16)) * 1.5 + 0.3).astype(np.float32)
    res = compile_quiet(model, {"x": x}, config=config(granularity=granularity))
    q = res.qdq_model
    node = "mm" if kind == "MatMul" else "gemm"
    w_dq = _dq_feeding(q, node, 1)
    s_w = initializers(q)[w_dq.input[1]]
    w = nh.to_array(next(t for t in model.graph.initializer if t.name == "W"))
    if kind == "Gemm" and trans_b:
        w = w.T  # [K, N]
    if granularity == "per-channel":
        assert s_w.shape == (8,)
        assert _attr(w_dq, "axis") == (0 if (kind == "Gemm" and trans_b) else 1)
    else:
        assert s_w.shape == () and _attr(w_dq, "axis") is None
    s_x, z_x = _qdq_params(q, "x")
    (y_ref,) = run(model, {"x": x})
    # the QDQ graph's semantics: onnxruntime's fused u8s8 kernels saturate int16 pairs on AVX2-only CPUs
    (y_q,) = run(q, {"x": x}, optimize=False)
    s_w_n = np.broadcast_to(s_w, (8,)).astype(np.float64)
    s_x = float(s_x)
    xa = np.abs(x.astype(np.float64))
    bound = (s_x / 2 * np.abs(w).sum(axis=0) + (xa.sum(axis=-1, keepdims=True) * s_w_n / 2)
             + 16 * s_x * s_w_n / 4 + s_x * s_w_n / 2)
    slack = 64 * EPS32 * (xa @ np.abs(w) + 1)
    err = np.abs(y_q.astype(np.float64) - y_ref)
    assert np.all(err <= bound + slack), float((err / (bound + slack)).max())
    assert err.max() > 0  # it is actually quantized


def test_softmax_after_additive_mask_stays_float():
    rng = np.random.default_rng(4)
    t, d = 8, 16
    inits = {k: (rng.standard_normal((d, d)) * 0.3).astype(np.float32) for k in ("Wq", "Wk", "Wv", "Wo")}
    inits["Wm"] = (rng.standard_normal((t, d)) * 0.3).astype(np.float32)
    nodes = [oh.make_node("MatMul", ["x", "Wq"], ["q"], name="q_proj"),
             oh.make_node("MatMul", ["x", "Wk"], ["k"], name="k_proj"),
             oh.make_node("MatMul", ["x", "Wv"], ["v"], name="v_proj"),
             oh.make_node("Transpose", ["k"], ["kT"], perm=[0, 2, 1], name="k_t"),
             oh.make_node("MatMul", ["q", "kT"], ["scores"], name="scores"),
             oh.make_node("Add", ["scores", "mask"], ["masked"], name="mask_add"),
             oh.make_node("Softmax", ["masked"], ["probs"], axis=-1, name="softmax"),
             oh.make_node("MatMul", ["probs", "v"], ["ctx"], name="ctx"),
             oh.make_node("MatMul", ["ctx", "Wo"], ["o"], name="o_proj"),
             # the masked scores are also read by a linear layer: only the sentinel check keeps them float
             oh.make_node("MatMul", ["masked", "Wm"], ["side"], name="side_proj")]
    model = make_model(nodes, [("x", ["N", t, d]), ("mask", ["N", 1, t])], [("o", ["N", t, d]), ("side", ["N", t, d])], inits)
    x = rng.standard_normal((24, t, d)).astype(np.float32)
    mask = np.zeros((24, 1, t), np.float32)
    mask[:, :, 5:] = -1e9
    res = compile_quiet(model, {"x": x, "mask": mask})
    q = res.qdq_model
    for tensor in ("mask", "masked", "scores"):
        assert not _quant_nodes(q, "QuantizeLinear", tensor), tensor
    softmax = next(n for n in q.graph.node if n.op_type == "Softmax")
    assert producers(q)[softmax.input[0]].op_type == "Add"
    floats = {f["node"]: f for f in res.report["float_nodes"]}
    assert {"mask_add", "softmax", "side_proj"} <= set(floats)
    assert "mask" in floats["mask_add"]["reason"] and "sentinel" in floats["mask_add"]["reason"]
    assert "sentinel" in floats["side_proj"]["reason"]
    assert floats["softmax"]["reason"]
    # the quantized parts are still quantized
    assert res.plan.roles.get("q_proj") == "compute" and _quant_nodes(q, "QuantizeLinear", "probs")
    _assert_outputs_float(model, q)
    ref = run(model, {"x": x, "mask": mask})
    got = run(q, {"x": x, "mask": mask}, optimize=False)   # QDQ semantics (see the linear bound test)
    assert all(np.isfinite(g).all() for g in got)
    assert max_rel_err(ref[0], got[0]) < 0.2
    # side_proj runs on the exact float scores (its MatMul is float, weights too)
    assert max_rel_err(ref[1], got[1]) < 1e-5


def test_graph_output_that_is_also_an_activation_stays_float():
    rng = np.random.default_rng(5)
    inits = {"W1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32)}
    nodes = [oh.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             oh.make_node("Relu", ["c1"], ["feat"], name="relu"),
             oh.make_node("Conv", ["feat", "W2"], ["y"], name="conv2")]
    model = make_model(nodes, [("x", ["N", 3, 6, 6])], [("feat", ["N", 4, 6, 6]), ("y", ["N", 4, 6, 6])], inits)
    x = rng.standard_normal((16, 3, 6, 6)).astype(np.float32)
    res = compile_quiet(model, {"x": x})
    q = res.qdq_model
    _assert_outputs_float(model, q)
    assert _quant_nodes(q, "QuantizeLinear", "feat")  # conv2 still reads it quantized
    ref, got = run(model, {"x": x}), run(q, {"x": x})
    for r, g in zip(ref, got):
        assert max_rel_err(r, g) < 0.05


# ---------------------------------------------------------------------------------------------
# exclusions and overrides
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patterns,expect_float", [
    (["conv2"], {"conv2"}),
    (["Gemm"], {"fc"}),
    (["/^conv/"], {"conv1", "conv2"}),
    (["/relu|pool/", "fc"], {"relu1", "relu2", "pool1", "fc"}),
])
def test_exclude_keeps_nodes_float(patterns, expect_float):
    model = cnn_model()
    data = cnn_data()
    res = compile_quiet(model, data, config=config(exclude=patterns))
    q = res.qdq_model
    floats = {f["node"]: f["reason"] for f in res.report["float_nodes"]}
    for name in expect_float:
        assert floats.get(name) == "excluded by user", (name, floats)
        assert name not in res.plan.roles
        node = next(n for n in q.graph.node if n.name == name)
        prods = producers(q)
        for i in node.input:  # an excluded node reads no quantized input and keeps float weights
            assert i not in prods or prods[i].op_type != "DequantizeLinear", (name, i)
    for name in {"conv1", "conv2", "fc"} - expect_float:
        assert res.plan.roles.get(name) == "compute", name
        assert _dq_feeding(q, name, 1) is not None
    if "conv2" in expect_float:
        assert initializers(q)["W2"].dtype == np.float32
    _assert_outputs_float(model, q)
    assert max_rel_err(run(model, data)[0], run(q, data)[0]) < 0.1


def test_override_float_activation():
    model = cnn_model()
    data = cnn_data()
    res = compile_quiet(model, data, config=config(overrides={"r1": "float"}))
    q = res.qdq_model
    assert not _quant_nodes(q, "QuantizeLinear", "r1")
    # the MaxPool output is still needed by conv2, so it is quantized on its own statistics
    assert res.plan.activations["p1"].root == "p1"
    assert _quant_nodes(q, "QuantizeLinear", "p1")
    assert _dq_feeding(q, "conv1", 1) is not None  # weights unaffected
    assert max_rel_err(run(model, data)[0], run(q, data)[0]) < 0.1


def test_override_other_scheme_for_one_tensor():
    model = cnn_model()
    data = cnn_data()
    res = compile_quiet(model, data, config=config(overrides={"x": "int8-sym", "W2": "fp8-e4m3"}))
    q = res.qdq_model
    s_x, z_x = _qdq_params(q, "x")
    assert z_x.dtype == np.int8 and z_x == 0
    s_p1, z_p1 = _qdq_params(q, "p1")
    assert z_p1.dtype == np.uint8  # the rest keeps the default scheme
    w2_dq = _dq_feeding(q, "conv2", 1)
    w2_init = next(t for t in q.graph.initializer if t.name == w2_dq.input[0])
    assert w2_init.data_type == TP.FLOAT8E4M3FN
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 19
    # an FP8 weight has no integer accumulator: conv2's bias stays float
    conv2 = next(n for n in q.graph.node if n.name == "conv2")
    assert conv2.input[2] in initializers(q) and initializers(q)[conv2.input[2]].dtype == np.float32
    # conv1's bias is still int32
    b1 = _dq_feeding(q, "conv1", 2)
    assert b1 is not None and initializers(q)[b1.input[0]].dtype == np.int32
    assert max_rel_err(run(model, data)[0], run(q, data)[0]) < 0.1


def test_bad_override_and_exclude_are_user_errors():
    with pytest.raises(QccError, match="unknown scheme"):
        config(overrides={"x": "int3"})
    with pytest.raises(QccError, match="regex"):
        config(exclude=["/[unclosed/"])
    with pytest.raises(QccError, match="unknown scheme"):
        config(scheme="int7")


# ---------------------------------------------------------------------------------------------
# weight layouts
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("granularity", ["per-channel", "per-tensor"])
@pytest.mark.parametrize("kind", ["Conv", "ConvTranspose", "DepthwiseConv"])
def test_conv_weight_axis_and_codes(kind, granularity):
    rng = np.random.default_rng(6)
    if kind == "Conv":
        w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * rng.uniform(0.01, 1, (6, 1, 1, 1)).astype(np.float32)
        node = oh.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1], name="conv")
        axis, cout = 0, 6
    elif kind == "DepthwiseConv":
        w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * rng.uniform(0.01, 1, (4, 1, 1, 1)).astype(np.float32)
        node = oh.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1], group=4, name="conv")
        axis, cout = 0, 4
    else:
        w = rng.standard_normal((4, 6, 3, 3)).astype(np.float32) * rng.uniform(0.01, 1, (1, 6, 1, 1)).astype(np.float32)
        node = oh.make_node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2], name="conv")
        axis, cout = 1, 6
    b = rng.standard_normal(cout).astype(np.float32)
    y_shape = ["N", cout, 5, 5] if kind != "ConvTranspose" else ["N", cout, 11, 11]
    model = make_model([node], [("x", ["N", 4, 5, 5])], [("y", y_shape)], {"W": w, "B": b})
    x = rng.standard_normal((16, 4, 5, 5)).astype(np.float32)
    res = compile_quiet(model, {"x": x}, config=config(granularity=granularity))
    q = res.qdq_model
    w_dq = _dq_feeding(q, "conv", 1)
    s_w = initializers(q)[w_dq.input[1]]
    codes = initializers(q)[w_dq.input[0]]
    assert codes.dtype == np.int8 and codes.min() >= -127
    if granularity == "per-channel":
        assert _attr(w_dq, "axis") == axis and s_w.shape == (cout,)
        other = tuple(i for i in range(4) if i != axis)
        np.testing.assert_allclose(s_w, np.abs(w).max(axis=other) / 127, rtol=1e-6)
        assert np.all(np.abs(codes.astype(np.int32)).max(axis=other) == 127)
    else:
        assert s_w.shape == () and _attr(w_dq, "axis") is None
        assert s_w == np.float32(np.abs(w).max() / np.float32(127))
    err = np.abs(_dequantized_weight(q, w_dq) - w)
    s_b = np.broadcast_to(s_w, (cout,)).reshape([-1 if i == axis else 1 for i in range(4)])
    assert np.all(err <= s_b / 2 * (1 + 1e-5))
    b_dq = _dq_feeding(q, "conv", 2)
    assert b_dq is not None and initializers(q)[b_dq.input[0]].dtype == np.int32
    (ref,), (got,) = run(model, {"x": x}), run(q, {"x": x})
    assert max_rel_err(ref, got) < 0.03


# ---------------------------------------------------------------------------------------------
# int4 and FP8
# ---------------------------------------------------------------------------------------------

def _opset(model):
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def test_w4a8_emits_int4_weights_at_opset21():
    model = linear_model("MatMul", k=32, n=8)
    x = np.random.default_rng(7).standard_normal((40, 32)).astype(np.float32)
    res = compile_quiet(model, {"x": x}, config=config(scheme="w4a8"))
    q = res.qdq_model
    onnx.checker.check_model(q)
    assert _opset(q) >= 21
    w_dq = _dq_feeding(q, "mm", 1)
    w_t = next(t for t in q.graph.initializer if t.name == w_dq.input[0])
    assert w_t.data_type == TP.INT4
    assert next(t for t in q.graph.initializer if t.name == w_dq.input[2]).data_type == TP.INT4
    codes = nh.to_array(w_t).astype(np.int8)
    assert codes.min() >= -7 and codes.max() <= 7 and np.abs(codes).max() == 7
    s_x, z_x = _qdq_params(q, "x")
    assert z_x.dtype == np.uint8  # activations stay 8-bit
    (ref,), (got,) = run(model, {"x": x}), run(q, {"x": x})
    # analytic bound with the 4-bit weight step
    w = nh.to_array(next(t for t in model.graph.initializer if t.name == "W")).astype(np.float64)
    s_w = initializers(q)[w_dq.input[1]].astype(np.float64)
    xa = np.abs(x.astype(np.float64))
    bound = (float(s_x) / 2 * np.abs(w).sum(0) + xa.sum(1, keepdims=True) * s_w / 2
             + 32 * float(s_x) * s_w / 4 + float(s_x) * s_w / 2)
    assert np.all(np.abs(got - ref) <= bound * (1 + 1e-4) + 1e-5)


@pytest.mark.parametrize("scheme,onnx_type,mant", [("fp8-e4m3", TP.FLOAT8E4M3FN, 3), ("fp8-e5m2", TP.FLOAT8E5M2, 2)])
def test_fp8_schemes_emit_float8_types(scheme, onnx_type, mant):
    model = linear_model("MatMul", k=16, n=8)
    x = np.random.default_rng(8).standard_normal((40, 16)).astype(np.float32)
    res = compile_quiet(model, {"x": x}, config=config(scheme=scheme))
    q = res.qdq_model
    onnx.checker.check_model(q)
    assert _opset(q) >= 19
    w_dq = _dq_feeding(q, "mm", 1)
    types = {t.name: t.data_type for t in q.graph.initializer}
    assert types[w_dq.input[0]] == onnx_type and types[w_dq.input[2]] == onnx_type
    (qx,) = _quant_nodes(q, "QuantizeLinear", "x")
    assert types[qx.input[2]] == onnx_type
    (ref,), (got,) = run(model, {"x": x}), run(q, {"x": x})
    # relative rounding of FP8 is 2^-(mant+1) on each operand (no clipping: symmetric absmax ranges)
    w = nh.to_array(next(t for t in model.graph.initializer if t.name == "W")).astype(np.float64)
    u = 2.0 ** -(mant + 1)
    s_x = float(initializers(q)[qx.input[1]])
    s_w = initializers(q)[w_dq.input[1]].astype(np.float64)
    sub = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn if mant == 3 else ml_dtypes.float8_e5m2).smallest_subnormal)
    xa = np.abs(x.astype(np.float64))
    bound = (xa @ np.abs(w)) * (2 * u + u * u) + 16 * sub * (s_x * np.abs(w).max(0) + xa.max() * s_w) + 1e-5
    err = np.abs(got - ref)
    assert np.all(err <= bound), float((err / bound).max())
    assert err.max() > 0
    assert np.allclose(got.mean(0), ref.mean(0), atol=0.5)


@pytest.mark.parametrize("kind", ["Conv", "MatMul"])
def test_dead_weight_channel_keeps_its_bias(kind):
    rng = np.random.default_rng(9)
    if kind == "Conv":
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        w[2] = 0.0
        b = np.array([0.1, -0.2, 0.7, 0.3], np.float32)
        model = make_model([oh.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1], name="conv")],
                           [("x", ["N", 3, 5, 5])], [("y", ["N", 4, 5, 5])], {"W": w, "B": b})
        x = rng.standard_normal((16, 3, 5, 5)).astype(np.float32)
    else:
        w = rng.standard_normal((8, 4)).astype(np.float32)
        w[:, 2] = 0.0
        b = np.array([0.1, -0.2, 0.7, 0.3], np.float32)
        model = make_model([oh.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
                            oh.make_node("Add", ["h", "B"], ["y"], name="bias")],
                           [("x", ["N", 8])], [("y", ["N", 4])], {"W": w, "B": b})
        x = rng.standard_normal((16, 8)).astype(np.float32)
    res = compile_quiet(model, {"x": x})
    (ref,), (got,) = run(model, {"x": x}), run(res.qdq_model, {"x": x})
    np.testing.assert_allclose(ref[:, 2], 0.7, rtol=1e-6)  # the float model: bias only
    np.testing.assert_allclose(got[:, 2], ref[:, 2], atol=1e-3)


def test_power_of_two_scales_end_to_end():
    model = cnn_model()
    data = cnn_data()
    res = compile_quiet(model, data, config=config(power_of_two=True))
    q = res.qdq_model
    inits = initializers(q)
    scales = [inits[n.input[1]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(scales) > 10
    for s in scales:
        e = np.log2(s.astype(np.float64))
        assert np.all(e == np.round(e)), s
    # activations still cover their calibrated range: no output worse than a plain-scale compile by much
    plain = compile_quiet(model, data)
    err_p2 = max_rel_err(run(model, data)[0], run(q, data)[0])
    err = max_rel_err(run(model, data)[0], run(plain.qdq_model, data)[0])
    assert err_p2 < max(4 * err, 0.05)


@pytest.mark.parametrize("default_passes", [True, False])
def test_fixed_batch_one_model_compiles(default_passes, tmp_path):
    model = cnn_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # x: [1, 3, 8, 8]
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    data = cnn_data(12)
    import qcc

    cfg = qcc.QuantConfig(calibration="minmax") if default_passes else config()
    res = compile_quiet(model, data, config=cfg, out_dir=tmp_path / "art")
    assert res.report["fidelity"]["samples"] == 12
    (y,) = qcc.load(tmp_path / "art").run({"x": data["x"][:1]})
    (ref,) = run(model, {"x": data["x"][:1]})
    assert max_rel_err(ref, y) < 0.1


@pytest.mark.parametrize("scheme", ["fp8-e4m3", "fp8-e5m2"])
def test_fp8_conv_relu_runs_correctly_through_qcc(scheme, tmp_path):
    import qcc

    rng = np.random.default_rng(10)
    nodes = [oh.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             oh.make_node("Relu", ["a"], ["r"], name="relu"),
             oh.make_node("Conv", ["r", "W2"], ["y"], name="c2")]
    model = make_model(nodes, [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])],
                       {"W1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
                        "W2": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3})
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    res = compile_quiet(model, {"x": x}, config=config(scheme=scheme), out_dir=tmp_path / "art")
    (ref,) = run(model, {"x": x}, optimize=False)
    (qdq_semantics,) = run(res.qdq_model, {"x": x}, optimize=False)  # the graph itself is right
    assert max_rel_err(ref, qdq_semantics) < 0.1
    (got,) = qcc.load(tmp_path / "art").run({"x": x})
    assert max_rel_err(ref, got) < 0.1
    assert res.report["fidelity"]["outputs"]["y"]["cosine"] > 0.99
