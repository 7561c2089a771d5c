"""The TVM lowering as a package of rules: registry invariants, the generated operator table, failed
checks' reasons in the build info's float_fallback, and the use index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

from conftest import make_model

tvm_backend = pytest.importorskip("qcc.backends.tvm")
from qcc.backends.tvm import compat, coverage  # noqa: E402
from qcc.backends.tvm import lowering as L  # noqa: E402
from qcc.backends.tvm.lowering import registry  # noqa: E402

DOC = Path(__file__).resolve().parents[1] / "docs" / "operator_coverage.md"


# ------------------------------------------------------------------------------------------
# registry invariants
def test_every_rule_has_docstring_check_rewrite_and_table_entry():
    rules = L.registered_rules()
    assert len(rules) >= 20
    seen = set()
    for r in rules:
        cls = type(r)
        assert (cls.__dict__.get("__doc__") or "").strip(), f"{r.name}: no docstring of its own"
        assert cls.check is not registry.Rule.check and cls.rewrite is not registry.Rule.rewrite, r.name
        assert r.role in registry.ROLES, r.name
        assert r.pattern and r.onnx and r.lowers_to.strip() and r.conditions.strip(), r.name
        for op in r.pattern:
            assert op not in seen, f"{op} matched by two rules"
            seen.add(op)
            assert L.rule_for(op) is r and L.rule_for(op, r.role) is r
            assert L.rule_for(op, next(x for x in registry.ROLES if x != r.role)) is None
    assert L.rule_for(None) is None and L.rule_for("relax.nn.log_softmax") is None


def test_float_sinks_are_the_heavy_ops():
    assert set(L.HEAVY_OPS) == {"relax.nn.conv2d", "relax.nn.conv2d_transpose", "relax.matmul"}
    assert all(L.rule_for(op).float_sink and L.rule_for(op).role == L.AFFINE for op in L.HEAVY_OPS)


def test_the_decorator_rejects_incomplete_and_duplicate_rules():
    before = len(L.registered_rules())
    with pytest.raises(TypeError, match="docstring"):
        @L.rule
        class NoDoc(L.ViewRule):
            pattern = ("relax.test_nodoc",)
            onnx = ("X",)
            lowers_to = conditions = "x"

            def check(self, low, call, var):
                return None

            def rewrite(self, low, call, var, inner):
                return inner

    with pytest.raises(TypeError, match="check / rewrite"):
        @L.rule
        class NoCheck(L.AffineRule):
            """y = x"""
            pattern = ("relax.test_nocheck",)
            onnx = ("X",)
            lowers_to = conditions = "x"

    with pytest.raises(ValueError, match="already matched"):
        @L.rule
        class Again(L.ClampRule):
            """Q(relu(v)) once more."""
            pattern = ("relax.nn.relu",)
            onnx = ("Relu",)
            lowers_to = conditions = "x"

            def check(self, low, call, var):
                return None

            def rewrite(self, low, call, var, site):
                return call.args[0]

    assert len(L.registered_rules()) == before


# ------------------------------------------------------------------------------------------
# the operator table
def test_operator_coverage_doc_is_generated_from_the_rules():
    doc = DOC.read_text()
    assert coverage.render(doc) == doc, ("docs/operator_coverage.md is stale: run "
                                         "python -m qcc.backends.tvm.coverage --write docs/operator_coverage.md")
    assert coverage.main(["--check", str(DOC)]) == 0


def test_operator_table_lists_every_rule_once_per_onnx_op():
    table = coverage.operator_table()
    for r in L.registered_rules():
        for op in r.onnx:
            assert sum(line.startswith(f"| {op} |") and f"| {r.name} (" in line for line in table.splitlines()) == 1
    ints = {row["op"] for row in coverage.coverage_rows() if row["status"] == "integer"}
    assert ints == {op for r in L.registered_rules() for op in r.onnx} | set(coverage.BOUNDARY)


# ------------------------------------------------------------------------------------------
# failed checks -> float_fallback reasons
def _qdq(x, s, z, out, dtype=TP.UINT8):
    """Quantize-dequantize nodes and their parameters: x -> out."""
    nodes = [oh.make_node("QuantizeLinear", [x, f"{out}_s", f"{out}_z"], [f"{out}_q"]),
             oh.make_node("DequantizeLinear", [f"{out}_q", f"{out}_s", f"{out}_z"], [out])]
    zdt = np.uint8 if dtype == TP.UINT8 else np.int8
    return nodes, {f"{out}_s": np.float32(s), f"{out}_z": zdt(z)}


def _resize_linear_model():
    """Q(Resize_linear(DQ(x))): the view rule matches resize2d, its check refuses linear mode."""
    n1, i1 = _qdq("x", 0.02, 128, "xd")
    n2, i2 = _qdq("r", 0.02, 128, "y")
    resize = oh.make_node("Resize", ["xd", "", "scales"], ["r"], mode="linear")
    return make_model(n1 + [resize] + n2, [("x", [1, 2, 4, 4])], [("y", [1, 2, 8, 8])],
                      {**i1, **i2, "scales": np.array([1, 1, 2, 2], np.float32)}, opset=13)


def _conv_weight_zp_model(quantized_output: bool):
    """DQ(x) -> Conv(DQ(w, zp=3)) [-> Q -> DQ]: Conv2d's check refuses a weight zero point."""
    n1, i1 = _qdq("x", 0.02, 128, "xd")
    rng = np.random.default_rng(0)
    inits = {**i1, "wq": rng.integers(-60, 60, (4, 2, 3, 3)).astype(np.int8), "ws": np.float32(0.01),
             "wz": np.int8(3)}
    nodes = n1 + [oh.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]),
                  oh.make_node("Conv", ["xd", "w"], ["c" if quantized_output else "y"], kernel_shape=[3, 3])]
    if quantized_output:
        n2, i2 = _qdq("c", 0.05, 128, "y")
        nodes += n2
        inits.update(i2)
    return make_model(nodes, [("x", [1, 2, 6, 6])], [("y", [1, 4, 4, 4])], inits, opset=13)


@pytest.mark.parametrize("op, attrs, out_shape, relax_op", [
    ("GlobalMaxPool", {}, [2, 3, 1, 1], "max"),
    ("ReduceMax", {"axes": [1], "keepdims": 0}, [2, 5, 4], "max"),
    ("ReduceMin", {"axes": [2, 3], "keepdims": 1}, [2, 3, 1, 1], "min"),
])
def test_max_and_min_reductions_run_on_the_integers(tmp_path, op, attrs, out_shape, relax_op):
    """Q(max(DQ(x))) with the input's parameters is max(x) on uint8 (MaxMinReduce): no float fallback,
    and the same bytes as onnxruntime on the QDQ graph."""
    from qcc.backends import onnxruntime as ort_backend

    n1, i1 = _qdq("x", 0.02, 100, "xd")
    n2, i2 = _qdq("r", 0.02, 100, "y")
    model = make_model(n1 + [oh.make_node(op, ["xd"], ["r"], **attrs)] + n2, [("x", [2, 3, 5, 4])],
                       [("y", out_shape)], {**i1, **i2}, opset=13)
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    assert info["float_fallback"] == [] and info["integer_ops"].get(relax_op) == 1, info
    x = np.random.default_rng(2).uniform(-2.5, 2.5, (2, 3, 5, 4)).astype(np.float32)
    (y,) = tvm_backend.Runner(tmp_path).run({"x": x})
    (ref,) = ort_backend.make_session(model).run(None, {"x": x})
    assert y.shape == ref.shape
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("pads, value, lowered", [
    ([0, 0, 1, 2, 0, 0, 3, 1], None, True),     # zeros: the zero point
    ([0, 0, 2, 0, 0, 0, 0, 2], 0.2, True),      # 0.2 = 0.02 * (z + 10 - z): on the grid
    ([0, 0, 1, 1, 0, 0, 1, 1], 0.033, False),   # between two grid values: stays float
])
def test_constant_pad_runs_on_the_integers(tmp_path, pads, value, lowered):
    """Q(pad(DQ(x), c)) = pad(x, q_c) with c on the input's grid (Pad), byte for byte against onnxruntime."""
    n1, i1 = _qdq("x", 0.02, 100, "xd")
    n2, i2 = _qdq("r", 0.02, 100, "y")
    inputs = ["xd", "pads"] + (["value"] if value is not None else [])
    inits = {**i1, **i2, "pads": np.array(pads, np.int64)}
    if value is not None:
        inits["value"] = np.float32(value)
    out = [1, 3, 5 + pads[2] + pads[6], 4 + pads[3] + pads[7]]
    model = make_model(n1 + [oh.make_node("Pad", inputs, ["r"], mode="constant")] + n2, [("x", [1, 3, 5, 4])],
                       [("y", out)], inits, opset=13)
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    if lowered:
        assert info["float_fallback"] == [] and info["integer_ops"] == {"pad": 1}, info
    else:
        assert [f["op"] for f in info["float_fallback"]] == ["call_tir:pad"], info
        assert "quantization grid" in info["float_fallback"][0]["reason"]
    x = np.random.default_rng(3).uniform(-1.5, 1.5, (1, 3, 5, 4)).astype(np.float32)
    (y,) = tvm_backend.Runner(tmp_path).run({"x": x})
    from conftest import run
    (ref,) = run(model, {"x": x}, optimize=False)
    np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("split", [[3, 5], None], ids=["sizes", "num_outputs"])
def test_split_parts_run_on_the_integers(tmp_path, split):
    """split(DQ(x)) on the integers, emitted once (SplitItem); a part with other output parameters is
    requantized. Byte for byte against onnxruntime."""
    from conftest import run

    n1, i1 = _qdq("x", 0.02, 100, "xd")
    na, ia = _qdq("a", 0.02, 100, "ya")
    nb, ib = _qdq("b", 0.03, 90, "yb")
    inputs, attrs = (["xd", "sp"], {}) if split else (["xd"], {"num_outputs": 2})
    sizes = split or [4, 4]
    model = make_model(n1 + [oh.make_node("Split", inputs, ["a", "b"], axis=1, **attrs)] + na + nb,
                       [("x", [1, 8, 3, 3])], [("ya", [1, sizes[0], 3, 3]), ("yb", [1, sizes[1], 3, 3])],
                       {**i1, **ia, **ib, **({"sp": np.array(split, np.int64)} if split else {})}, opset=18)
    info = tvm_backend.build(model, tvm_backend.detect_target(), tmp_path)
    assert info["float_fallback"] == [] and info["integer_ops"] == {"split": 2}, info
    x = np.random.default_rng(4).uniform(-2, 2, (1, 8, 3, 3)).astype(np.float32)
    got = tvm_backend.Runner(tmp_path).run({"x": x})
    for y, ref in zip(got, run(model, {"x": x}, optimize=False)):
        np.testing.assert_array_equal(y, ref)


def test_failed_check_reason_reaches_the_build_info(tmp_path):
    info = tvm_backend.build(_resize_linear_model(), tvm_backend.detect_target(), tmp_path)
    reason = "resize2d method linear: only nearest-neighbor resizing copies integers"
    assert info["float_fallback"] == [{"op": "image.resize2d", "reason": reason, "count": 1}]
    x = np.random.default_rng(1).uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)
    (y,) = tvm_backend.Runner(tmp_path).run({"x": x})
    assert y.shape == (1, 2, 8, 8)


@pytest.mark.parametrize("quantized_output", [True, False], ids=["quantize-site", "float-sink"])
def test_conv_weight_zero_point_reason(quantized_output):
    """The same failed check at a quantize site and for a layer consumed in float (which used to say
    "operands are not quantized" whatever failed)."""
    _, _, ops, fallback = tvm_backend.lower(_conv_weight_zp_model(quantized_output))
    assert "conv2d" not in ops
    assert fallback == [{"op": "nn.conv2d", "reason": "conv2d weight with a nonzero zero point", "count": 1}]


def test_float_layer_keeps_the_operands_not_quantized_reason():
    """A float Conv consumed in float (an excluded layer): the existing wording."""
    rng = np.random.default_rng(0)
    model = make_model([oh.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])], [("x", [1, 2, 3, 3])],
                       [("y", [1, 3, 3, 3])], {"w": rng.normal(size=(3, 2, 1, 1)).astype(np.float32)}, opset=13)
    _, _, _, fallback = tvm_backend.lower(model)
    assert fallback == [{"op": "nn.conv2d", "reason": "operands are not quantized", "count": 1}]


# ------------------------------------------------------------------------------------------
# the use index
def test_use_index_counts_every_read_and_lists_consumers_once():
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.add(x, x))
            b = bb.emit(relax.op.multiply(a, x))
            t = bb.emit(relax.Tuple([a, b]))
            c = bb.emit(relax.TupleGetItem(t, 1))
            out = bb.emit_output(relax.op.subtract(c, a))
        bb.emit_func_output(relax.Tuple([out, b]))
    idx = L.UseIndex(bb.get()["main"])
    assert idx.order == [a, b, t, c, out]
    assert idx.producer[t].fields[0].same_as(a)
    assert idx.uses[x] == 3 and idx.uses[a] == 3 and idx.uses[b] == 2 and idx.uses[out] == 1
    assert idx.consumers(x) == [a, b]
    assert idx.consumers(a) == [b, t, out]
    assert idx.consumers(t) == [c] and idx.consumers(out) == []


def _reads(expr, var) -> bool:
    """Brute force: does expr read var."""
    return any(v.same_as(var) for v in L.index.read_vars(expr))


def test_use_index_matches_a_brute_force_scan_of_a_real_module():
    mod, _ = tvm_backend.import_relax(_conv_weight_zp_model(True))
    low = L.Lowering(mod)
    for var in low.order:
        brute = [u for u in low.order if _reads(low.bindings[u], var)]
        assert low.index.consumers(var) == brute
        n = sum(sum(v.same_as(var) for v in L.index.read_vars(low.bindings[u])) for u in low.order)
        n += sum(v.same_as(var) for v in L.index.read_vars(low.func.body.body))
        assert low.uses[var] == n
    assert compat.op_name(low.bindings[low.order[0]]) is not None
