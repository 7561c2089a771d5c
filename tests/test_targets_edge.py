"""Edge targets: aarch64 (cross build, run under qemu-aarch64), c (standalone C99 tree, gcc on the host
and aarch64 gcc under qemu) and hexagon (object code only), each checked bit-for-bit against the x86
llvm build of the SAME QDQ graph (fashion-cnn on 8 samples, MobileNetV2 on 1)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import qcc
from qcc import models
from qcc.errors import QccError

tvm_backend = pytest.importorskip("qcc.backends.tvm")
from qcc.backends.tvm import c_source, cross, verify

TOOLS = ("qemu-aarch64", "aarch64-linux-gnu-g++", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump", "gcc", "make")
_missing = cross.missing_tools(*TOOLS)
try:
    cross.runtime_wheels()
    _no_wheels = None
except QccError as exc:
    _no_wheels = str(exc)
needs_cross = pytest.mark.skipif(bool(_missing), reason=f"cross tools not installed ({', '.join(_missing)}); "
                                 ".ci/install installs qemu-user and the aarch64 GNU toolchain")
needs_wheels = pytest.mark.skipif(_no_wheels is not None, reason=f"aarch64 TVM runtime wheels missing: {_no_wheels}")

CASES = {"fashion-cnn": (32, 8), "mobilenetv2": (4, 1)}    # name -> (calibration samples, compared samples)
_cache: dict = {}


def _case(name, tmp_path_factory):
    """The QDQ graph, its input shapes, the samples and the x86 llvm build's outputs on them."""
    if name not in _cache:
        if name == "mobilenetv2":
            pytest.importorskip("torch")
        n_calib, n_eval = CASES[name]
        entry = models.get(name, n_calib=n_calib, n_eval=n_eval)
        qdq = qcc.compile_model(str(entry.onnx_path), entry.calib, progress=False).qdq_model
        shapes = verify.input_shapes_from(entry.calib)
        feeds = {k: v[:n_eval] for k, v in entry.eval.items()}
        x86 = tmp_path_factory.mktemp(f"{name}-x86")
        tvm_backend.build(qdq, tvm_backend.detect_target(), x86, shapes)
        ref = tvm_backend.Runner(x86).run(feeds)
        _cache[name] = (qdq, shapes, feeds, ref)
    return _cache[name]


def _bit_equal(got, ref):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert np.array_equal(g.view(np.uint8), r.view(np.uint8)), np.abs(g.astype(np.float64) - r).max()


# --- targets and options (no tools needed) --------------------------------------------------------

def test_presets_and_mattr():
    a76 = cross.aarch64_target("cortex-a76")
    assert a76["mtriple"] == "aarch64-linux-gnu" and cross.has_dotprod(a76)
    assert cross.has_dotprod(cross.aarch64_target("cortex-a55"))
    assert not cross.has_dotprod(cross.aarch64_target("cortex-a53"))
    assert not cross.has_dotprod(cross.aarch64_target("cortex-a76", ["+neon", "-dotprod"]))
    assert cross.has_dotprod(cross.aarch64_target("cortex-a53", ["+neon", "+dotprod"]))
    with pytest.raises(QccError, match="does not know mcpu"):
        cross.aarch64_target("cortex-a99")
    with pytest.raises(QccError, match="feature 'dotprd'"):
        cross.aarch64_target("cortex-a53", ["+dotprd"])
    with pytest.raises(QccError, match="--mattr applies to --target aarch64"):
        cross.edge_target("c", None, ["+neon"])
    with pytest.raises(QccError, match="hexagon"):
        cross.hexagon_target("hexagonv999")


def test_dotprod_layout_rewrites_every_conv(tmp_path_factory):
    """The aarch64 rewrite: int8 x int8 convs, dense ones channels-last (its exactness: the qemu tests)."""
    from qcc.backends.tvm import compat, dotprod_layout

    qdq, shapes, _, _ = _case("fashion-cnn", tmp_path_factory)
    mod, _, _, _ = tvm_backend.lower(qdq, shapes)
    new, rewritten = dotprod_layout.prepare(mod)
    convs = [b.value for blk in new["main"].body.blocks for b in blk.bindings
             if compat.op_name(b.value) == "relax.nn.conv2d"]
    assert rewritten == len(convs) + 1 >= 6     # + the classifier matmul
    assert all(compat.tensor_dtype(c.args[0]) == "int8" for c in convs)
    assert all(str(c.attrs.data_layout) == "NHWC" and str(c.attrs.kernel_layout) == "OHWI" for c in convs
               if int(c.attrs.groups) == 1)


# --- aarch64 ----------------------------------------------------------------------------------

@needs_cross
@needs_wheels
@pytest.mark.parametrize("name,mcpu", [("fashion-cnn", "cortex-a76"), ("mobilenetv2", "cortex-a76")])
def test_aarch64_under_qemu_is_bit_exact(name, mcpu, tmp_path_factory, tmp_path):
    qdq, shapes, feeds, ref = _case(name, tmp_path_factory)
    target = cross.aarch64_target(mcpu)
    info = cross.build_aarch64(qdq, target, tmp_path, shapes)
    # self-contained: runtime, runner and model for aarch64, the runner finds lib/ next to itself
    for f in ("model.so", "qcc_run", "runner_io.txt", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        head = (tmp_path / f).read_bytes()[:20] if f.endswith((".so", "qcc_run")) else b""
        assert (tmp_path / f).is_file() and (not head or head[18] == 183), f   # e_machine 183 = EM_AARCH64
    dyn = subprocess.run(["aarch64-linux-gnu-readelf", "-d", str(tmp_path / "qcc_run")], check=True, capture_output=True,
                         text=True).stdout
    assert "libtvm_runtime.so" in dyn and "$ORIGIN/lib" in dyn
    assert info["instructions"]["sdot"] > 0, info["instructions"]
    got = cross.QemuRunner(tmp_path).run(feeds)
    _bit_equal(got, ref)


@needs_cross
@needs_wheels
def test_compile_model_aarch64_artifact_runs(tmp_path):
    """qcc compile --target aarch64 --mcpu cortex-a53 (NEON, no dotprod): verified under qemu at build
    time, no sdot in the code; qcc.load(...).run runs it under qemu."""
    entry = models.get("fashion-cnn", n_calib=16, n_eval=4)
    res = qcc.compile_model(str(entry.onnx_path), entry.calib, eval_data=entry.eval, target="aarch64",
                            mcpu="cortex-a53", out_dir=tmp_path / "a53", progress=False)
    backend = res.report["backend"]
    assert backend["target"]["mcpu"] == "cortex-a53" and not backend["dotprod"]
    mix = backend["instructions"]
    assert mix["sdot"] == 0 and (mix["smull"] + mix["smlal"] + mix["mla"] + mix["mul"]) > 0, mix
    assert backend["exactness"] and all(e["within_step"] >= 0.99 for e in backend["exactness"].values())
    manifest = json.loads((tmp_path / "a53" / "manifest.json").read_text())
    assert manifest["target"] == "aarch64" and "lib/libtvm_runtime.so" in manifest["hashes"]
    out = qcc.load(tmp_path / "a53").run(entry.eval)
    assert out[0].shape == (4, 10)


# --- c ----------------------------------------------------------------------------------------

@needs_cross
@pytest.mark.parametrize("name", list(CASES))
def test_c_tree_host_and_aarch64_bit_exact(name, tmp_path_factory, tmp_path):
    qdq, shapes, feeds, ref = _case(name, tmp_path_factory)
    info = c_source.build_c(qdq, tmp_path, shapes)
    tree = tmp_path / "c"
    src = (tree / "kernels.c").read_text() + (tree / "model.c").read_text()
    assert "tvm/" not in src and "dlopen" not in src          # no TVM runtime or headers
    assert info["memory"]["arena_bytes"] > 0 and info["memory"]["weights_bytes"] > 0
    for toolchain in ("host", "aarch64"):
        runner = c_source.CRunner(tmp_path, toolchain, cflags="-O1")
        _bit_equal(runner.run(feeds), ref)
        sizes = runner.sizes()["total"]
        assert sizes["code"] > 0 and sizes["rodata"] >= info["memory"]["weights_bytes"]
        assert sizes["bss"] >= info["memory"]["arena_bytes"] + info["memory"]["workspace_bytes"]


@needs_cross
def test_compile_model_c_artifact(tmp_path):
    entry = models.get("fashion-cnn", n_calib=16, n_eval=4)
    res = qcc.compile_model(str(entry.onnx_path), entry.calib, eval_data=entry.eval, target="c",
                            out_dir=tmp_path / "c", progress=False)
    backend = res.report["backend"]
    assert backend["exactness"] and backend["code_size_host"]["total"]["code"] > 0
    assert "c/Makefile" in res.manifest["hashes"]
    # the tree builds with plain `make` (cc) where it was written
    if shutil.which("cc"):
        subprocess.run(["make", "-s", "-C", str(tmp_path / "c" / "c"), f"BUILD={tmp_path / 'b'}"], check=True)
        assert (tmp_path / "b" / "libqcc_model.a").is_file()
    with pytest.raises(QccError, match="--mcpu does not apply"):
        qcc.compile_model(str(entry.onnx_path), entry.calib, target="c", mcpu="cortex-a53",
                          out_dir=tmp_path / "c2", progress=False)


def test_float_literals_are_made_exact():
    v = float(np.float32(0.011109259910881519))
    src = "x = y / 1.110926e-02f + 7.300000e+01f;"
    out, n = c_source.exact_float_literals(src, {v, 73.0})
    assert n == 2 and float.fromhex(out.split("/ ")[1].split("f")[0]) == v
    assert "0x1.2400000000000p+6f" in out
    with pytest.raises(QccError):
        c_source.exact_float_literals("z = 2.500000e+00f;", {v})
    # the sign stays as printed and the magnitude is looked up; FLT_MAX needs no kernel constant;
    # TVM's `inff` / `nanf` become C99's INFINITY / NAN
    out, n = c_source.exact_float_literals("m = -3.402823e+38f; c = (a > -8.837626e+01f) ? a : -inff; d = nanf;",
                                           {-88.37625885009766})
    assert n == 2 and out == "m = -0x1.fffffe0000000p+127f; c = (a > -0x1.61814a0000000p+6f) ? a : -INFINITY; d = NAN;"


def _cc_missing():
    return [t for t in ("gcc", "make") if shutil.which(t) is None]


@pytest.mark.skipif(bool(_cc_missing()), reason="the C tree is built with gcc and make")
def test_c_tree_float_softmax_literals(tmp_path):
    """A float Softmax between quantized tensors (over a middle axis: over the last one it is the int8
    kernel of rules/norms.py): TVM's fast_softmax starts its max reduction at
    -FLT_MAX and clamps exp's argument at -88.376..., negative literals that once matched no constant
    (`float literal 3.402823e+38f ... matches no constant`, MiniLM and PP-OCRv4 rec). The tree
    prints every float32 literal in hex, computes the llvm build's bytes and onnxruntime's codes."""
    from onnx import helper as oh

    from conftest import make_model
    from qcc.backends import onnxruntime as ort_backend

    def qdq(x, s, z, out):
        return ([oh.make_node("QuantizeLinear", [x, f"{out}_s", f"{out}_z"], [f"{out}_q"]),
                 oh.make_node("DequantizeLinear", [f"{out}_q", f"{out}_s", f"{out}_z"], [out])],
                {f"{out}_s": np.float32(s), f"{out}_z": np.uint8(z)})

    n1, i1 = qdq("x", 0.02, 128, "xd")
    n2, i2 = qdq("p", 1 / 256, 0, "y")
    model = make_model(n1 + [oh.make_node("Softmax", ["xd"], ["p"], axis=1)] + n2, [("x", [2, 3, 16])],
                       [("y", [2, 3, 16])], {**i1, **i2}, opset=13)
    info = c_source.build_c(model, tmp_path / "c")
    assert [f["op"] for f in info["float_fallback"]] == ["nn.softmax"], info["float_fallback"]
    kernels = (tmp_path / "c" / "c" / "kernels.c").read_text()
    assert "-0x1.fffffe0000000p+127f" in kernels                     # -FLT_MAX, bit-exact
    assert not re.search(r"(?<![\w.])\d\.\d{6}e[+-]\d{2,3}f", kernels)   # no 7-digit literal left
    x = np.random.default_rng(3).uniform(-2.5, 2.5, (2, 3, 16)).astype(np.float32)
    x[0, 0] = 0.0                                                       # a row of ties
    (got,) = c_source.CRunner(tmp_path / "c").run({"x": x})
    tvm_backend.build(model, tvm_backend.detect_target(), tmp_path / "llvm")
    _bit_equal([got], tvm_backend.Runner(tmp_path / "llvm").run({"x": x}))
    (ref,) = ort_backend.make_session(model).run(None, {"x": x})
    assert got.shape == ref.shape
    assert np.abs(np.round(got * 256) - np.round(ref * 256)).max() <= 1, np.abs(got - ref).max()


# --- hexagon ----------------------------------------------------------------------------------

def test_hexagon_is_object_code_only(tmp_path_factory, tmp_path):
    qdq, shapes, _, _ = _case("fashion-cnn", tmp_path_factory)
    info = cross.build_hexagon(qdq, cross.hexagon_target(), tmp_path, shapes)
    obj = (tmp_path / cross.HEXAGON_OBJECT).read_bytes()
    assert obj[:4] == b"\x7fELF" and int.from_bytes(obj[18:20], "little") == 164   # EM_QDSP6 (Hexagon)
    assert info["compile_only"] and "no Hexagon runtime" in info["note"]
    with pytest.raises(QccError, match="compile-only"):
        tvm_backend.Runner(tmp_path)
