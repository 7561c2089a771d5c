"""The `qcc` command line end to end (subprocess), the artifact API, and the torch front end."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper as oh

import qcc
from conftest import compile_quiet, max_rel_err, run, session
from qcc import QccError

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
ENV.pop("QCC_DEBUG", None)


def qcc_cli(*args, cwd=None, script=False):
    """Run the CLI in a fresh process: the installed `qcc` console script (script=True, when it sits next to
    this interpreter) or `python -m qcc.cli`."""
    exe = Path(sys.executable).parent / "qcc"
    cmd = [str(exe)] if script and exe.exists() else [sys.executable, "-m", "qcc.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300)


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture(scope="module")
def calib_npz(tmp_path_factory, fashion_paths):
    folder = tmp_path_factory.mktemp("calib")
    with np.load(fashion_paths[1]) as z:
        x = z["input"][:16]
    np.savez(folder / "calib.npz", input=x)
    return folder / "calib.npz", x


# ---------------------------------------------------------------------------------------------
# user errors: exit 2, one line on stderr, no traceback, nothing written
# ---------------------------------------------------------------------------------------------

def _bad_inputs(tmp: Path, model: Path, x: np.ndarray):
    """name -> (model argument, calibration array dict or None for 'use a given file', extra args, expected words)"""
    trunc = tmp / "truncated.onnx"
    trunc.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    noise = tmp / "noise.onnx"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    custom = tmp / "custom.onnx"   # a node of a domain onnxruntime has no kernels for
    m = oh.make_model(oh.make_graph(
        [oh.make_node("Relu", ["input"], ["h"], name="relu"),
         oh.make_node("FancyAct", ["h"], ["y"], name="fancy", domain="com.example")], "g",
        [oh.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])]),
        opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.example", 1)])
    onnx.save(m, custom)
    nan = x.copy()
    nan[1, 0, 3, 3] = np.nan
    inf = x.copy()
    inf[2, 0, 0, 0] = np.inf
    return {
        "missing model": (tmp / "missing.onnx", {"input": x}, [], ["not found", "missing.onnx"]),
        "truncated": (trunc, {"input": x}, [], ["truncated.onnx"]),
        "random bytes": (noise, {"input": x}, [], ["noise.onnx"]),
        "keys": (model, {"image": x}, [], ["missing input", "unknown image"]),
        "rank": (model, {"input": x[:, 0]}, [], ["rank 4"]),
        "fixed dim": (model, {"input": x[:, :, :, :20]}, [], ["expects"]),
        "nan": (model, {"input": nan}, [], ["NaN"]),
        "inf": (model, {"input": inf}, [], ["inf"]),
        "empty": (model, {"input": x[:0]}, [], ["empty"]),
        "string": (model, {"input": np.full(x.shape, "s")}, [], ["dtype"]),
        "integers for a float input": (model, {"input": (x * 255).astype(np.int32)}, [], ["int32", "float32"]),
        "custom-domain op": (custom, {"input": x}, [], ["'fancy'", "com.example::FancyAct", "onnxruntime cannot run"]),
        "no calib for a user model": (model, None, [], ["--calib"]),
        "unknown zoo name": ("resnet-9000", {"input": x}, [], ["resnet-9000"]),
        "bad override": (model, {"input": x}, ["--override", "x=int3"], ["int3"]),
        "missing calib file": (model, tmp / "nope.npz", [], ["nope.npz"]),
    }


BAD_CASES = ["missing model", "truncated", "random bytes", "keys", "rank", "fixed dim", "nan", "inf", "empty",
             "string", "integers for a float input", "custom-domain op", "no calib for a user model", "unknown zoo name", "bad override", "missing calib file"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_cli_user_errors(tmp_path, fashion_paths, calib_npz, case):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    model, calib, extra, words = _bad_inputs(inputs, fashion_paths[0], calib_npz[1])[case]
    args = ["compile", model, "-o", work / "art", "--quiet", *extra]
    if isinstance(calib, dict):
        np.savez(inputs / "calib.npz", **calib)
        args += ["--calib", inputs / "calib.npz"]
    elif calib is not None:
        args += ["--calib", calib]
    proc = qcc_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("qcc: error: ")
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert _listing(work) == [], "nothing may be written, not even hidden temporary folders"


def test_cli_unknown_scheme_one_line(tmp_path, calib_npz, fashion_paths):
    proc = qcc_cli("compile", fashion_paths[0], "--calib", calib_npz[0], "-o", tmp_path / "art", "--scheme", "int9")
    assert proc.returncode == 2
    assert "int9" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "art").exists()
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("qcc: error: ")
    assert _listing(tmp_path) == []
    # argparse's other usage errors too: a missing required -o
    proc = qcc_cli("compile", fashion_paths[0], "--calib", calib_npz[0])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_existing_output_and_force(tmp_path, calib_npz, fashion_paths):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "manifest.json").write_text("{}")  # an earlier artifact: --force may replace it
    base = ["compile", fashion_paths[0], "--calib", calib_npz[0], "-o", out, "--quiet"]
    proc = qcc_cli(*base)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--force" in proc.stderr
    assert _listing(out) == ["manifest.json", "old.txt"]
    proc = qcc_cli(*base, "--force")
    assert proc.returncode == 0, proc.stderr
    assert _listing(out) == ["manifest.json", "model.qdq.onnx", "report.html", "report.json"]
    assert _listing(tmp_path) == ["art"]


# ---------------------------------------------------------------------------------------------
# the bundled default, end to end
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def default_artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    out = folder / "OUT"
    proc = qcc_cli("compile", "-o", out, cwd=folder, script=True)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_cli_compile_default_model(default_artifact):
    out, proc = default_artifact
    assert _listing(out) == ["manifest.json", "model.qdq.onnx", "report.html", "report.json"]
    assert _listing(out.parent) == ["OUT"]
    model = onnx.load(str(out / "model.qdq.onnx"))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops and "BatchNormalization" not in ops
    manifest = json.loads((out / "manifest.json").read_text())
    digest = hashlib.sha256((out / "model.qdq.onnx").read_bytes()).hexdigest()
    assert manifest["hashes"]["model.qdq.onnx"] == digest
    assert [i["name"] for i in manifest["inputs"]] == ["input"]
    report = json.loads((out / "report.json").read_text())
    fid = report["fidelity"]
    assert fid["data"] == "evaluation" and fid["samples"] == 10000
    logits = fid["outputs"]["logits"]
    assert logits["accuracy_fp32"] > 0.88
    assert logits["accuracy_fp32"] - logits["accuracy_quantized"] <= 0.005
    assert "accuracy" in proc.stdout  # the summary


def test_cli_artifact_folder_permissions_follow_umask(default_artifact):
    out, _ = default_artifact
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask or os.name == "nt"


def test_cli_run_matches_onnxruntime(default_artifact, tmp_path):
    out, _ = default_artifact
    from qcc.models import datasets

    x, _ = datasets.load_fashion_mnist("test")
    x = x[:37]
    np.savez(tmp_path / "x.npz", input=x)
    proc = qcc_cli("run", out, "--inputs", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert lines[0]["output"] == "logits" and lines[0]["shape"] == [37, 10]
    with np.load(tmp_path / "y.npz") as z:
        y = z["logits"]
    from qcc.backends import onnxruntime as ort_backend

    # onnxruntime as the onnx target runs it (fused where exact on this CPU), at the same threads
    sess = ort_backend.make_session(out / "model.qdq.onnx", threads=os.cpu_count() or 1)
    (ref,) = sess.run(["logits"], {"input": x})
    assert np.array_equal(y, ref)
    # and it's the quantized model, not the float one
    from qcc.models import bundled_model_path

    (fp,) = run(bundled_model_path(), {"input": x})
    assert not np.array_equal(y, fp) and max_rel_err(fp, y) < 0.1


def test_cli_run_bad_inputs(default_artifact, tmp_path):
    out, _ = default_artifact
    np.savez(tmp_path / "x.npz", image=np.zeros((2, 1, 28, 28), np.float32))
    proc = qcc_cli("run", out, "--inputs", tmp_path / "x.npz")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "expected keys: input" in proc.stderr
    proc = qcc_cli("run", tmp_path, "--inputs", tmp_path / "x.npz")
    assert proc.returncode == 2 and "not a qcc artifact" in proc.stderr


def test_cli_inspect(default_artifact):
    out, _ = default_artifact
    proc = qcc_cli("inspect", out)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    report = json.loads((out / "report.json").read_text())
    layers = report["layers"]
    assert len(layers) >= 6
    assert "SQNR" in text.splitlines()[1]
    for row in layers:
        line = next(ln for ln in text.splitlines() if ln.startswith(row["node"][:40]))
        sqnr = float(line.split()[-1])
        assert np.isfinite(sqnr) and sqnr == pytest.approx(row["sqnr_db"], abs=0.01)
        assert 15 < sqnr < 80
    convs = [r for r in layers if r["op"] == "Conv"]
    assert len(convs) == 5 and all(r["weight"]["dtype"] == "int8" for r in convs)
    proc = qcc_cli("inspect", out, "--json")
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["node"] for r in rows] == [r["node"] for r in layers]


def test_load_and_run_artifact(default_artifact):
    out, _ = default_artifact
    art = qcc.load(out)
    assert art.input_names == ["input"] and art.output_names == ["logits"]
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype(np.float32)
    (y,) = art.run({"input": x})
    (ref,) = session(out / "model.qdq.onnx").run(None, {"input": x})
    assert y.shape == (5, 10)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    (y64,) = art.run({"input": x.astype(np.float64)})  # cast to the model's dtype
    np.testing.assert_allclose(y64, y, rtol=1e-6, atol=1e-6)
    with pytest.raises(QccError, match="expected keys: input"):
        art.run({"x": x})
    with pytest.raises(QccError, match="rank"):
        art.run({"input": x[:, 0]})
    with pytest.raises(QccError, match="NaN"):
        art.run({"input": np.full_like(x, np.nan)})
    with pytest.raises(QccError, match="not a qcc artifact"):
        qcc.load(out.parent / "nowhere")


# ---------------------------------------------------------------------------------------------
# torch front end
# ---------------------------------------------------------------------------------------------

def test_compile_torch_module(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.fc = torch.nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            x = torch.relu(self.bn(self.conv(x)))
            x = torch.nn.functional.max_pool2d(x, 2)
            return self.fc(torch.flatten(x, 1))

    net = Net()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 3, 8, 8)).astype(np.float32)
    res = compile_quiet(net, {"input": calib}, example_inputs=torch.zeros(1, 3, 8, 8), out_dir=tmp_path / "art")
    assert "BatchNormalization" not in {n.op_type for n in res.float_model.graph.node}
    assert set(res.plan.roles.values()) >= {"compute", "fused-activation", "shared"}
    x = rng.standard_normal((9, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    (got,) = qcc.load(tmp_path / "art").run({"input": x})  # dynamic batch: 9 != the example's 1
    assert got.shape == (9, 5)
    assert max_rel_err(ref, got) < 0.05
    assert max_rel_err(ref, run(res.float_model, {"input": x})[0]) < 1e-5


def test_cli_labels_without_eval_is_an_error(tmp_path, calib_npz, fashion_paths):
    np.save(tmp_path / "labels.npy", np.zeros(16, np.int64))
    proc = qcc_cli("compile", fashion_paths[0], "--calib", calib_npz[0], "--labels", tmp_path / "labels.npy",
                   "-o", tmp_path / "art", "--quiet")
    assert proc.returncode == 2 and "--eval" in proc.stderr
    assert not (tmp_path / "art").exists()


def test_force_refuses_a_folder_that_is_not_an_artifact(tmp_path, calib_npz, fashion_paths):
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    proc = qcc_cli("compile", fashion_paths[0], "--calib", calib_npz[0], "-o", precious, "--force")
    assert proc.returncode == 2 and "not a qcc artifact" in proc.stderr
    assert (precious / "notes.txt").read_text() == "keep me"


def test_cli_bench_prints_one_json_line(default_artifact):
    out, _ = default_artifact
    proc = qcc_cli("bench", out, "--runs", "3", "--warmup", "1", "--batch", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    assert row["batch"] == 2 and row["runs"] == 3 and row["target"] == "onnx"
    assert row["threads"] == len(os.sched_getaffinity(0))   # default: the CPUs this process may use
    assert row["median_ms"] > 0 and row["onnxruntime_int8_median_ms"] > 0 and row["onnxruntime_fp32_median_ms"] > 0
    assert row["ratio_vs_onnxruntime_int8"] == pytest.approx(row["median_ms"] / row["onnxruntime_int8_median_ms"],
                                                             rel=0.01)
    report = json.loads((Path(out) / "report.json").read_text())
    assert report["bench"]["median_ms"] == row["median_ms"]   # the figures land in the report
    assert "report.html" in os.listdir(out)
    proc = qcc_cli("bench", out, "--runs", "0")
    assert proc.returncode == 2 and "--runs" in proc.stderr
    proc = qcc_cli("bench", out, "--threads", "0")
    assert proc.returncode == 2 and "--threads" in proc.stderr


def test_llvm_target_refuses_w4a8_before_calibrating(tmp_path, calib_npz, fashion_paths):
    proc = qcc_cli("compile", fashion_paths[0], "--calib", calib_npz[0], "-o", tmp_path / "a", "--target", "llvm",
                   "--scheme", "w4a8")
    assert proc.returncode == 2 and "w4a8" in proc.stderr and "--target onnx" in proc.stderr
    assert "calibrat" not in proc.stderr  # refused up front
    assert not (tmp_path / "a").exists()
