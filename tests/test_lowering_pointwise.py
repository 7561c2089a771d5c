"""Pointwise functions and products on the integers: the 256-entry tables (PointwiseTable), Mul of two
quantized tensors and Mul / Div by a constant (Multiply, Divide), and the plan that quantizes a
pointwise chain only at its input and output. References: onnxruntime on the same QDQ graph with its
graph optimizations off (the QDQ semantics: onnxruntime's fused QLinear kernels round differently)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from conftest import compile_quiet, make_model, run

tvm_backend = pytest.importorskip("qcc.backends.tvm")
from qcc.backends.tvm.lowering import registry  # noqa: E402
from qcc.plan import build_plan  # noqa: E402

SHAPE = [2, 8, 4, 4]     # 256 elements: every int8 / uint8 value once


def _qdq_chain(chain, dtype, consts=None, s_out=0.05):
    """Q -> DQ -> chain (reading 'xf', writing 'y') -> Q -> DQ, input and output int8 or uint8."""
    np_dt = np.int8 if dtype == TP.INT8 else np.uint8
    z_in, z_out = (np_dt(3), np_dt(-5 if dtype == TP.INT8 else 120))
    nodes = [oh.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["xq"]),
             oh.make_node("DequantizeLinear", ["xq", "s_in", "z_in"], ["xf"]), *chain,
             oh.make_node("QuantizeLinear", ["y", "s_out", "z_out"], ["yq"]),
             oh.make_node("DequantizeLinear", ["yq", "s_out", "z_out"], ["out"])]
    inits = {"s_in": np.float32(0.045), "z_in": z_in, "s_out": np.float32(s_out), "z_out": z_out,
             **{k: np.float32(v) for k, v in (consts or {}).items()}}
    return make_model(nodes, [("x", SHAPE)], [("out", SHAPE)], inits, opset=20)


def _every_value(dtype) -> np.ndarray:
    """A float input whose quantization hits every integer of the type (s_in = 0.045, z_in = 3)."""
    q = np.arange(-128, 128) if dtype == TP.INT8 else np.arange(0, 256)
    return ((q - 3) * np.float32(0.045)).astype(np.float32).reshape(SHAPE)


N = oh.make_node
CHAINS = {
    "sigmoid": [N("Sigmoid", ["xf"], ["y"])],
    "tanh": [N("Tanh", ["xf"], ["y"])],
    "silu": [N("Sigmoid", ["xf"], ["s"]), N("Mul", ["xf", "s"], ["y"])],
    "hardswish": [N("HardSwish", ["xf"], ["y"])],
    "hardswish-decomposed": [N("Add", ["xf", "three"], ["a"]), N("Clip", ["a", "zero", "six"], ["c"]),
                             N("Div", ["c", "six"], ["d"]), N("Mul", ["xf", "d"], ["y"])],
    "gelu": [N("Gelu", ["xf"], ["y"])],
    "gelu-tanh": [N("Gelu", ["xf"], ["y"], approximate="tanh")],
    "gelu-erf-decomposed": [N("Div", ["xf", "sqrt2"], ["d"]), N("Erf", ["d"], ["e"]), N("Add", ["e", "one"], ["a"]),
                            N("Mul", ["xf", "a"], ["m"]), N("Mul", ["m", "half"], ["y"])],
    "leakyrelu": [N("LeakyRelu", ["xf"], ["y"], alpha=0.1)],
    "elu": [N("Elu", ["xf"], ["y"])],
    "softplus": [N("Softplus", ["xf"], ["y"])],
    "exp": [N("Exp", ["xf"], ["y"])],
    "sqrt-of-negatives": [N("Sqrt", ["xf"], ["y"])],
    "abs": [N("Abs", ["xf"], ["y"])],
}
CONSTS = {"three": 3.0, "zero": 0.0, "six": 6.0, "sqrt2": 1.4142135, "one": 1.0, "half": 0.5}


@pytest.mark.parametrize("dtype", [TP.INT8, TP.UINT8], ids=["int8", "uint8"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_pointwise_chain_is_one_table_equal_to_onnxruntime(tmp_path, name, dtype):
    """Every input value through the chain: one lookup_table, no float op, the same integers as onnxruntime."""
    used = {i for n in CHAINS[name] for i in n.input}
    model = _qdq_chain(CHAINS[name], dtype, {k: v for k, v in CONSTS.items() if k in used},
                       s_out=0.5 if name == "exp" else 0.05)
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    assert info["float_fallback"] == [] and info["integer_ops"] == {"lookup_table": 1}, info
    x = _every_value(dtype)
    (y,) = tvm_backend.Runner(tmp_path).run({"x": x})
    (ref,) = run(model, {"x": x}, optimize=False)
    np.testing.assert_array_equal(y, ref)


def test_square_is_an_integer_product(tmp_path):
    """x * x reads one tensor twice: Multiply's product of two views (no table needed)."""
    model = _qdq_chain([N("Mul", ["xf", "xf"], ["y"])], TP.INT8)
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    assert info["float_fallback"] == [] and info["integer_ops"] == {"multiply": 1}, info
    x = _every_value(TP.INT8)
    (y,) = tvm_backend.Runner(tmp_path).run({"x": x})
    (ref,) = run(model, {"x": x}, optimize=False)
    np.testing.assert_array_equal(y, ref)


def test_hardsigmoid_is_a_requantization_not_a_table(tmp_path):
    """alpha * x + beta clipped to [0, 1] is affine: the constants fold into the multiplier and offset,
    the clip into the clamp."""
    model = _qdq_chain([N("HardSigmoid", ["xf"], ["y"], alpha=0.2, beta=0.5)], TP.INT8, s_out=1 / 255)
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    assert info["float_fallback"] == [] and "lookup_table" not in info["integer_ops"], info
    x = _every_value(TP.INT8)
    (y,) = tvm_backend.Runner(tmp_path).run({"x": x})
    (ref,) = run(model, {"x": x}, optimize=False)
    np.testing.assert_array_equal(y, ref)


def _conv(x, y, cin, cout, rng, inits, k=1, group=1):
    inits[f"{y}_w"] = (rng.normal(size=(cout, cin // group, k, k)) / np.sqrt(cin // group * k * k)).astype(np.float32)
    inits[f"{y}_b"] = (rng.normal(size=cout) * 0.1).astype(np.float32)
    return N("Conv", [x, f"{y}_w", f"{y}_b"], [y], pads=[k // 2] * 4, group=group)


def _block_model():
    """Conv -> SiLU -> depthwise -> HardSwish -> SE (pool, conv, relu, conv, sigmoid, x * gate) ->
    conv / 3 -> Gelu -> conv -> LeakyRelu * 0.5 -> conv (float output)."""
    rng = np.random.default_rng(0)
    inits = {"three": np.float32(3.0), "half": np.float32(0.5)}
    nodes = [_conv("x", "c1", 3, 16, rng, inits, k=3), N("Sigmoid", ["c1"], ["s1"]), N("Mul", ["c1", "s1"], ["a1"]),
             _conv("a1", "c2", 16, 16, rng, inits, k=5, group=16), N("HardSwish", ["c2"], ["a2"]),
             N("GlobalAveragePool", ["a2"], ["p"]), _conv("p", "c3", 16, 8, rng, inits), N("Relu", ["c3"], ["r3"]),
             _conv("r3", "c4", 8, 16, rng, inits), N("Sigmoid", ["c4"], ["g4"]), N("Mul", ["a2", "g4"], ["se"]),
             _conv("se", "c5", 16, 24, rng, inits), N("Div", ["c5", "three"], ["d5"]), N("Gelu", ["d5"], ["g5"]),
             _conv("g5", "c6", 24, 24, rng, inits, k=3), N("LeakyRelu", ["c6"], ["l6"], alpha=0.1),
             N("Mul", ["l6", "half"], ["m6"]), _conv("m6", "y", 24, 8, rng, inits)]
    for i, n in enumerate(nodes):
        n.name = f"{n.op_type}_{i}"
    model = make_model(nodes, [("x", [1, 3, 16, 16])], [("y", [1, 8, 16, 16])], inits, opset=20)
    calib = {"x": rng.normal(size=(8, 3, 16, 16)).astype(np.float32)}
    return model, calib


def test_plan_quantizes_a_pointwise_chain_at_its_ends_only():
    import onnx_ir as ir

    from conftest import config

    model, _ = _block_model()
    plan = build_plan(ir.serde.deserialize_model(model), config(pointwise_tables=True))
    q = set(plan.activations)
    assert {"c1", "a1", "a2", "g4", "c4", "se", "d5", "g5", "c6", "m6"} <= q
    # inside a table (s1, l6), and a Div by a constant folded into the conv before it (c5)
    assert not q & {"s1", "l6", "c5"}, q & {"s1", "l6", "c5"}
    roles = plan.roles
    assert [roles[n.name] for n in model.graph.node if n.op_type in ("Sigmoid", "Mul", "HardSwish", "Gelu")] \
        == ["pointwise"] * 7
    assert roles[next(n.name for n in model.graph.node if n.op_type == "Div")] == "scale"
    assert plan.float_nodes == {}


def test_block_runs_on_integers_equal_to_onnxruntime(tmp_path):
    """SiLU, HardSwish, the SE product, Div by a constant, Gelu, LeakyRelu * 0.5: no float fallback,
    the outputs of onnxruntime on the QDQ graph (unfused) to float32 rounding."""
    import qcc

    model, calib = _block_model()
    from conftest import config

    res = compile_quiet(model, calib, target="llvm", out_dir=tmp_path / "art", config=config(pointwise_tables=True))
    backend = res.report["backend"]
    assert backend["float_fallback"] == [], backend["float_fallback"]
    assert backend["integer_ops"]["lookup_table"] == 5 and backend["integer_ops"]["multiply"] == 1, backend
    x = np.random.default_rng(7).normal(size=(2, 3, 16, 16)).astype(np.float32)
    art = qcc.load(tmp_path / "art")
    for i in range(2):
        (y,) = art.run({"x": x[i:i + 1]})
        (ref,) = run(res.qdq_model, {"x": x[i:i + 1]}, optimize=False)
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_mul_by_a_negative_constant_is_a_table(tmp_path):
    """A negative multiplier cannot be a requantization multiplier: the table takes the Mul."""
    model = _qdq_chain([N("Mul", ["xf", "neg"], ["y"])], TP.INT8, {"neg": -0.7})
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    assert info["float_fallback"] == [] and info["integer_ops"] == {"lookup_table": 1}, info


def test_pointwise_tables_are_off_by_default():
    """By default a pointwise chain stays float between quantized layers (fidelity first)."""
    import onnx_ir as ir

    from conftest import config

    model, _ = _block_model()
    plan = build_plan(ir.serde.deserialize_model(model), config())
    assert "pointwise" not in plan.roles.values() and "c1" not in plan.activations


def test_two_tensor_chain_is_not_a_table():
    """Sub of two different quantized tensors is not a function of one: it stays float, and says why."""
    nodes = [N("QuantizeLinear", ["x", "s", "z"], ["xq"]), N("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             N("QuantizeLinear", ["x2", "s", "z"], ["x2q"]), N("DequantizeLinear", ["x2q", "s", "z"], ["x2f"]),
             N("Sub", ["xf", "x2f"], ["y"]), N("QuantizeLinear", ["y", "s", "z"], ["yq"]),
             N("DequantizeLinear", ["yq", "s", "z"], ["out"])]
    model = make_model(nodes, [("x", SHAPE), ("x2", SHAPE)], [("out", SHAPE)],
                       {"s": np.float32(0.05), "z": np.int8(0)}, opset=20)
    _, _, ops, fallback = tvm_backend.lower(model)
    assert fallback == [{"op": "subtract", "reason": "a pointwise chain of two quantized tensors", "count": 1}]


def test_the_table_is_the_site_fallback_of_mul_and_add():
    table = registry.rule_for("relax.sigmoid")
    assert table.name == "PointwiseTable"
    for op in ("relax.multiply", "relax.add", "relax.divide"):
        assert registry.rule_for(op).role == registry.AFFINE and table in registry.fallbacks(op)
