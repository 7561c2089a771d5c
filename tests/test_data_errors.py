"""Every bad input becomes a QccError with a message that names the problem, raised before any
artifact (or hidden temporary folder) is written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as oh

import qcc
from conftest import compile_quiet, make_model
from qcc import QccError
from qcc.data import InputSpec, load_npz, validate_feeds


@pytest.fixture
def fashion(fashion_paths, fashion_calib):
    return fashion_paths[0], {"input": fashion_calib["input"][:8]}


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def _expect_error(tmp_path, model, calib, match, **kw):
    out = tmp_path / "out" / "artifact"
    (tmp_path / "out").mkdir(exist_ok=True)
    before = _listing(tmp_path / "out")
    with pytest.raises(QccError, match=match) as info:
        compile_quiet(model, calib, out_dir=out, **kw)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400
    assert _listing(tmp_path / "out") == before, "a failed compile left files behind"
    return msg


# ---------------------------------------------------------------------------------------------
# model files
# ---------------------------------------------------------------------------------------------

def test_missing_model_file(tmp_path, fashion):
    _, calib = fashion
    msg = _expect_error(tmp_path, str(tmp_path / "nope.onnx"), calib, "not found")
    assert "nope.onnx" in msg


def test_truncated_model(tmp_path, fashion):
    path, calib = fashion
    data = path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 2])
    msg = _expect_error(tmp_path, str(bad), calib, "truncated|not a valid ONNX|malformed")
    assert "truncated.onnx" in msg


def test_random_bytes_model(tmp_path, fashion):
    _, calib = fashion
    bad = tmp_path / "noise.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    msg = _expect_error(tmp_path, str(bad), calib, "not a valid ONNX|malformed|no nodes")
    assert "noise.onnx" in msg


def test_model_path_is_a_folder(tmp_path, fashion):
    _, calib = fashion
    (tmp_path / "dir.onnx").mkdir()
    _expect_error(tmp_path, str(tmp_path / "dir.onnx"), calib, "folder")


def test_unsupported_opset(tmp_path):
    m = make_model([oh.make_node("Relu", ["x"], ["y"])], [("x", ["N", 3])], [("y", ["N", 3])], opset=9)
    _expect_error(tmp_path, m, {"x": np.ones((2, 3), np.float32)}, "opset 9")


def test_unloadable_object():
    with pytest.raises(QccError, match="cannot load"):
        compile_quiet(12345, {"x": np.ones(1)})


def test_torch_module_without_example_inputs():
    torch = pytest.importorskip("torch")
    with pytest.raises(QccError, match="example_inputs"):
        compile_quiet(torch.nn.Linear(3, 2), {"input": np.ones((2, 3), np.float32)})


# ---------------------------------------------------------------------------------------------
# calibration data
# ---------------------------------------------------------------------------------------------

def test_calibration_keys_mismatch(tmp_path, fashion):
    path, calib = fashion
    msg = _expect_error(tmp_path, str(path), {"images": calib["input"]}, "keys")
    assert "missing input" in msg and "unknown images" in msg and "expected keys: input" in msg


def test_calibration_extra_key(tmp_path, fashion):
    path, calib = fashion
    msg = _expect_error(tmp_path, str(path), {**calib, "labels": np.zeros(8)}, "keys")
    assert "unknown labels" in msg


def test_calibration_wrong_rank(tmp_path, fashion):
    path, calib = fashion
    msg = _expect_error(tmp_path, str(path), {"input": calib["input"][:, 0]}, "rank")
    assert "(8, 28, 28)" in msg and "rank 4" in msg


def test_calibration_wrong_fixed_dim(tmp_path, fashion):
    path, calib = fashion
    x = np.zeros((8, 1, 28, 27), np.float32)
    msg = _expect_error(tmp_path, str(path), {"input": x}, "shape")
    assert "(8, 1, 28, 27)" in msg and "28, 28]" in msg


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "inf"), (-np.inf, "inf")])
def test_calibration_nonfinite(tmp_path, fashion, bad, word):
    path, calib = fashion
    x = calib["input"].copy()
    x[3, 0, 5, 5] = bad
    x[4, 0, 1, 1] = bad
    msg = _expect_error(tmp_path, str(path), {"input": x}, word)
    assert "2 " in msg


def test_calibration_empty(tmp_path, fashion):
    path, _ = fashion
    msg = _expect_error(tmp_path, str(path), {"input": np.zeros((0, 1, 28, 28), np.float32)}, "empty")
    assert "at least one sample" in msg


def test_calibration_string_dtype(tmp_path, fashion):
    path, _ = fashion
    x = np.array(["a"] * (8 * 28 * 28)).reshape(8, 1, 28, 28)
    _expect_error(tmp_path, str(path), {"input": x}, "dtype")


def test_calibration_sample_counts_disagree(tmp_path):
    nodes = [oh.make_node("Add", ["a", "b"], ["y"])]
    m = make_model(nodes, [("a", ["N", 3]), ("b", ["N", 3])], [("y", ["N", 3])])
    _expect_error(tmp_path, m, {"a": np.ones((4, 3), np.float32), "b": np.ones((5, 3), np.float32)}, "disagree")


def test_float_data_for_integer_input():
    specs = [InputSpec("ids", "int64", [None, 8])]
    with pytest.raises(QccError, match="int64"):
        validate_feeds(specs, {"ids": np.ones((2, 8), np.float32)})
    ok = validate_feeds(specs, {"ids": np.ones((2, 8), np.int32)})
    assert ok["ids"].dtype == np.int64  # cast to the model's dtype


def test_eval_labels_length(tmp_path, fashion):
    path, calib = fashion
    _expect_error(tmp_path, str(path), calib, "labels", eval_data=calib, labels=np.zeros(3, np.int64))


def test_load_npz_errors(tmp_path):
    with pytest.raises(QccError, match="not found"):
        load_npz(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(QccError, match="not a readable .npz"):
        load_npz(bad)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(QccError):
        load_npz(obj)


# ---------------------------------------------------------------------------------------------
# configuration and output folder
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [({"scheme": "int9"}, "unknown scheme"),
                                      ({"granularity": "per-row"}, "granularity"),
                                      ({"calibration": "magic"}, "calibration"),
                                      ({"percentile": 20.0}, "percentile")])
def test_bad_config(kw, match):
    with pytest.raises(QccError, match=match):
        qcc.QuantConfig(**kw)


def test_unknown_target(tmp_path, fashion):
    path, calib = fashion
    _expect_error(tmp_path, str(path), calib, "unknown target", target="tensorrt")


def test_existing_output_folder_needs_force(tmp_path, fashion):
    path, calib = fashion
    out = tmp_path / "art"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    (out / "manifest.json").write_text("{}")  # an earlier artifact
    with pytest.raises(QccError, match="already exists.*--force"):
        compile_quiet(str(path), calib, out_dir=out)
    assert _listing(out) == ["keep.txt", "manifest.json"]
    # a failing compile with --force leaves the old folder untouched
    bad = calib["input"].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(QccError, match="NaN"):
        compile_quiet(str(path), {"input": bad}, out_dir=out, force=True)
    assert _listing(out) == ["keep.txt", "manifest.json"]
    res = compile_quiet(str(path), calib, out_dir=out, force=True)
    assert res.out_dir == out
    assert _listing(out) == ["manifest.json", "model.qdq.onnx", "report.html", "report.json"]
    assert _listing(tmp_path) == ["art"]  # no hidden .tmp / .old folders left behind
    onnx.checker.check_model(onnx.load(str(out / "model.qdq.onnx")))


def test_output_path_is_a_file(tmp_path, fashion):
    path, calib = fashion
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(QccError, match="file"):
        compile_quiet(str(path), calib, out_dir=f, force=True)
    assert f.read_text() == "x"


def test_external_data(tmp_path, fashion):
    path, calib = fashion
    model = onnx.load(str(path))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(model, str(ext / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.weights", size_threshold=0)
    assert (ext / "model.weights").is_file()
    res = compile_quiet(str(ext / "model.onnx"), calib)  # loads its weights from the side file
    assert res.report["fidelity"]["outputs"]["logits"]["agreement"] >= 0.85
    (ext / "model.weights").unlink()
    msg = _expect_error(tmp_path, str(ext / "model.onnx"), calib, "external data")
    assert "model.weights" in msg
