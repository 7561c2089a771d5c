"""Canonicalization passes preserve the float function (onnxruntime before vs after, <= 1e-4 relative)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from conftest import make_model, max_rel_err, run
from qcc.canonicalize import canonicalize
from qcc.passes.eliminate_noops import eliminate_noops
from qcc.passes.fold_batchnorm import fold_batchnorm
from qcc.passes.fold_constants import fold_constants

TOL = 1e-4


def _to_ir(model: onnx.ModelProto) -> ir.Model:
    return ir.serde.deserialize_model(model)


def _to_proto(model: ir.Model, infer: bool = True) -> onnx.ModelProto:
    """Serialize (after shape inference, as canonicalize() runs it after every pass) and check."""
    if infer:
        from onnx_ir.passes import common as ir_passes

        ir_passes.ShapeInferencePass(strict_mode=False)(model)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto)
    return proto


def _assert_same_function(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict, tol: float = TOL):
    ref = run(before, feeds, optimize=False)
    got = run(after, feeds, optimize=False)
    assert [o.name for o in before.graph.output] == [o.name for o in after.graph.output]
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        assert max_rel_err(r, g) <= tol, max_rel_err(r, g)


def _ops(model) -> Counter:
    nodes = model.graph.node if isinstance(model, onnx.ModelProto) else model.graph
    return Counter(n.op_type for n in nodes)


def _bn_params(rng, c):
    return {"gamma": rng.uniform(-2, 2, c).astype(np.float32), "beta": rng.standard_normal(c).astype(np.float32),
            "mean": rng.standard_normal(c).astype(np.float32), "var": rng.uniform(0.05, 4, c).astype(np.float32)}


# ---------------------------------------------------------------------------------------------
# fold_batchnorm
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,bias,group", [("Conv", True, 1), ("Conv", False, 1), ("Conv", True, 2),
                                             ("ConvTranspose", True, 1), ("ConvTranspose", False, 1)])
def test_fold_batchnorm_preserves_function(kind, bias, group):
    rng = np.random.default_rng(hash((kind, bias, group)) % 2**32)
    cin, cout = 4, 6
    if kind == "Conv":
        w = rng.standard_normal((cout, cin // group, 3, 3)).astype(np.float32)
        attrs = {"pads": [1, 1, 1, 1], "group": group}
    else:
        w = rng.standard_normal((cin, cout, 3, 3)).astype(np.float32)
        attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}
    inits = {"W": w, **_bn_params(rng, cout)}
    conv_in = ["x", "W"]
    if bias:
        inits["B"] = rng.standard_normal(cout).astype(np.float32)
        conv_in.append("B")
    nodes = [oh.make_node(kind, conv_in, ["c"], name="conv", **attrs),
             oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3,
                          name="bn"),
             oh.make_node("Relu", ["bn"], ["y"], name="relu")]
    model = make_model(nodes, [("x", ["N", cin, 7, 7])], [("y", None)], inits)
    m = _to_ir(model)
    assert fold_batchnorm(m) == 1
    after = _to_proto(m)
    assert _ops(after) == Counter({kind: 1, "Relu": 1})
    (conv,) = [n for n in after.graph.node if n.op_type == kind]
    assert len(conv.input) == 3  # the folded conv always carries a bias
    x = rng.standard_normal((3, cin, 7, 7)).astype(np.float32)
    _assert_same_function(model, after, {"x": x})


def test_fold_batchnorm_output_is_graph_output_keeps_name():
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((5, 3, 1, 1)).astype(np.float32), **_bn_params(rng, 5)}
    nodes = [oh.make_node("Conv", ["x", "W"], ["c"]),
             oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["features"])]
    model = make_model(nodes, [("x", [2, 3, 4, 4])], [("features", None)], inits)
    m = _to_ir(model)
    assert fold_batchnorm(m) == 1
    after = _to_proto(m)
    assert [o.name for o in after.graph.output] == ["features"]
    _assert_same_function(model, after, {"x": rng.standard_normal((2, 3, 4, 4)).astype(np.float32)})


def test_fold_batchnorm_skips_grouped_conv_transpose_and_shared_conv_output():
    rng = np.random.default_rng(1)
    inits = {"W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), **_bn_params(rng, 6)}
    nodes = [oh.make_node("ConvTranspose", ["x", "W"], ["c"], group=2),
             oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"])]
    model = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", None)], inits)
    m = _to_ir(model)
    assert fold_batchnorm(m) == 0
    _assert_same_function(model, _to_proto(m), {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)})

    # the conv output is read by someone else too: folding would change that reader's input
    inits = {"W": rng.standard_normal((6, 4, 3, 3)).astype(np.float32), **_bn_params(rng, 6)}
    nodes = [oh.make_node("Conv", ["x", "W"], ["c"]),
             oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
             oh.make_node("Add", ["b", "c"], ["y"])]
    model = make_model(nodes, [("x", [1, 4, 5, 5])], [("y", None)], inits)
    m = _to_ir(model)
    assert fold_batchnorm(m) == 0
    _assert_same_function(model, _to_proto(m), {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)})


# ---------------------------------------------------------------------------------------------
# fold_constants
# ---------------------------------------------------------------------------------------------

def _const_node(name, array):
    return oh.make_node("Constant", [], [name], value=nh.from_array(np.asarray(array), name))


def _paddle_style_model(batch):
    """Constant-node weights (paddle2onnx), a transposed weight, and a Shape->Gather->Concat->Reshape
    flatten whose target shape is computable at compile time when the input shape is static."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    fc = rng.standard_normal((10, 4 * 6 * 6)).astype(np.float32)  # stored [out, in]: needs a transpose
    nodes = [
        _const_node("W", w), _const_node("B", b), _const_node("FC", fc),
        _const_node("idx0", np.array(0, np.int64)), _const_node("axes0", np.array([0], np.int64)),
        _const_node("minus1", np.array([-1], np.int64)),
        oh.make_node("Conv", ["x", "W", "B"], ["c"], pads=[0, 0, 0, 0], name="conv"),
        oh.make_node("Relu", ["c"], ["r"], name="relu"),
        oh.make_node("Shape", ["r"], ["shape"], name="shape"),
        oh.make_node("Gather", ["shape", "idx0"], ["n"], axis=0, name="gather"),
        oh.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
        oh.make_node("Concat", ["n1", "minus1"], ["target"], axis=0, name="concat"),
        oh.make_node("Reshape", ["r", "target"], ["flat"], name="reshape"),
        oh.make_node("Transpose", ["FC"], ["FCt"], perm=[1, 0], name="transpose"),
        oh.make_node("MatMul", ["flat", "FCt"], ["y"], name="fc"),
    ]
    return make_model(nodes, [("x", [batch, 3, 8, 8])], [("y", [batch, 10])], opset=13)


def _fold_to_fixed_point(m: ir.Model) -> int:
    from onnx_ir.passes import common as ir_passes

    total = 0
    for _ in range(8):
        ir_passes.ShapeInferencePass(strict_mode=False)(m)
        n = fold_constants(m)
        total += n
        if n == 0:
            return total
    raise AssertionError("constant folding did not reach a fixed point")


def test_fold_constants_static_shape_subgraph_and_constant_weights():
    model = _paddle_style_model(2)
    m = _to_ir(model)
    assert _fold_to_fixed_point(m) >= 10
    after = _to_proto(m)
    assert _ops(after) == Counter({"Conv": 1, "Relu": 1, "Reshape": 1, "MatMul": 1})
    inits = {t.name: nh.to_array(t) for t in after.graph.initializer}
    reshape = next(n for n in after.graph.node if n.op_type == "Reshape")
    assert inits[reshape.input[1]].tolist() == [2, -1]
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    _assert_same_function(model, after, {"x": x})


def test_fold_constants_pad_to_multiple_subgraph():
    """pads = (4 - dim % 4) % 4 for H and W, computed from Shape at run time by the exporter."""
    c = lambda name, v: _const_node(name, np.array(v, np.int64))  # noqa: E731
    nodes = [c("i2", [2]), c("i3", [3]), c("four", [4]), c("zeros6", [0, 0, 0, 0, 0, 0]),
             _const_node("W", np.random.default_rng(7).standard_normal((2, 3, 3, 3)).astype(np.float32)),
             oh.make_node("Shape", ["x"], ["shape"]),
             oh.make_node("Gather", ["shape", "i2"], ["h"], axis=0),
             oh.make_node("Gather", ["shape", "i3"], ["w"], axis=0),
             oh.make_node("Mod", ["h", "four"], ["hm"]), oh.make_node("Sub", ["four", "hm"], ["hp0"]),
             oh.make_node("Mod", ["hp0", "four"], ["hp"]),
             oh.make_node("Mod", ["w", "four"], ["wm"]), oh.make_node("Sub", ["four", "wm"], ["wp0"]),
             oh.make_node("Mod", ["wp0", "four"], ["wp"]),
             oh.make_node("Concat", ["zeros6", "hp", "wp"], ["pads"], axis=0),
             oh.make_node("Pad", ["x", "pads"], ["xp"]),
             oh.make_node("Conv", ["xp", "W"], ["y"], strides=[4, 4])]
    model = make_model(nodes, [("x", [2, 3, 6, 7])], [("y", [2, 2, 2, 2])], opset=13)
    m = _to_ir(model)
    _fold_to_fixed_point(m)
    after = _to_proto(m)
    assert _ops(after) == Counter({"Pad": 1, "Conv": 1})
    pad = next(n for n in after.graph.node if n.op_type == "Pad")
    inits = {t.name: nh.to_array(t) for t in after.graph.initializer}
    assert inits[pad.input[1]].tolist() == [0, 0, 0, 0, 0, 0, 2, 1]
    x = np.random.default_rng(8).standard_normal((2, 3, 6, 7)).astype(np.float32)
    _assert_same_function(model, after, {"x": x})


def test_fold_constants_keeps_shape_of_dynamic_tensors():
    model = _paddle_style_model("N")
    m = _to_ir(model)
    _fold_to_fixed_point(m)
    after = _to_proto(m)
    ops = _ops(after)
    assert ops["Constant"] == 0 and ops["Transpose"] == 0  # weights still folded
    assert ops["Shape"] == 1  # the batch size is only known at run time
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)
        _assert_same_function(model, after, {"x": x})


def test_fold_constants_negative_dim_value_is_dynamic():
    # x's batch dim is written as dim_value -1 (paddle2onnx style); y = x * batch_size
    x_vi = oh.make_tensor_value_info("x", TP.FLOAT, [-1, 4])
    nodes = [oh.make_node("Shape", ["x"], ["s"]), oh.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             oh.make_node("Cast", ["n"], ["nf"], to=TP.FLOAT), oh.make_node("Mul", ["x", "nf"], ["y"])]
    model = make_model(nodes, [x_vi], [("y", None)], {"i0": np.array(0, np.int64)}, opset=13)
    after, _ = canonicalize(_to_ir(model))
    _assert_same_function(model, _to_proto(after), {"x": np.ones((3, 4), np.float32)})


def test_fold_constants_skips_random_ops():
    nodes = [oh.make_node("RandomNormal", [], ["r"], shape=[2, 3], seed=1.0),
             oh.make_node("Add", ["x", "r"], ["y"])]
    model = make_model(nodes, [("x", [2, 3])], [("y", [2, 3])], opset=13)
    m = _to_ir(model)
    assert fold_constants(m) == 0
    assert _ops(_to_proto(m))["RandomNormal"] == 1


# ---------------------------------------------------------------------------------------------
# eliminate_noops
# ---------------------------------------------------------------------------------------------

def test_eliminate_noops_identity_and_dropout():
    rng = np.random.default_rng(4)
    nodes = [
        oh.make_node("Identity", ["x"], ["x_id"], name="id_in"),
        oh.make_node("Relu", ["x_id"], ["r"], name="relu"),
        oh.make_node("Dropout", ["r", "ratio"], ["d"], name="drop"),
        oh.make_node("Dropout", ["r"], ["d2", "d2_mask"], name="drop_mask_unused"),
        oh.make_node("Add", ["d", "d2"], ["s"], name="add"),
        oh.make_node("Add", ["s", "x_id"], ["t"], name="add2"),
        oh.make_node("Identity", ["t"], ["y"], name="id_out"),   # produces a graph output
    ]
    model = make_model(nodes, [("x", [2, 5])], [("y", [2, 5])], {"ratio": np.array(0.3, np.float32)}, opset=13)
    m = _to_ir(model)
    assert eliminate_noops(m) == 4
    after = _to_proto(m)
    assert _ops(after) == Counter({"Relu": 1, "Add": 2})
    assert [o.name for o in after.graph.output] == ["y"]
    assert [i.name for i in after.graph.input] == ["x"]
    _assert_same_function(model, after, {"x": rng.standard_normal((2, 5)).astype(np.float32)}, tol=0)


def test_eliminate_noops_keeps_what_it_must():
    rng = np.random.default_rng(5)
    nodes = [
        oh.make_node("Identity", ["x"], ["x_copy"]),        # graph input -> graph output: a rename, kept
        oh.make_node("Relu", ["x"], ["r"]),
        oh.make_node("Identity", ["r"], ["y1"]),            # two graph outputs share one source:
        oh.make_node("Identity", ["r"], ["y2"]),            # the second must stay to keep its name
        oh.make_node("Dropout", ["r"], ["d", "mask"]),      # mask is read: Dropout stays
        oh.make_node("Cast", ["mask"], ["maskf"], to=TP.FLOAT),
        oh.make_node("Mul", ["d", "maskf"], ["y3"]),
    ]
    model = make_model(nodes, [("x", [3, 4])], [("x_copy", None), ("y1", None), ("y2", None), ("y3", None)],
                       opset=13)
    m = _to_ir(model)
    eliminate_noops(m)
    after = _to_proto(m)
    assert [o.name for o in after.graph.output] == ["x_copy", "y1", "y2", "y3"]
    assert _ops(after)["Dropout"] == 1
    _assert_same_function(model, after, {"x": rng.standard_normal((3, 4)).astype(np.float32)}, tol=0)


def test_eliminate_noops_dropout_mask_as_graph_output():
    nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Dropout", ["r"], ["d", "mask"])]
    model = make_model(nodes, [("x", [2, 3])], [("d", None), ("mask", None, TP.BOOL)], opset=13)
    m = _to_ir(model)
    eliminate_noops(m)
    _assert_same_function(model, _to_proto(m), {"x": np.ones((2, 3), np.float32)}, tol=0)


@pytest.mark.parametrize("which", ["eliminate_noops", "fold_batchnorm"])
def test_passes_keep_graph_output_types(which):
    rng = np.random.default_rng(0)
    if which == "eliminate_noops":
        nodes = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Identity", ["r"], ["y"])]
        model = make_model(nodes, [("x", [2, 3, 4, 4])], [("y", [2, 3, 4, 4])], opset=13)
        m = _to_ir(model)
        assert eliminate_noops(m) == 1
    else:
        inits = {"W": rng.standard_normal((3, 3, 1, 1)).astype(np.float32), **_bn_params(rng, 3)}
        nodes = [oh.make_node("Conv", ["x", "W"], ["c"]),
                 oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"])]
        model = make_model(nodes, [("x", [2, 3, 4, 4])], [("y", [2, 3, 4, 4])], inits, opset=13)
        m = _to_ir(model)
        assert fold_batchnorm(m) == 1
    after = _to_proto(m, infer=False)
    assert after.graph.output[0].type.tensor_type.elem_type == TP.FLOAT


# ---------------------------------------------------------------------------------------------
# canonicalize()
# ---------------------------------------------------------------------------------------------

def test_canonicalize_upgrades_opset11_and_preserves_outputs():
    rng = np.random.default_rng(6)
    inits = {"W": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), **_bn_params(rng, 6),
             "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    nodes = [
        oh.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["b"]),
        oh.make_node("Clip", ["b", "lo", "hi"], ["r"]),
        oh.make_node("ReduceMean", ["r"], ["m"], axes=[3], keepdims=0),         # [N, 6, 5]
        oh.make_node("Unsqueeze", ["m"], ["m4"], axes=[1]),                      # axes attribute < 13
        oh.make_node("Squeeze", ["m4"], ["m3"], axes=[1]),
        oh.make_node("Split", ["m3"], ["s1", "s2"], axis=1, split=[2, 4]),
        oh.make_node("ReduceSum", ["s2"], ["s2sum"], axes=[1], keepdims=1),      # axes input at 13
        oh.make_node("Softmax", ["m3"], ["sm"], axis=1),                         # 2-D coercion < 13
        oh.make_node("Identity", ["s1"], ["first"]),
    ]
    model = make_model(nodes, [("x", ["N", 3, 5, 5])], [("sm", None), ("s2sum", None), ("first", None)],
                       inits, opset=11)
    after, summary = canonicalize(_to_ir(model))
    after = _to_proto(after)
    assert summary["opset_in"] == 11 and summary["opset"] == 13
    assert next(o.version for o in after.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert summary["batchnorms_folded"] == 1
    assert "BatchNormalization" not in _ops(after) and "Identity" not in _ops(after)
    for n in (1, 4):
        x = rng.standard_normal((n, 3, 5, 5)).astype(np.float32)
        _assert_same_function(model, after, {"x": x})


def test_canonicalize_keeps_newer_opsets():
    nodes = [oh.make_node("Relu", ["x"], ["y"])]
    model = make_model(nodes, [("x", [2])], [("y", [2])], opset=17)
    after, summary = canonicalize(_to_ir(model))
    assert summary["opset"] == 17


def test_ppocr_classifier_canonicalizes():
    from qcc.models.ppocr import ppocr_inputs, ppocr_model_path

    try:
        path = ppocr_model_path("cls")
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    model = onnx.load(str(path))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 11
    assert _ops(model)["Constant"] > 100 and len(model.graph.initializer) == 0
    after, summary = canonicalize(_to_ir(model))
    after = _to_proto(after)
    ops = _ops(after)
    assert ops["Constant"] == 0
    assert ops["BatchNormalization"] == 0 and summary["batchnorms_folded"] == _ops(model)["BatchNormalization"]
    assert summary["opset"] == 13
    x = ppocr_inputs("cls", 6)
    _assert_same_function(model, after, {"x": x})
    # the same at another batch size (the batch dim stays dynamic)
    _assert_same_function(model, after, {"x": x[:1]})
