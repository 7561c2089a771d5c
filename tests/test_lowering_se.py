"""The squeeze-excitation block on integers (issue 15): ReduceMean is a pool role (an int32 sum,
rules/pooling.py Mean) and Mul of two independent activations an elementwise role (an int32 product,
rules/elementwise.py Multiply), with broadcasting; x * sigmoid(x) stays float (an activation of one
tensor: quantizing its input is quantizing a pre-activation). Codes against onnxruntime on the same
QDQ graph (its graph optimizations off: the QDQ float semantics)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from conftest import compile_quiet, make_model, run

tvm_backend = pytest.importorskip("qcc.backends.tvm")

N = oh.make_node
NP = {TP.INT8: np.int8, TP.UINT8: np.uint8}


def _q(name, dt, s, z):
    return ([N("QuantizeLinear", [name, f"s_{name}", f"z_{name}"], [f"{name}_q"]),
             N("DequantizeLinear", [f"{name}_q", f"s_{name}", f"z_{name}"], [f"{name}_f"])],
            {f"s_{name}": np.float32(s), f"z_{name}": NP[dt](z)})


def _steps(model, got, ref, name="y") -> np.ndarray:
    s = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == f"s_{name}"))
    return np.abs(got.astype(np.float64) - ref.astype(np.float64)) / float(s)


def _check(tmp_path, model, feeds):
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    (got,) = tvm_backend.Runner(tmp_path).run(feeds)
    (ref,) = run(model, feeds, optimize=False)
    d = _steps(model, got, ref)
    return info, float(np.mean(d < 1e-3)), float(d.max())


def _mul_model(a_shape, b_shape, dt):
    za, zb, zy = (3, 0, -5) if dt == TP.INT8 else (121, 0, 128)
    qa, ia = _q("a", dt, 0.043, za)
    qb, ib = _q("b", dt, 1 / 255 if dt == TP.UINT8 else 1 / 127, zb if dt == TP.INT8 else 0)
    y_shape = list(np.broadcast_shapes(tuple(a_shape), tuple(b_shape)))
    qy, iy = _q("y", dt, 0.031, zy)
    nodes = qa + qb + [N("Mul", ["a_f", "b_f"], ["y"])] + qy
    return make_model(nodes, [("a", a_shape), ("b", b_shape)], [("y_f", y_shape)], {**ia, **ib, **iy}, opset=13)


@pytest.mark.parametrize("dt", [TP.UINT8, TP.INT8], ids=["uint8", "int8"])
@pytest.mark.parametrize("a_shape,b_shape", [([1, 24, 7, 9], [1, 24, 1, 1]),     # SE gate
                                             ([1, 5, 3, 11], [5, 1, 1]),          # rank-3 gate
                                             ([2, 3, 13], [2, 3, 13]),            # same shape, odd
                                             ([1, 1, 6, 10], [1, 7, 1, 10])])     # both broadcast
def test_product_of_two_activations_is_integer_and_onnxruntime_exact(tmp_path, a_shape, b_shape, dt):
    model = _mul_model(a_shape, b_shape, dt)
    rng = np.random.default_rng(0)
    feeds = {"a": (rng.standard_normal(a_shape) * 2.5).astype(np.float32),
             "b": rng.uniform(0, 1, b_shape).astype(np.float32)}
    info, exact, worst = _check(tmp_path, model, feeds)
    print(f"mul {a_shape} x {b_shape}: exact {exact:.5f}, worst {worst:.3f} steps")
    assert info["float_fallback"] == [] and info["integer_ops"].get("multiply") == 1, info
    # integer product times one float32 multiplier vs onnxruntime's float product: at most one
    # step apart, where the two float32 roundings straddle a half-integer
    assert worst <= 1.0 + 1e-6 and exact >= 0.999, (exact, worst)


def _mean_model(shape, axes, keepdims, dt, opset):
    zx, zy = (-4, 2) if dt == TP.INT8 else (117, 120)
    qx, ix = _q("x", dt, 0.05, zx)
    qy, iy = _q("y", dt, 0.011, zy)
    if opset >= 18:
        node = N("ReduceMean", ["x_f", "axes"], ["y"], keepdims=keepdims)
        ix["axes"] = np.array(axes, np.int64)
    else:
        node = N("ReduceMean", ["x_f"], ["y"], axes=axes, keepdims=keepdims)
    out = [d for i, d in enumerate(shape) if i not in [a % len(shape) for a in axes]] if not keepdims else \
        [1 if i in [a % len(shape) for a in axes] else d for i, d in enumerate(shape)]
    return make_model(qx + [node] + qy, [("x", shape)], [("y_f", out)], {**ix, **iy}, opset=opset)


@pytest.mark.parametrize("dt", [TP.UINT8, TP.INT8], ids=["uint8", "int8"])
@pytest.mark.parametrize("shape,axes,keepdims,opset", [([1, 24, 7, 9], [2, 3], 1, 18),
                                                       ([1, 5, 13, 3], [-1], 0, 13),
                                                       ([2, 7, 5], [1], 1, 18),
                                                       ([1, 96, 14, 14], [2, 3], 1, 13)])
def test_reduce_mean_is_an_int32_sum_and_onnxruntime_exact(tmp_path, shape, axes, keepdims, opset, dt):
    model = _mean_model(shape, axes, keepdims, dt, opset)
    feeds = {"x": (np.random.default_rng(1).standard_normal(shape) * 2).astype(np.float32)}
    info, exact, worst = _check(tmp_path, model, feeds)
    print(f"mean {shape} axes {axes}: exact {exact:.5f}, worst {worst:.3f} steps")
    assert info["float_fallback"] == [] and info["integer_ops"].get("mean") == 1, info
    assert worst <= 1.0 + 1e-6 and exact >= 0.99, (exact, worst)


def _se_net(c=16, h=9, w=7, seed=0):
    """Conv -> SiLU -> SE (ReduceMean, 1x1 conv, Relu, 1x1 conv, Sigmoid, Mul) -> 1x1 conv."""
    rng = np.random.default_rng(seed)
    r = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = {"W1": r(c, 3, 3, 3), "B1": r(c), "Wr": r(4, c, 1, 1), "Br": r(4), "We": r(c, 4, 1, 1), "Be": r(c),
             "Wp": r(8, c, 1, 1), "Bp": r(8), "axes": np.array([2, 3], np.int64)}
    nodes = [N("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]), N("Sigmoid", ["c1"], ["g1"]),
             N("Mul", ["c1", "g1"], ["a1"], name="silu_mul"),
             N("ReduceMean", ["a1", "axes"], ["m"], keepdims=1, name="se_mean"),
             N("Conv", ["m", "Wr", "Br"], ["r1"]), N("Relu", ["r1"], ["r2"]), N("Conv", ["r2", "We", "Be"], ["e1"]),
             N("Sigmoid", ["e1"], ["gate"]), N("Mul", ["a1", "gate"], ["se"], name="se_mul"),
             N("Conv", ["se", "Wp", "Bp"], ["y"])]
    return make_model(nodes, [("x", [1, 3, h, w])], [("y", [1, 8, h, w])], inits, opset=18)


def test_se_block_plan_and_lowering(tmp_path):
    model = _se_net()
    calib = {"x": np.random.default_rng(2).standard_normal((8, 3, 9, 7)).astype(np.float32)}
    res = compile_quiet(model, calib)
    roles, floats = res.plan.roles, res.plan.float_nodes
    assert roles.get("se_mean") == "pool" and roles.get("se_mul") == "elementwise", roles
    # SiLU's x * sigmoid(x) is one activation of c1: not a product of two tensors
    assert "silu_mul" in floats and "silu_mul" not in roles, floats
    info = tvm_backend.build(res.qdq_model, tvm_backend.detect_target(), tmp_path)
    assert info["integer_ops"].get("mean") == 1 and info["integer_ops"].get("multiply") == 1, info
    assert not [f for f in info["float_fallback"] if f["op"] == "mean"], info["float_fallback"]
    x = np.random.default_rng(3).standard_normal((1, 3, 9, 7)).astype(np.float32)
    (got,) = tvm_backend.Runner(tmp_path).run({"x": x})
    (ref,) = run(res.qdq_model, {"x": x}, optimize=False)
    (fp,) = run(model, {"x": x})
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max(), np.abs(got - ref).max()
    cos = float(np.dot(got.ravel(), fp.ravel()) / np.linalg.norm(got) / np.linalg.norm(fp))
    assert cos > 0.98, cos
