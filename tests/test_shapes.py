"""Which input dims a build keeps open (compiler/shapes.py; `qcc compile --dynamic / --static`): the flag
grammar, the plan against a model's inputs, and llvm builds of a sequence model (a Range over the
sequence length, as BERT's position ids) run at lengths the calibration never had, against onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

import qcc
from conftest import make_model
from qcc import QccError
from qcc import shapes
from qcc.artifact import QDQ_MODEL
from qcc.cli import main as cli_main

SPEC = [{"name": "ids", "shape": ["batch", "sequence"]}, {"name": "mask", "shape": ["batch", "sequence"]},
        {"name": "img", "shape": ["batch", 3, 48, "img_3"]}]
SAMPLES = {"ids": (8, 64), "mask": (8, 64), "img": (8, 3, 48, 320)}


@pytest.mark.parametrize("text, want", [
    ("ids:1=1..512", shapes.DynamicDim("ids", 1, 1, 512)),
    ("x:0", shapes.DynamicDim("x", 0, 1, None)),
    ("x:3=160..", shapes.DynamicDim("x", 3, 160, None)),
    ("a/b:-1=..64", shapes.DynamicDim("a/b", -1, 1, 64)),
])
def test_dynamic_flag_grammar(text, want):
    assert shapes.parse_dynamic(text) == want


@pytest.mark.parametrize("text, match", [
    ("ids", "INPUT:AXIS"), ("ids:one", "INPUT:AXIS"), ("ids:1=8..4", "1 <= MIN <= MAX"), ("ids:1=0..4", "MIN"),
])
def test_dynamic_flag_errors(text, match):
    with pytest.raises(QccError, match=match):
        shapes.parse_dynamic(text)


def test_plan_refuses_static_with_dynamic_and_repeats():
    with pytest.raises(QccError, match="--static"):
        shapes.plan(["ids:1"], static=True)
    with pytest.raises(QccError, match="twice"):
        shapes.plan(["ids:1", "ids:1=1..8"])


def test_default_keeps_the_models_open_dims_with_any_size():
    r = shapes.resolve(shapes.plan(), SPEC, SAMPLES)
    assert r["input_shapes"]["ids"] == ["batch", "sequence"] and r["input_shapes"]["img"] == ["batch", 3, 48, "img_3"]
    assert r["ranges"] == {"batch": [1, None], "sequence": [1, None], "img_3": [1, None]}
    # a static fallback builds at the calibration sample's sizes (batch 1: other batches run in chunks)
    assert r["sizes"] == {"batch": 1, "sequence": 64, "img_3": 320} and not r["static"]


def test_dynamic_ranges_a_shared_symbol_and_opens_a_fixed_dim():
    r = shapes.resolve(shapes.plan(["ids:1=1..512", "img:2=32..64"]), SPEC, SAMPLES)
    assert r["ranges"]["sequence"] == [1, 512]            # ids and mask share "sequence": one range
    assert r["input_shapes"]["img"] == ["batch", 3, "img_2", "img_3"] and r["ranges"]["img_2"] == [32, 64]
    with pytest.raises(QccError, match="two ranges"):
        shapes.resolve(shapes.plan(["ids:1=1..512", "mask:1=1..64"]), SPEC, SAMPLES)


@pytest.mark.parametrize("flag, match", [("nope:1", "no input 'nope' .*inputs: ids, mask, img"),
                                         ("ids:2", "rank 2")])
def test_dynamic_names_a_real_input_and_axis(flag, match):
    with pytest.raises(QccError, match=match):
        shapes.resolve(shapes.plan([flag]), SPEC, SAMPLES)


def test_static_pins_every_dim_to_the_calibration_sample():
    r = shapes.resolve(shapes.plan(static=True), SPEC, SAMPLES)
    assert r["input_shapes"] == {"ids": [1, 64], "mask": [1, 64], "img": [1, 3, 48, 320]} and r["ranges"] == {}


def test_dynamic_is_refused_by_targets_without_it(tmp_path):
    model = _sequence_model()
    with pytest.raises(QccError, match="--dynamic applies to --target llvm.*the QDQ ONNX keeps the model's dims"):
        qcc.compile_model(model, _calib(8), dynamic=["x:1"], progress=False)


# --------------------------------------------------------------------------------------------------------
# llvm builds of a sequence model
# --------------------------------------------------------------------------------------------------------

HIDDEN = 16


def _sequence_model() -> onnx.ModelProto:
    """y = relu((x + pos) @ W1) @ W2 with pos[t] = t / 8 from Range(0, Shape(x)[1], 1), as BERT's position
    ids: the length is a symbolic expression the TVM import must keep (onnx_converters.Range)."""
    rng = np.random.default_rng(0)
    nodes = [oh.make_node("Shape", ["x"], ["shape"]),
             oh.make_node("Gather", ["shape", "one"], ["seq_len"], axis=0),
             oh.make_node("Range", ["zero", "seq_len", "one"], ["positions"]),
             oh.make_node("Cast", ["positions"], ["pos_f"], to=TensorProto.FLOAT),
             oh.make_node("Mul", ["pos_f", "eighth"], ["pos_s"]),
             oh.make_node("Unsqueeze", ["pos_s", "axes"], ["pos"]),
             oh.make_node("Add", ["x", "pos"], ["xp"]),
             oh.make_node("MatMul", ["xp", "W1"], ["h"]),
             oh.make_node("Relu", ["h"], ["r"]),
             oh.make_node("MatMul", ["r", "W2"], ["y"])]
    inits = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "eighth": np.array(0.125, np.float32),
             "axes": np.array([1], np.int64),
             "W1": (rng.standard_normal((HIDDEN, 32)) * 0.3).astype(np.float32),
             "W2": (rng.standard_normal((32, 8)) * 0.3).astype(np.float32)}
    model = make_model(nodes, [("x", ["batch", "sequence", HIDDEN])], [("y", ["batch", "sequence", 8])], inits)
    onnx.checker.check_model(model)
    return model


def _calib(seq: int, n: int = 16, seed: int = 0) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((n, seq, HIDDEN)).astype(np.float32)}


def _reference(qdq_model, feeds):
    from qcc.backends import onnxruntime as ort_backend

    return ort_backend.make_session(qdq_model, optimize=False).run(None, feeds)[0]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq") / "seq.onnx"
    onnx.save(_sequence_model(), path)
    np.savez(path.with_suffix(".npz"), **_calib(8))
    return path


@pytest.fixture(scope="module")
def dynamic_artifact(model_path, tmp_path_factory):
    """The sequence model built once by `qcc compile --dynamic x:1=4..32`."""
    pytest.importorskip("qcc.backends.tvm")
    out = tmp_path_factory.mktemp("dyn") / "out"
    assert cli_main(["compile", str(model_path), "--calib", str(model_path.with_suffix(".npz")), "--target", "llvm",
                     "--dynamic", "x:1=4..32", "-o", str(out), "--quiet"]) == 0
    return out


def test_cli_dynamic_sequence_runs_other_lengths_and_refuses_out_of_range(dynamic_artifact, tmp_path, capsys):
    out = dynamic_artifact
    backend = json.loads((out / "report.json").read_text())["backend"]
    assert backend["dynamic"] == {"batch": [1, None], "sequence": [4, 32]} and not backend["static_batch"]
    art = qcc.load(out)
    for b, seq in ((1, 4), (3, 20), (2, 32)):
        x = _calib(seq, b, seed=seq)
        got = art.run(x)[0]
        ref = _reference(onnx.load(out / QDQ_MODEL), x)
        assert got.shape == (b, seq, 8)
        # one step of the output's float scale: the same integer arithmetic as onnxruntime's QDQ graph
        np.testing.assert_allclose(got, ref, rtol=0, atol=0.02 * np.abs(ref).max())
    np.savez(tmp_path / "long.npz", **_calib(40, 1))
    capsys.readouterr()
    assert cli_main(["run", str(out), "--inputs", str(tmp_path / "long.npz")]) == 2
    err = capsys.readouterr().err
    assert "input 'x' axis 1 (sequence) is 40; this build takes 4..32" in err, err


def test_default_build_keeps_the_open_dims_and_static_pins_them(model_path, tmp_path):
    pytest.importorskip("qcc.backends.tvm")
    calib = _calib(8)
    dyn = qcc.compile_model(str(model_path), calib, target="llvm", out_dir=tmp_path / "dyn", progress=False)
    assert dyn.report["backend"]["dynamic"] == {"batch": [1, None], "sequence": [1, None]}
    x = _calib(13, 2, seed=5)
    got = qcc.load(tmp_path / "dyn").run(x)[0]
    ref = _reference(dyn.qdq_model, x)
    np.testing.assert_allclose(got, ref, rtol=0, atol=0.02 * np.abs(ref).max())

    static = qcc.compile_model(str(model_path), calib, target="llvm", out_dir=tmp_path / "static", static=True,
                               progress=False)
    assert static.report["backend"]["dynamic"] == {} and static.report["backend"]["static_batch"]
    art = qcc.load(tmp_path / "static")
    np.testing.assert_array_equal(art.run(_calib(8, 3, seed=2))[0], qcc.load(tmp_path / "dyn").run(_calib(8, 3, seed=2))[0])
    with pytest.raises(QccError, match=r"input 'x' has shape \[1, 13, 16\], this build expects \[1, 8, 16\]"):
        art.run({"x": x["x"][:1]})


def test_bench_sizes_grammar_and_fit():
    assert shapes.parse_sizes("batch=4,sequence=64") == {"batch": 4, "sequence": 64}
    for bad in ("batch", "batch=0", "=3", "batch=x"):
        with pytest.raises(QccError, match="--shapes expects SYMBOL=N"):
            shapes.parse_sizes(bad)
    x = np.arange(2 * 3 * 2).reshape(2, 3, 2)
    dims = {"x": ["batch", "sequence", 2]}
    got = shapes.fit({"x": x}, dims, {"batch": 1, "sequence": 7})["x"]
    # cropped along batch, repeated (cyclically) along the sequence
    np.testing.assert_array_equal(got, x[:1, [0, 1, 2, 0, 1, 2, 0]])
    assert shapes.fit({"x": x}, dims, {"sequence": 2})["x"].shape == (2, 2, 2)
    with pytest.raises(QccError, match="--shapes names width; this build's open dims are batch, sequence"):
        shapes.fit({"x": x}, dims, {"width": 3})


def test_cli_bench_sweeps_shapes_and_refuses_out_of_range(dynamic_artifact, capsys):
    capsys.readouterr()
    assert cli_main(["bench", str(dynamic_artifact), "--shapes", "sequence=4", "batch=2,sequence=32",
                     "--runs", "3", "--warmup", "1", "--quiet"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["shapes"] for line in lines] == [{"sequence": 4}, {"batch": 2, "sequence": 32}]
    assert [line["input_shapes"]["x"] for line in lines] == [[1, 4, HIDDEN], [2, 32, HIDDEN]]
    assert all(line["median_ms"] > 0 and line["onnxruntime_int8_median_ms"] > 0 for line in lines)
    assert cli_main(["bench", str(dynamic_artifact), "--shapes", "sequence=40", "--runs", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "axis 1 (sequence) is 40; this build takes 4..32" in err, err
