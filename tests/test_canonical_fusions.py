"""LayerNorm fusion in canonicalize (passes/fuse_layernorm.py): one transformer block written three
ways (torch opset 17 fused, torch opset 13 decomposed by TorchScript, paddle-style onnx.helper
decomposed with epsilon after the Sqrt), the float function kept, and smoothing / crossquant
firing on the decomposed graphs; the checks that leave a near-miss alone."""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import compile_quiet, config, max_rel_err, run
from qcc.canonicalize import canonicalize
from qcc.passes import crossquant as cq
from qcc.passes import fuse_layernorm as fl

D, H, T, IN = 32, 64, 6, 16


def _ops(proto: onnx.ModelProto) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in proto.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _canon(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    model, summary = canonicalize(ir.serde.deserialize_model(proto))
    return ir.to_proto(model), summary


def _feeds(seed: int, n: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, T, IN)).astype(np.float32) * 2}


def _block_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in [("inp", (IN, D)), ("q", (D, D)), ("k", (D, D)), ("v", (D, D)), ("fc1", (D, H)),
                        ("fc2", (H, D))]:
        w[name] = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
        w[name + "_b"] = (rng.standard_normal(shape[1]) * 0.1).astype(np.float32)
    for ln in ("ln1", "ln2"):
        g = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        g[[3, 17]] = [25.0, -18.0]           # outlier channels: smoothing has something to move
        w[ln + "_g"] = g
        w[ln + "_b"] = (0.1 * rng.standard_normal(D)).astype(np.float32)
    return w


# ---- the block three ways ------------------------------------------------------------------------

def _torch_block(opset: int) -> onnx.ModelProto:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    w = _block_weights()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.q, self.k, self.v = nn.Linear(IN, D), nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
            self.fc1, self.fc2 = nn.Linear(D, H), nn.Linear(H, D)
            self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.act = nn.GELU()
            with torch.no_grad():
                for name in ("inp", "q", "k", "v", "fc1", "fc2"):
                    getattr(self, name).weight.copy_(torch.from_numpy(w[name].T.copy()))
                    getattr(self, name).bias.copy_(torch.from_numpy(w[name + "_b"]))
                for name in ("ln1", "ln2"):
                    getattr(self, name).weight.copy_(torch.from_numpy(w[name + "_g"]))
                    getattr(self, name).bias.copy_(torch.from_numpy(w[name + "_b"]))

        def forward(self, x):
            x = self.inp(x)
            y = self.ln1(x)
            a = torch.softmax(self.q(y) @ self.k(y).transpose(1, 2) / D ** 0.5, dim=-1) @ self.v(y)
            x = x + a
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))

    buf = io.BytesIO()
    torch.onnx.export(Block().eval(), (torch.zeros(1, T, IN),), buf, dynamo=False, opset_version=opset,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def _paddle_ln(nodes, inits, x: str, name: str, gamma, beta, *, eps_after_sqrt: bool, reciprocal: bool,
               axes=(-1,), eps_input: str | None = None) -> str:
    """paddle2onnx's decomposed layer_norm (opset < 17): ReduceMean / Sub / Pow(2) / ReduceMean / Add /
    Sqrt / Div / Mul / Add (here with the epsilon placement and the division form chosen)."""
    def c(suffix, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), f"{name}.{suffix}"))
        return f"{name}.{suffix}"

    two, eps = c("two", 2.0), eps_input or c("eps", 1e-5)
    nodes += [helper.make_node("ReduceMean", [x], [f"{name}.mean"], axes=list(axes), keepdims=1),
              helper.make_node("Sub", [x, f"{name}.mean"], [f"{name}.d"]),
              helper.make_node("Pow", [f"{name}.d", two], [f"{name}.sq"]),
              helper.make_node("ReduceMean", [f"{name}.sq"], [f"{name}.var"], axes=list(axes), keepdims=1)]
    if eps_after_sqrt:
        nodes += [helper.make_node("Sqrt", [f"{name}.var"], [f"{name}.sd"]),
                  helper.make_node("Add", [f"{name}.sd", eps], [f"{name}.std"])]
    else:
        nodes += [helper.make_node("Add", [f"{name}.var", eps], [f"{name}.ve"]),
                  helper.make_node("Sqrt", [f"{name}.ve"], [f"{name}.std"])]
    if reciprocal:
        nodes += [helper.make_node("Reciprocal", [f"{name}.std"], [f"{name}.inv"]),
                  helper.make_node("Mul", [f"{name}.inv", f"{name}.d"], [f"{name}.n"])]
    else:
        nodes.append(helper.make_node("Div", [f"{name}.d", f"{name}.std"], [f"{name}.n"]))
    out = f"{name}.n"
    if gamma is not None:
        nodes.append(helper.make_node("Mul", [out, c("w_0", gamma)], [f"{name}.scaled"]))
        out = f"{name}.scaled"
    if beta is not None:
        nodes.append(helper.make_node("Add", [out, c("b_0", beta)], [f"{name}.out"]))
        out = f"{name}.out"
    return out


def _paddle_block(opset: int = 12, **ln_kw) -> onnx.ModelProto:
    """The same block by hand, paddle2onnx style: epsilon after the Sqrt in ln1, Reciprocal * Mul in
    ln2, GELU as x * 0.5 * (1 + erf(x / sqrt 2)), Linear as MatMul + Add."""
    w = _block_weights()
    nodes, inits = [], []

    def linear(x, name):
        inits.extend([numpy_helper.from_array(w[name], f"{name}.w"), numpy_helper.from_array(w[name + "_b"], f"{name}.b")])
        nodes.extend([helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"]),
                      helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [f"{name}.out"])])
        return f"{name}.out"

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    x = linear("x", "inp")
    y = _paddle_ln(nodes, inits, x, "ln1", w["ln1_g"], w["ln1_b"], eps_after_sqrt=True, reciprocal=False, **ln_kw)
    q, k, v = linear(y, "q"), linear(y, "k"), linear(y, "v")
    nodes += [helper.make_node("Transpose", [k], ["kt"], perm=[0, 2, 1]),
              helper.make_node("MatMul", [q, "kt"], ["s"]),
              helper.make_node("Mul", ["s", const("inv_sqrt_d", 1 / np.sqrt(D))], ["s2"]),
              helper.make_node("Softmax", ["s2"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", v], ["a"]),
              helper.make_node("Add", [x, "a"], ["x2"])]
    y2 = _paddle_ln(nodes, inits, "x2", "ln2", w["ln2_g"], w["ln2_b"], eps_after_sqrt=False, reciprocal=True)
    h = linear(y2, "fc1")
    nodes += [helper.make_node("Mul", [h, const("half", 0.5)], ["h_half"]),
              helper.make_node("Div", [h, const("sqrt2", np.sqrt(2.0))], ["h_s"]),
              helper.make_node("Erf", ["h_s"], ["h_e"]),
              helper.make_node("Add", ["h_e", const("one", 1.0)], ["h_1"]),
              helper.make_node("Mul", ["h_half", "h_1"], ["gelu"])]
    f = linear("gelu", "fc2")
    nodes.append(helper.make_node("Add", ["x2", f], ["y"]))
    graph = helper.make_graph(nodes, "paddle_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, D])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def blocks() -> dict[str, onnx.ModelProto]:
    return {"torch17": _torch_block(17), "torch13": _torch_block(13), "paddle": _paddle_block()}


@pytest.mark.parametrize("way", ["torch17", "torch13", "paddle"])
def test_every_exporter_ends_with_layernormalization(blocks, way):
    proto = blocks[way]
    before = _ops(proto)
    if way == "torch17":
        assert before.get("LayerNormalization") == 2
    else:   # TorchScript below opset 17 and paddle2onnx decompose it
        assert "LayerNormalization" not in before and before["ReduceMean"] == 4
    new, summary = _canon(proto)
    after = _ops(new)
    assert after.get("LayerNormalization") == 2
    assert not {"ReduceMean", "Sqrt", "Pow", "Reciprocal", "Sub"} & set(after)
    assert summary["layernorms_fused"] == (0 if way == "torch17" else 2) and summary["opset"] >= 17
    onnx.checker.check_model(new)
    for ln in (n for n in new.graph.node if n.op_type == "LayerNormalization"):
        inits = {i.name: i for i in new.graph.initializer}
        assert [len(inits[i].dims) for i in ln.input[1:]] == [1, 1]     # 1-D gamma / beta: what passes read
    feeds = _feeds(1)
    ref, got = run(proto, feeds)[0], run(new, feeds)[0]
    assert max_rel_err(ref, got) <= 1e-5


def test_ways_agree_and_variants_fuse():
    """The paddle-style graph is the same function as torch's (up to epsilon after the Sqrt), and
    every variant of the pattern (no affine, gamma only, Mul(d, d), positive axes, opset 18 axes
    input) fuses with the float function kept."""
    feeds = _feeds(2)
    torch_out = run(_torch_block(17), feeds)[0]
    assert max_rel_err(torch_out, run(_paddle_block(), feeds)[0]) <= 1e-4
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, 5, 8)) * 3 + 1).astype(np.float32)
    g = rng.standard_normal(8).astype(np.float32)
    for opset, kw in [(13, dict(gamma=None, beta=None)), (13, dict(gamma=g, beta=None)),
                      (12, dict(gamma=g.reshape(1, 1, 8), beta=g)), (13, dict(gamma=g, beta=g, axes=(2,))),
                      (18, dict(gamma=g, beta=g)), (13, dict(gamma=g, beta=g, square="mul"))]:
        proto = _single_ln(opset, **kw)
        new, summary = _canon(proto)
        assert _ops(new).get("LayerNormalization") == 1 and summary["layernorms_fused"] == 1, (opset, kw.keys())
        assert max_rel_err(run(proto, {"x": x})[0], run(new, {"x": x})[0]) <= 1e-5


def _single_ln(opset: int, gamma=None, beta=None, axes=(-1,), square="pow", eps_after_sqrt=False,
               eps_input: bool = False, shape=(3, 5, 8)) -> onnx.ModelProto:
    nodes, inits = [], []
    eps = "eps_in" if eps_input else None
    out = _paddle_ln(nodes, inits, "x", "ln", gamma, beta, eps_after_sqrt=eps_after_sqrt, reciprocal=False,
                     axes=axes, eps_input=eps)
    if square == "mul":
        sq = next(n for n in nodes if n.op_type == "Pow")
        sq.op_type, sq.input[1] = "Mul", sq.input[0]
    if opset >= 18:   # axes became an input
        for n in nodes:
            if n.op_type == "ReduceMean":
                ax = list(helper.get_attribute_value(n.attribute[0]))
                del n.attribute[0]
                name = f"{n.output[0]}.axes"
                inits.append(numpy_helper.from_array(np.array(ax, np.int64), name))
                n.input.append(name)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))]
    if eps_input:
        inputs.append(helper.make_tensor_value_info("eps_in", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "ln", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(shape))],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


# ---- the checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["middle_axis", "not_trailing", "epsilon_input", "gamma_on_other_axis",
                                  "sub_of_other_tensor"])
def test_near_misses_are_left_alone(case):
    rng = np.random.default_rng(4)
    g = rng.standard_normal(8).astype(np.float32)
    feeds = {"x": rng.standard_normal((3, 5, 8)).astype(np.float32)}
    if case == "middle_axis":
        proto = _single_ln(13, gamma=None, beta=None, axes=(1,))
    elif case == "not_trailing":
        proto = _single_ln(13, gamma=None, beta=None, axes=(0, 2))
    elif case == "epsilon_input":
        proto = _single_ln(13, gamma=g, beta=g, eps_input=True)
        feeds["eps_in"] = np.array(1e-5, np.float32)
    elif case == "gamma_on_other_axis":
        proto = _single_ln(13, gamma=rng.standard_normal((5, 1)).astype(np.float32), beta=None)
    else:
        proto = _single_ln(13, gamma=None, beta=None)
        sub = next(n for n in proto.graph.node if n.op_type == "Sub")
        proto.graph.node.insert(0, helper.make_node("Neg", ["x"], ["negx"]))
        sub.input[0] = "negx"
    new, summary = _canon(proto)
    ops = _ops(new)
    assert "LayerNormalization" not in ops and summary["layernorms_fused"] == 0
    assert ops["ReduceMean"] == 2 and summary["layernorms_skipped"]
    assert summary["opset"] == 13          # no match: the opset is not raised
    assert max_rel_err(run(proto, feeds)[0], run(new, feeds)[0]) <= 1e-5


def test_intermediate_with_another_reader_is_left_alone():
    proto = _single_ln(13, gamma=None, beta=None)
    proto.graph.output.append(helper.make_tensor_value_info("ln.var", TensorProto.FLOAT, [3, 5, 1]))
    new, summary = _canon(proto)
    assert "LayerNormalization" not in _ops(new) and summary["layernorms_fused"] == 0


# ---- the acceptance test of issue 17 --------------------------------------------------------------

@pytest.mark.parametrize("pass_name", ["smoothing", "crossquant"])
def test_smoothing_and_crossquant_change_a_decomposed_layernorm_transformer(blocks, pass_name):
    """smoothing and crossquant changing a decomposed-LayerNorm transformer's quantized outputs."""
    proto = blocks["paddle"]
    from qcc.passes import smoothing as sm
    assert sm.find_sites(ir.serde.deserialize_model(proto), duplicate=True)[0] == []   # unfused: no site
    calib, evals = _feeds(5, 32), _feeds(6, 16)
    base = compile_quiet(proto, calib, eval_data=evals, target="onnx", config=config(passes=[]))
    r = compile_quiet(proto, calib, eval_data=evals, target="onnx", config=config(passes=[pass_name]))
    assert r.report["canonicalize"]["layernorms_fused"] == 2
    assert r.report["canonicalize"]["gelus_reordered"] == 1
    (entry,) = [p for p in r.report["passes"] if p["name"] == pass_name]
    summary = entry["summary"]          # the report keeps a pass's scalar figures
    if pass_name == "smoothing":        # every smoothing site is a LayerNorm -> MatMul one
        assert summary["smoothed"] >= 1 and summary["sites"] >= summary["smoothed"]
    else:                               # the sites the pass folded, as it hands them to the quantizer
        records = json.loads({p.key: p.value for p in r.float_model.metadata_props}[cq.METADATA_KEY])
        producers = {o: n.op_type for n in r.float_model.graph.node for o in n.output}
        ln_sites = [t for t in records if producers[t["tensor"]] == "LayerNormalization"]
        assert summary["sites"] == len(records) and len(ln_sites) >= 1
        # paddle's GELU (x * 0.5) * (1 + erf) put in normal form: its * 0.5 is a site too
        assert {producers[t["tensor"]] for t in records} == {"LayerNormalization", "Mul"}
    # the float rewrite is exact; the quantized outputs move
    assert max_rel_err(run(proto, evals)[0], run(r.float_model, evals)[0]) <= 1e-4
    q_base, q_pass = run(base.qdq_model, evals)[0], run(r.qdq_model, evals)[0]
    assert max_rel_err(q_base, q_pass) > 1e-3


def test_find_layernorms_reports_matches_on_the_decomposed_block(blocks):
    model = ir.serde.deserialize_model(blocks["torch13"])
    model, _ = canonicalize(model)                 # fused already: nothing left to match
    assert fl.find_layernorms(model)[0] == []
    raw = ir.serde.deserialize_model(_paddle_block(opset=17))
    matches, skipped = fl.find_layernorms(raw)
    assert [m.eps_after_sqrt for m in matches] == [True, False] and skipped == {}
    assert matches[0].epsilon == pytest.approx(1e-10) and matches[1].epsilon == pytest.approx(1e-5)


# ---- GELU normal form (passes/gelu_form.py) -------------------------------------------------------

def _gelu_graph(form: str) -> onnx.ModelProto:
    """x -> GELU (written as `form`) -> MatMul(W): the FFN's second linear layer reads the GELU."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in {
        "half": 0.5, "one": 1.0, "sqrt2": np.sqrt(2.0), "inv_sqrt2": 1 / np.sqrt(2.0), "three": 3.0,
        "c1": np.sqrt(2 / np.pi), "c2": 0.044715, "c15": 1.5,
        "W": rng.standard_normal((8, 4)) / 3}.items()]
    mk = helper.make_node
    if form.startswith("erf"):
        inner = [mk("Mul", ["x", "inv_sqrt2"], ["s"]) if form == "erf_mul" else
                 mk("Div", ["x", "c15" if form == "erf_wrong_constant" else "sqrt2"], ["s"]),
                 mk("Erf", ["s"], ["f"])]
    else:
        cube = [mk("Pow", ["x", "three"], ["x3"])] if form != "tanh_cubed_by_mul" else \
            [mk("Mul", ["x", "x"], ["xx"]), mk("Mul", ["xx", "x"], ["x3"])]
        inner = cube + [mk("Mul", ["c2", "x3"], ["cx3"]), mk("Add", ["x", "cx3"], ["u"]),
                        mk("Mul", ["u", "c1"], ["s"]), mk("Tanh", ["s"], ["f"])]
    inner.append(mk("Add", ["one", "f"], ["a"]))
    if form in ("erf_torch", "erf_wrong_constant"):                 # (x * a) * 0.5
        outer = [mk("Mul", ["x", "a"], ["xa"]), mk("Mul", ["xa", "half"], ["g"])]
    elif form in ("erf_mul", "tanh"):                               # x * (0.5 * a)
        outer = [mk("Mul", ["half", "a"], ["ha"]), mk("Mul", ["x", "ha"], ["g"])]
    else:                                                           # (x * 0.5) * a
        outer = [mk("Mul", ["x", "half"], ["xh"]), mk("Mul", ["xh", "a"], ["g"])]
    graph = helper.make_graph(inner + outer + [mk("MatMul", ["g", "W"], ["y"])], form,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5, 4])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("form", ["erf_torch", "erf_mul", "erf_paddle", "tanh", "tanh_paddle", "tanh_cubed_by_mul",
                                  "erf_wrong_constant"])
def test_gelu_normal_form_gives_crossquant_its_site(form):
    proto = _gelu_graph(form)
    new, summary = _canon(proto)
    recognised = form != "erf_wrong_constant"
    assert summary["gelus"] == int(recognised)
    assert summary["gelus_reordered"] == int(recognised and form != "erf_torch")
    x = {"x": (np.random.default_rng(8).standard_normal((3, 5, 8)) * 3).astype(np.float32)}
    assert max_rel_err(run(proto, x)[0], run(new, x)[0]) <= 1e-6
    sites = cq.find_sites(ir.serde.deserialize_model(new))
    assert [s.producer.op_type for s in sites] == ["Mul"]     # the * 0.5 that reads into the MatMul
