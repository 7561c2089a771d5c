"""`--target cuda`: the bundled Fashion CNN compiled for each supported arch, every generated kernel
compiled by nvcc (no GPU needed); FP8 only on sm_89 / sm_90. Numerics against onnxruntime need a GPU:
that check runs only where one is present."""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime as ort
import pytest
import qcc
from qcc import models
from qcc.errors import QccError

tvm_backend = pytest.importorskip("qcc.backends.tvm")
from qcc.backends.tvm import cuda, verify

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) not installed")


@pytest.fixture(scope="module")
def fashion():
    return models.get("fashion-cnn", n_calib=16, n_eval=16)


def _qdq(entry, scheme):
    config = qcc.QuantConfig(scheme=scheme, calibration="minmax", passes=[])
    return qcc.compile_model(str(entry.onnx_path), entry.calib, config=config, progress=False).qdq_model


@pytest.fixture(scope="module")
def lowered(fashion):
    """scheme -> the lowered Relax module (lowering is target independent: compiled per arch below)."""
    shapes = verify.input_shapes_from(fashion.calib)
    return {s: tvm_backend.lower(_qdq(fashion, s), shapes) for s in ("int8", "fp8-e4m3")}


@needs_nvcc
@pytest.mark.parametrize("arch", cuda.ARCHS)
def test_int8_cnn_kernels_compile_with_nvcc(arch, lowered):
    mod, _, integer_ops, fallback = lowered["int8"]
    assert fallback == [] and integer_ops["conv2d"] == 5
    target = cuda.make_target(arch)
    ex, _ = cuda.compile_module(mod, target)
    info = cuda.check_kernels(ex, target)
    assert info["nvcc"]["ok"] and info["nvcc"]["cubin_bytes"] > 0 and info["kernels"] >= 5
    assert info["dp4a"]["ptx"] >= 1        # int8 dot products reach the hardware's dp4a
    assert info["fp8"]["kernels_with_fp8_operands"] == 0


@needs_nvcc
def test_int8_matmul_larger_than_64_compiles_to_dp4a():
    """TVM 0.27's default CUDA pipeline aborts on this (dlight gpu.Matmul: `fragment_info_`)."""
    from tvm import relax

    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((128, 384), "int8"))
    b = relax.Var("b", relax.TensorType((384, 384), "int8"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(a, b, out_dtype="int32"))
        bb.emit_func_output(out)
    target = cuda.make_target("sm_80")
    ex, _ = cuda.compile_module(bb.get(), target)
    info = cuda.check_kernels(ex, target)
    assert info["nvcc"]["ok"] and info["dp4a"]["ptx"] >= 1


@needs_nvcc
@pytest.mark.parametrize("arch", cuda.FP8_ARCHS)
def test_fp8_cnn_compiles_end_to_end(arch, fashion, tmp_path):
    """qcc.compile_model -> artifact: the build report records what nvcc compiled."""
    config = qcc.QuantConfig(scheme="fp8-e4m3", calibration="minmax", passes=[])
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, config=config, target="cuda", arch=arch,
                            out_dir=tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "model.so").stat().st_size > 0
    backend = res.report["backend"]
    assert res.manifest["backend"]["target"] == {"kind": "cuda", "arch": arch}
    assert backend["integer_ops"]["fp8_encode"] >= 8
    info = backend["cuda"]
    assert info["arch"] == arch and info["nvcc"]["ok"] and info["kernels"] >= 5
    # the 5 convolutions and the Gemm read FP8 operands, converted by the hardware (cvt ... e4m3);
    # FP8 values are produced by qcc's integer encode and stored as bits: no fused FP8 casts
    assert info["fp8"]["kernels_with_fp8_operands"] >= 6 and info["fp8"]["cvt_in_ptx"] > 0
    if not cuda.has_gpu():
        assert "no CUDA GPU" in backend["exactness_skipped"]


def test_fp8_refused_below_sm89_and_bad_arch(fashion, lowered, tmp_path):
    for arch in ("sm_80", "sm_86"):
        with pytest.raises(QccError, match="sm_89 or sm_90"):
            qcc.compile_model(str(fashion.onnx_path), fashion.calib, config=qcc.QuantConfig(scheme="fp8-e4m3"),
                              target="cuda", arch=arch, out_dir=tmp_path / arch, progress=False)
        assert not (tmp_path / arch).exists()
    mod = lowered["fp8-e4m3"][0]        # tvm_backend.build on an FP8 graph refuses too
    with pytest.raises(QccError, match="sm_89 or sm_90"):
        cuda.compile_module(mod, cuda.make_target("sm_86"))
    with pytest.raises(QccError, match="--arch"):
        cuda.make_target(None)
    with pytest.raises(QccError, match="--arch applies to --target cuda only"):
        qcc.compile_model(str(fashion.onnx_path), fashion.calib, target="llvm", arch="sm_89",
                          out_dir=tmp_path / "llvm", progress=False)
    with pytest.raises(QccError, match="unsupported CUDA arch"):
        cuda.make_target("sm_75")


@needs_nvcc
def test_nvcc_rejection_fails_the_build():
    cubin, ptx = cuda.nvcc_compile('extern "C" __global__ void k(float* x) { x[0] = 1.0f; }', "sm_80")
    assert cubin and ".entry k" in ptx
    with pytest.raises(QccError, match="nvcc rejected"):
        cuda.nvcc_compile('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "sm_80")


@pytest.mark.skipif(not cuda.has_gpu(), reason="no CUDA GPU: numerics vs onnxruntime need one")
@pytest.mark.parametrize("scheme,arch_ok", [("int8", cuda.ARCHS), ("fp8-e4m3", cuda.FP8_ARCHS)])
def test_on_gpu_matches_onnxruntime(scheme, arch_ok, fashion, tmp_path):
    import tvm

    arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    if arch not in arch_ok:
        pytest.skip(f"this GPU is {arch}")
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, config=qcc.QuantConfig(scheme=scheme),
                            target="cuda", arch=arch, out_dir=tmp_path / "a", progress=False)
    out = qcc.load(tmp_path / "a").run(fashion.eval)[0]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # ORT mis-fuses FP8 QDQ
    ref = ort.InferenceSession(res.qdq_model.SerializeToString(), opts,
                               providers=["CPUExecutionProvider"]).run(None, fashion.eval)[0]
    step = verify.output_steps(res.qdq_model)[0]
    tol = step if scheme == "int8" else 0.01 * np.abs(ref).max()
    assert np.abs(out - ref).max() <= tol
