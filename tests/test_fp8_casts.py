"""qcc's FP8 lowering (backends/tvm/fp8.py), run as BUILT TVM code on llvm.

* decode: all 256 codes of E4M3FN and E5M2, bit-exact against ml_dtypes (NaN as NaN);
* encode: a dense float32 sweep (+-0, float32 subnormals, FP8 subnormals, every midpoint between
  adjacent codes and one float32 ulp either side, max, overflow, inf, NaN, random bit patterns),
  bit-exact against ONNX QuantizeLinear's saturate=1 rules (clip to +-max, then round half to even:
  ml_dtypes), and the round trip against onnxruntime's own QuantizeLinear -> DequantizeLinear;
* FP8 QDQ graphs (fp8-e4m3, fp8-e5m2) of the Fashion CNN built for llvm against onnxruntime on the
  same graph. onnxruntime's graph optimizations change FP8 QDQ graphs (ORT 1.32's ReluQuantRewrite
  drops the Relu: logits off by up to ~30 on this model), so the reference is onnxruntime with
  optimizations off, which equals onnx.reference's evaluation of the graph.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import qcc
from onnx import TensorProto as TP
from onnx import helper as oh
from qcc import models

tvm_backend = pytest.importorskip("qcc.backends.tvm")
import tvm
from qcc.backends.tvm import fp8
from tvm import relax

FORMATS = [(fp8.E4M3FN, ml_dtypes.float8_e4m3fn, TP.FLOAT8E4M3FN), (fp8.E5M2, ml_dtypes.float8_e5m2, TP.FLOAT8E5M2)]
CPU = tvm.target.Target({"kind": "llvm"})


def _run_unary(shape, in_dtype, fn, x):
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(shape, in_dtype))
    with bb.function("main", [v]):
        with bb.dataflow():
            out = bb.emit_output(fn(bb, v))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=CPU)
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _same_bits_or_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def _sweep(fmt: fp8.Fp8Format, mlt) -> np.ndarray:
    fi = ml_dtypes.finfo(mlt)
    tiny, big = float(fi.smallest_subnormal), float(fi.max)
    pos = np.arange(fmt.max_code + 1, dtype=np.uint8).view(mlt).astype(np.float64)
    mids = ((pos[:-1] + pos[1:]) / 2).astype(np.float32)
    around = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0))])
    top = np.float32(big) + np.float32(big) / np.float32(2 ** (fmt.man_bits + 1))  # the overflow midpoint
    special = [0.0, np.inf, np.nan, big, np.nextafter(np.float32(big), np.float32(np.inf)), top,
               np.nextafter(top, np.float32(0)), np.nextafter(top, np.float32(np.inf)), 1e-45, 1.1754942e-38,
               1.1754944e-38, 3.4028235e38, tiny / 2, np.nextafter(np.float32(tiny / 2), np.float32(1))]
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, 1 << 15, dtype=np.uint64).astype(np.uint32).view(np.float32)
    vals = np.concatenate([np.linspace(-2 * big, 2 * big, 8001), np.geomspace(tiny / 8, big * 2, 8000),
                           around, pos, special]).astype(np.float32)
    return np.concatenate([vals, -vals, random_bits])


@pytest.mark.parametrize("fmt,mlt,_", FORMATS, ids=["e4m3fn", "e5m2"])
def test_decode_all_256_codes_exact(fmt, mlt, _):
    codes = np.arange(256, dtype=np.uint8)
    got = _run_unary((256,), "uint8", lambda bb, v: fp8.decode(bb, v, fmt), codes)
    want = codes.view(mlt).astype(np.float32)
    bad = ~_same_bits_or_nan(got, want)
    assert not bad.any(), [(hex(i), float(want[i]), float(got[i])) for i in np.flatnonzero(bad)[:8]]
    assert np.signbit(got[0x80]) and got[0x80] == 0  # -0 stays -0


@pytest.mark.parametrize("fmt,mlt,onnx_type", FORMATS, ids=["e4m3fn", "e5m2"])
def test_encode_sweep_matches_onnx_saturate_rules(fmt, mlt, onnx_type):
    x = _sweep(fmt, mlt)
    got = _run_unary(x.shape, "float32", lambda bb, v: fp8.encode(bb, v, fmt), x)
    with np.errstate(invalid="ignore"):  # NaN stays NaN
        want = np.clip(x, -fmt.max_value, fmt.max_value).astype(mlt).view(np.uint8)  # saturate=1, then RNE
    bad = got != want
    assert not bad.any(), [(float(x[i]), hex(got[i]), hex(want[i])) for i in np.flatnonzero(bad)[:8]]
    # the same values through onnxruntime's QuantizeLinear -> DequantizeLinear (scale 1)
    g = oh.make_graph([oh.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                       oh.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
                      [oh.make_tensor_value_info("x", TP.FLOAT, [None])], [oh.make_tensor_value_info("y", TP.FLOAT, [None])],
                      [oh.make_tensor("s", TP.FLOAT, [], [1.0]), oh.make_tensor("z", onnx_type, [], [0])])
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 19)])
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = got.view(mlt).astype(np.float32)
    bad = ~_same_bits_or_nan(ours, ref)
    assert not bad.any(), [(float(x[i]), float(ours[i]), float(ref[i])) for i in np.flatnonzero(bad)[:8]]


@pytest.fixture(scope="module")
def fashion():
    return models.get("fashion-cnn", n_calib=16, n_eval=32)


def _unoptimized(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("scheme", ["fp8-e4m3", "fp8-e5m2"])
def test_fp8_qdq_fashion_cnn_builds_for_llvm_and_matches_onnxruntime(scheme, fashion, tmp_path):
    config = qcc.QuantConfig(scheme=scheme, calibration="minmax", passes=[])
    res = qcc.compile_model(str(fashion.onnx_path), fashion.calib, config=config, target="llvm",
                            out_dir=tmp_path / "a", progress=False)   # no up-front refusal any more
    backend = res.report["backend"]
    assert backend["integer_ops"].get("fp8_encode", 0) >= 8 and backend["integer_ops"].get("fp8_decode", 0) >= 8
    out = qcc.load(tmp_path / "a").run(fashion.eval)[0]
    ref = _unoptimized(res.qdq_model, fashion.eval)[0]
    err = np.abs(out - ref)
    # fake-quantized float compute: only float summation order differs from onnxruntime, which
    # can move a value across an FP8 rounding boundary (one FP8 step) somewhere upstream
    assert err.max() <= 0.01 * np.abs(ref).max(), err.max()
    assert err.mean() <= 1e-3 * np.abs(ref).mean(), err.mean()
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.97


def test_fp8_operand_rewrite_matches_onnxruntime_on_cpu(fashion):
    """The GPU's FP8 conv2d / matmul rewrite (scales moved after the accumulation) checked on the CPU,
    with qcc's decode standing in for the GPU's hardware FP8 -> float conversion."""
    config = qcc.QuantConfig(scheme="fp8-e4m3", calibration="minmax", passes=[])
    q = qcc.compile_model(str(fashion.onnx_path), fashion.calib, config=config, progress=False).qdq_model
    mod, _, _, _ = tvm_backend.lower(q, tvm_backend.input_shapes_from(fashion.calib))
    mod, count = fp8.operands_to_fp8(mod, "decode")
    assert count == 6                      # 5 convolutions and the Gemm
    vm = relax.VirtualMachine(tvm.compile(mod, target=CPU), tvm.cpu())
    x = fashion.eval["input"]
    out = np.concatenate([vm["main"](tvm.runtime.tensor(x[i:i + 1])).numpy() for i in range(len(x))])
    ref = _unoptimized(q, fashion.eval)[0]
    err = np.abs(out - ref)     # float summation order may move one value by one FP8 step upstream
    assert err.max() <= 0.01 * np.abs(ref).max() and err.mean() <= 1e-3 * np.abs(ref).mean()
    assert np.median(err) <= 1e-5 * np.abs(ref).max()     # most logits agree to float rounding
