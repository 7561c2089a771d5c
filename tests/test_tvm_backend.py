"""TVM backend: requantization arithmetic, target detection, and the integer lowering of small QDQ
graphs (odd shapes) checked element-wise against onnxruntime on the same QDQ model."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import helper as oh

from conftest import compile_quiet, config, make_model

tvm_backend = pytest.importorskip("qcc.backends.tvm")
from qcc import QccError  # noqa: E402
from qcc.backends import onnxruntime as ort_backend  # noqa: E402
from qcc.backends.tvm import fixedpoint, verify  # noqa: E402
from qcc.backends.tvm.lowering import Affine, Term, emit_requantize  # noqa: E402

RNG = np.random.default_rng(1234)


@pytest.fixture(scope="module")
def target():
    return tvm_backend.detect_target()


# ------------------------------------------------------------------------------------------
# requantization arithmetic
# ------------------------------------------------------------------------------------------

def _exact_round_half_even(num: int, den: int) -> int:
    q, r = divmod(num, den)          # floor division, 0 <= r < den
    if 2 * r > den or (2 * r == den and q % 2 == 1):
        q += 1
    return q


def test_round_shift_half_even_matches_exact_rationals_including_ties():
    shifts = RNG.integers(1, 40, size=4000)
    v = RNG.integers(-(2**50), 2**50, size=4000, dtype=np.int64)
    # every fourth value sits exactly on a tie, both parities of the quotient
    tie = np.arange(4000) % 4 == 0
    v[tie] = (v[tie] >> shifts[tie] << shifts[tie]) + (np.int64(1) << (shifts[tie] - 1))
    got = fixedpoint.round_shift_half_even(v, shifts)
    want = np.array([_exact_round_half_even(int(a), 1 << int(s)) for a, s in zip(v, shifts)])
    assert np.array_equal(got, want)
    assert tie.sum() > 900 and len(set((got[tie] & 1).tolist())) == 1   # ties go to even


def test_quantize_multiplier_is_31_bit_and_precise():
    m = np.concatenate([10.0 ** RNG.uniform(-9, 2, 500), [0.5, 1.0, 2.0**-20, 0.9999999999]])
    mult, shift = fixedpoint.quantize_multiplier(m)
    assert np.all(mult < 2**31) and np.all(mult >= 2**30) and np.all(shift >= 1)
    rel = np.abs(mult * np.exp2(-shift.astype(np.float64)) - m) / m
    assert rel.max() <= 2.0**-31
    with pytest.raises(ValueError):
        fixedpoint.quantize_multiplier([-1.0])
    assert fixedpoint.quantize_multiplier([0.0])[0][0] == 0


def test_requantize_reference_equals_rounding_of_the_fixed_point_value():
    acc = RNG.integers(-(2**31), 2**31 - 1, size=3000, dtype=np.int64)
    m = 10.0 ** RNG.uniform(-6, -1, size=3000)
    mult, shift = fixedpoint.quantize_multiplier(m)
    # plant exact ties of the fixed-point value: acc * M == (2k + 1) * 2**(shift - 1)
    for i in range(0, 3000, 5):
        mult[i] = 1 << 30
        shift[i] = 31
        acc[i] = 2 * RNG.integers(-1000, 1000) + 1
    got = fixedpoint.requantize_reference(acc, mult, shift, 3, -128, 127)
    want = [min(127, max(-128, _exact_round_half_even(int(a) * int(mm), 1 << int(s)) + 3))
            for a, mm, s in zip(acc, mult, shift)]
    assert np.array_equal(got, want)
    # and it is round-half-to-even of the real product except within 2**-30 relative of a tie
    ideal = np.array([_exact_round_half_even(*(Fraction(int(a)) * Fraction(float(mm))).as_integer_ratio())
                      for a, mm in zip(acc[1::5], m[1::5])]) + 3
    assert np.mean(np.clip(ideal, -128, 127) == got[1::5]) > 0.999


def _run_relax_requant(acc: np.ndarray, m: np.ndarray, s_y: float, z_y: int, dtype: str, lo: int, hi: int,
                       k: np.ndarray, offset, target) -> np.ndarray:
    from tvm import relax

    from qcc.backends.tvm import compat

    bb = relax.BlockBuilder()
    x = relax.Var("acc", relax.TensorType(acc.shape, "int32"))

    class Emitter:
        def emit(self, expr):
            if isinstance(expr, (compat.Var, compat.Constant)):
                return expr
            return bb.emit(expr)

    with bb.function("main", [x]):
        with bb.dataflow():
            aff = Affine([Term(lambda e: x, m, k, [], "conv2d")], offset, acc.ndim, [])
            out = bb.emit_output(emit_requantize(Emitter(), aff, s_y, z_y, dtype, lo, hi))
        bb.emit_func_output(out)
    ex, _ = compat.compile_module(bb.get(), target)
    vm = relax.VirtualMachine(ex, compat.tvm.cpu())
    return vm["main"](compat.to_device(acc)).numpy()


@pytest.mark.parametrize("dtype,z_y", [("uint8", 117), ("int8", -3)])
def test_emitted_requantization_is_bit_exact_vs_numpy(target, dtype, z_y):
    """Per-channel multipliers on random int32 accumulators (with planted ties), an int32 bias, a
    fixed-point offset and a ReLU-style clamp: the TVM build equals the numpy twin bit for bit."""
    C = 7
    acc = RNG.integers(-(2**24), 2**24, size=(3, C, 5, 4)).astype(np.int32)
    m = (10.0 ** RNG.uniform(-6, -3, size=C)).reshape(1, C, 1, 1)
    s_y = 0.05
    mult, shift = fixedpoint.quantize_multiplier(m / s_y)
    # ties: acc * M == odd * 2**(shift-1) for channel 0 when M = 2**30, shift = 31 -> acc odd
    m[0, 0, 0, 0] = s_y * 0.5
    mult, shift = fixedpoint.quantize_multiplier(m / s_y)
    assert mult[0, 0, 0, 0] == 1 << 30 and shift[0, 0, 0, 0] == 31
    acc[:, 0] = 2 * RNG.integers(-60, 60, size=acc[:, 0].shape) + 1
    k = RNG.integers(-5000, 5000, size=(1, C, 1, 1))
    offset = RNG.normal(0, 0.3, size=(1, C, 1, 1))
    k[0, 0, 0, 0] = 0
    offset[0, 0, 0, 0] = 0.0
    lo, hi = (z_y, 255) if dtype == "uint8" else (-128, 100)
    got = _run_relax_requant(acc, m, s_y, z_y, dtype, lo, hi, k, offset, target)
    B = fixedpoint.offset_fixed(offset, s_y, shift)
    want = fixedpoint.requantize_reference(acc.astype(np.int64) + k, mult, shift, z_y, lo, hi, B)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got.astype(np.int64), want)
    # channel 0 is all ties (odd / 2): they round half to even, like ONNX QuantizeLinear
    assert np.array_equal(got[:, 0].astype(np.int64), np.clip(np.round(acc[:, 0] / 2) + z_y, lo, hi))


@pytest.mark.parametrize("dtype,z_y", [("uint8", 117), ("int8", -3)])
def test_emitted_float_requantization_is_bit_exact_vs_numpy(target, dtype, z_y):
    """One term, int32 bias, no real offset: the float32 (MLAS-order) requantize; the TVM build
    equals its numpy twin bit for bit, ties (channel 0: acc odd, m = 1/2) round half to even."""
    C = 7
    acc = RNG.integers(-(2**24), 2**24, size=(3, C, 5, 4)).astype(np.int32)
    m = (10.0 ** RNG.uniform(-6, -3, size=C)).reshape(1, C, 1, 1)
    s_y = 0.05
    m[0, 0, 0, 0] = s_y * 0.5
    acc[:, 0] = 2 * RNG.integers(-60, 60, size=acc[:, 0].shape) + 1
    k = RNG.integers(-5000, 5000, size=(1, C, 1, 1))
    k[0, 0, 0, 0] = 0
    lo, hi = (z_y, 255) if dtype == "uint8" else (-128, 100)
    got = _run_relax_requant(acc, m, s_y, z_y, dtype, lo, hi, k, None, target)
    scale = fixedpoint.float_scale(m / s_y)
    want = fixedpoint.requantize_float_reference(acc + k.astype(np.int32), scale, z_y, lo, hi)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got.astype(np.int64), want)
    assert np.array_equal(got[:, 0].astype(np.int64), np.clip(np.round(acc[:, 0] / 2) + z_y, lo, hi))
    # and within one step of the exact rational rounding of (acc + k) * m / s_y
    exact = np.clip(np.round((acc.astype(np.float64) + k) * (m / s_y)) + z_y, lo, hi)
    assert np.abs(got.astype(np.int64) - exact).max() <= 1


# ------------------------------------------------------------------------------------------
# targets
# ------------------------------------------------------------------------------------------

def test_detect_target_picks_a_valid_mcpu_from_cpuinfo_flags():
    from qcc.backends.tvm import compat

    t = tvm_backend.detect_target()
    assert t["kind"] == "llvm" and compat.is_valid_cpu(t["mcpu"])
    base = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt"
    assert tvm_backend.detect_target(cpuinfo=base)["mcpu"] == "x86-64"
    avx2 = base + " avx avx2 fma f16c bmi2"
    assert tvm_backend.detect_target(cpuinfo=avx2)["mcpu"] == "haswell"
    vnni = avx2 + " avx512f avx512bw avx512vl avx512dq avx512cd avx512_vnni"
    assert tvm_backend.detect_target(cpuinfo=vnni)["mcpu"] == "cascadelake"
    amd = vnni.replace("GenuineIntel", "AuthenticAMD") + " avx512_bf16 avx512_vbmi2 avx512ifma avx512vbmi"
    assert tvm_backend.detect_target(cpuinfo=amd)["mcpu"] == "znver4"
    assert tvm_backend.detect_target(mcpu="haswell") == {"kind": "llvm", "mcpu": "haswell"}


def test_bad_mcpu_is_an_error_not_a_silent_generic_build(tmp_path):
    with pytest.raises(QccError, match="mcpu='skylake-avx1024'"):
        tvm_backend.detect_target(mcpu="skylake-avx1024")
    with pytest.raises(QccError, match="kind='llvm'"):
        tvm_backend.detect_target(kind="cuda")
    with pytest.raises(QccError):
        tvm_backend.build(onnx.ModelProto(), {"kind": "llvm", "mcpu": "nonsense"}, tmp_path)


# ------------------------------------------------------------------------------------------
# small graphs vs onnxruntime
# ------------------------------------------------------------------------------------------

def _w(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _data(shape, n=24, loc=0.3):
    return (RNG.standard_normal((n, *shape)) + loc).astype(np.float32)


def _compile_and_check(model, calib, feeds, tmp_path, target, min_within=0.999, **cfg):
    """QDQ-compile `model`, build it with TVM, compare every output with onnxruntime on the QDQ model.
    Tolerance: one step of the output's own quantizer, or for float outputs the scale of the
    nearest upstream QuantizeLinear."""
    q = compile_quiet(model, calib, config=config(**cfg)).qdq_model
    info = tvm_backend.build(q, target, tmp_path)
    got = tvm_backend.Runner(tmp_path).run(feeds)
    ref = ort_backend.make_session(q, optimize=False).run(None, feeds)
    e2e = verify.end_to_end(q, got, feeds)
    for name, r in e2e.items():
        assert r["within_step"] >= min_within, (name, r)
    for a, b in zip(got, ref):
        assert a.shape == b.shape and a.dtype == b.dtype
    mod, *_ = tvm_backend.lower(q)
    return q, info, got, ref, tvm_backend.heavy_ops(mod)


def _assert_integer(heavy, n_min):
    ints = [h for h in heavy if h["out"] == "int32"]
    assert len(ints) >= n_min, heavy
    for h in ints:
        assert h["inputs"][0] in ("uint8", "int8") and h["inputs"][1] in ("uint8", "int8"), h
    assert not [h for h in heavy if h["out"] == "float32"], heavy


@pytest.mark.parametrize("scheme", ["int8", "int8-sym", "uint8-sym"])
def test_conv_odd_shapes_padding_strides_dilation(tmp_path, target, scheme):
    """Asymmetric padding with a nonzero input zero point (padded with zp_x), stride (2, 1),
    dilation (1, 2), a fused ReLU, then a conv whose float output is the graph output."""
    nodes = [
        oh.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 2, 0, 2], strides=[2, 1], dilations=[1, 2],
                     kernel_shape=[3, 5]),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("Conv", ["r1", "W2", "B2"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
    ]
    model = make_model(nodes, [("x", ["N", 3, 13, 17])], [("y", ["N", 4, 7, 13])],
                       {"W1": _w(5, 3, 3, 5), "B1": _w(5), "W2": _w(4, 5, 3, 3), "B2": _w(4)})
    _, info, got, ref, heavy = _compile_and_check(model, {"x": _data((3, 13, 17))}, {"x": _data((3, 13, 17), 5)},
                                                  tmp_path, target, scheme=scheme)
    _assert_integer(heavy, 2)
    assert info["float_fallback"] == [] and info["integer_ops"]["conv2d"] == 2


def test_depthwise_grouped_relu6_and_per_tensor(tmp_path, target):
    nodes = [
        oh.make_node("Conv", ["x", "Wd", "Bd"], ["d"], group=6, pads=[1, 1, 1, 1], strides=[2, 2], kernel_shape=[3, 3]),
        oh.make_node("Clip", ["d", "lo", "hi"], ["d6"]),
        oh.make_node("Conv", ["d6", "Wg", "Bg"], ["g"], group=2, kernel_shape=[3, 3], pads=[0, 1, 2, 1]),
        oh.make_node("Relu", ["g"], ["gr"]),
        oh.make_node("Conv", ["gr", "Wp"], ["y"], kernel_shape=[1, 1]),
    ]
    inits = {"Wd": _w(6, 1, 3, 3, scale=1.0), "Bd": _w(6), "lo": np.array(0, np.float32), "hi": np.array(6, np.float32),
             "Wg": _w(4, 3, 3, 3), "Bg": _w(4), "Wp": _w(3, 4, 1, 1)}
    model = make_model(nodes, [("x", ["N", 6, 11, 9])], [("y", ["N", 3, 7, 5])], inits)
    for gran in ("per-channel", "per-tensor"):
        _, info, _, _, heavy = _compile_and_check(model, {"x": _data((6, 11, 9))}, {"x": _data((6, 11, 9), 4)},
                                                  tmp_path / gran, target, granularity=gran)
        _assert_integer(heavy, 3)
        assert info["integer_ops"].get("depthwise_conv2d") == 1 and info["integer_ops"].get("grouped_conv2d") == 1
        assert info["float_fallback"] == []


def test_gemm_transb_both_ways_and_matmul_bias(tmp_path, target):
    nodes = [
        oh.make_node("Flatten", ["x"], ["f"], axis=1),
        oh.make_node("Gemm", ["f", "W1", "B1"], ["h"], transB=1),
        oh.make_node("Relu", ["h"], ["hr"]),
        oh.make_node("Gemm", ["hr", "W2", "B2"], ["g"]),
        oh.make_node("MatMul", ["g", "W3"], ["m"]),
        oh.make_node("Add", ["m", "B3"], ["y"]),
    ]
    inits = {"W1": _w(13, 2 * 5 * 3), "B1": _w(13), "W2": _w(13, 11), "B2": _w(11), "W3": _w(11, 7), "B3": _w(7)}
    model = make_model(nodes, [("x", ["N", 2, 5, 3])], [("y", ["N", 7])], inits)
    _, info, _, _, heavy = _compile_and_check(model, {"x": _data((2, 5, 3))}, {"x": _data((2, 5, 3), 9)},
                                              tmp_path, target)
    _assert_integer(heavy, 3)
    assert info["integer_ops"]["matmul"] == 3


def test_attention_matmuls_of_two_activations(tmp_path, target):
    """q @ k^T and softmax(.) @ v: both operands quantized activations (uint8 with zero points); the
    Softmax between them quantized in and out (the plan's norm role), so it is the int8 kernel."""
    nodes = [
        oh.make_node("MatMul", ["x", "Wq"], ["q0"]), oh.make_node("Add", ["q0", "bq"], ["q"]),
        oh.make_node("MatMul", ["x", "Wk"], ["k0"]), oh.make_node("Add", ["k0", "bk"], ["k"]),
        oh.make_node("MatMul", ["x", "Wv"], ["v0"]), oh.make_node("Add", ["v0", "bv"], ["v"]),
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        oh.make_node("MatMul", ["q", "kt"], ["s"]),
        oh.make_node("Softmax", ["s"], ["p"], axis=-1),
        oh.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    d = 6
    inits = {f"W{c}": _w(d, d) for c in "qkv"} | {f"b{c}": _w(d) for c in "qkv"}
    model = make_model(nodes, [("x", ["N", 5, d])], [("y", ["N", 5, d])], inits)
    _, info, _, _, heavy = _compile_and_check(model, {"x": _data((5, d))}, {"x": _data((5, d), 6)}, tmp_path, target)
    _assert_integer(heavy, 5)
    assert info["integer_ops"]["matmul_int_x_int"] == 2
    assert info["float_fallback"] == [] and info["integer_ops"]["softmax"] == 1, info


def test_pools_concat_resize_add(tmp_path, target):
    nodes = [
        oh.make_node("Conv", ["x", "W1", "B1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("Conv", ["x", "W2", "B2"], ["b"], kernel_shape=[1, 1]),
        oh.make_node("Concat", ["a", "b"], ["c"], axis=1),
        oh.make_node("MaxPool", ["c"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        oh.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[3, 2], strides=[1, 1], pads=[1, 0, 1, 1],
                     count_include_pad=0),
        oh.make_node("AveragePool", ["ap"], ["ap2"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1],
                     count_include_pad=1),
        oh.make_node("Resize", ["ap2", "", "scales"], ["up"], mode="nearest"),
        oh.make_node("Conv", ["up", "W3", "B3"], ["u"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("Add", ["u", "c"], ["s"]),
        oh.make_node("Relu", ["s"], ["sr"]),
        oh.make_node("GlobalAveragePool", ["sr"], ["gap"]),
        oh.make_node("Flatten", ["gap"], ["f"]),
        oh.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], transB=1),
    ]
    inits = {"W1": _w(3, 2, 3, 3), "B1": _w(3), "W2": _w(2, 2, 1, 1, scale=2.0), "B2": _w(2),
             "scales": np.array([1, 1, 2, 2], np.float32), "W3": _w(5, 5, 3, 3), "B3": _w(5),
             "Wf": _w(4, 5), "Bf": _w(4)}
    model = make_model(nodes, [("x", ["N", 2, 10, 14])], [("y", ["N", 4])], inits)
    q, info, _, _, heavy = _compile_and_check(model, {"x": _data((2, 10, 14))}, {"x": _data((2, 10, 14), 5)},
                                              tmp_path, target)
    _assert_integer(heavy, 4)
    ops = info["integer_ops"]
    for op in ("concat", "max_pool2d", "avg_pool2d", "resize2d", "add", "mean", "matmul"):
        assert ops.get(op), (op, ops)
    assert info["float_fallback"] == []


def test_conv_transpose_with_and_without_input_zero_point(tmp_path, target):
    nodes = [
        oh.make_node("ConvTranspose", ["x", "Wt1", "Bt1"], ["t1"], strides=[2, 2], pads=[1, 1, 1, 1],
                     output_padding=[1, 1], kernel_shape=[3, 3]),
        oh.make_node("Relu", ["t1"], ["r"]),
        oh.make_node("ConvTranspose", ["r", "Wt2"], ["y"], strides=[2, 2], kernel_shape=[2, 2]),
    ]
    inits = {"Wt1": _w(3, 4, 3, 3), "Bt1": _w(4), "Wt2": _w(4, 2, 2, 2)}
    model = make_model(nodes, [("x", ["N", 3, 5, 7])], [("y", ["N", 2, 20, 28])], inits)
    _, info, _, _, heavy = _compile_and_check(model, {"x": _data((3, 5, 7))}, {"x": _data((3, 5, 7), 3)},
                                              tmp_path, target)
    assert info["integer_ops"]["conv2d_transpose"] == 2
    _assert_integer(heavy, 2)          # uint8 input with its zero point: a compile-time correction map


def test_float_fallback_is_listed_and_stays_exact(tmp_path, target):
    """A linear Resize between quantized convs has no integer lowering (it interpolates): it runs in
    float between dequantize and quantize, info lists it with the reason, and the result stays exact."""
    nodes = [
        oh.make_node("Conv", ["x", "W1", "B1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        oh.make_node("Resize", ["a", "", "scales"], ["r"], mode="linear"),
        oh.make_node("Conv", ["r", "W2", "B2"], ["y"], kernel_shape=[1, 1]),
    ]
    model = make_model(nodes, [("x", ["N", 3, 6, 6])], [("y", ["N", 2, 12, 12])],
                       {"W1": _w(4, 3, 3, 3), "B1": _w(4), "W2": _w(2, 4, 1, 1), "B2": _w(2),
                        "scales": np.array([1, 1, 2, 2], np.float32)})
    _, info, _, _, heavy = _compile_and_check(model, {"x": _data((3, 6, 6))}, {"x": _data((3, 6, 6), 4)},
                                              tmp_path, target)
    _assert_integer(heavy, 2)
    assert [f["op"] for f in info["float_fallback"]] == ["image.resize2d"], info["float_fallback"]
    assert all(f["reason"] for f in info["float_fallback"])


def test_runner_batches_static_and_dynamic_builds(tmp_path, target, fashion_paths, fashion_calib):
    q = compile_quiet(str(fashion_paths[0]), fashion_calib).qdq_model
    x = {"input": fashion_calib["input"][:7]}
    ref = ort_backend.make_session(q, optimize=False).run(None, x)[0]    # the QDQ semantics
    info = tvm_backend.build(q, target, tmp_path / "static")
    assert info["static_batch"] and info["inputs"][0]["shape"][0] == 1
    r = tvm_backend.Runner(tmp_path / "static")
    tol = 1e-5 * np.abs(ref).max()      # the float logits: float32 rounding of the last multiply
    np.testing.assert_allclose(r.run(x)[0], ref, rtol=0, atol=tol)    # 7 samples through a batch-1 library
    info = tvm_backend.build(q, target, tmp_path / "dyn", batch=None)
    assert not info["static_batch"] and info["inputs"][0]["shape"][0] == "batch"
    np.testing.assert_allclose(tvm_backend.Runner(tmp_path / "dyn").run(x)[0], ref, rtol=0, atol=tol)
    with pytest.raises(QccError, match="missing input"):
        r.run({"nope": x["input"]})
    with pytest.raises(QccError, match="shape"):
        r.run({"input": x["input"][:, :, :20]})


def test_dynamic_spatial_dims_need_input_shapes(tmp_path, target):
    nodes = [oh.make_node("Conv", ["x", "W"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", ["N", 2, "H", "W"])], [("y", ["N", 3, "H", "W"])], {"W": _w(3, 2, 3, 3)})
    q = compile_quiet(model, {"x": _data((2, 8, 8))}).qdq_model
    with pytest.raises(QccError, match="input_shapes"):
        tvm_backend.build(q, target, tmp_path)
    tvm_backend.build(q, target, tmp_path, input_shapes={"x": ["batch", 2, 8, 10]})
    x = {"x": _data((2, 8, 10), 2)}
    got = tvm_backend.Runner(tmp_path).run(x)[0]
    assert verify.end_to_end(q, [got], x)["y"]["within_step"] == 1.0


def test_dynamic_batch_keeps_the_packed_kernels_and_checks_ranges(tmp_path, target, fashion_paths, fashion_calib):
    """batch=None: one library for batch 1..32, through the same packed int8 kernels as a static build,
    equal to onnxruntime on the QDQ graph; a batch outside the declared range is refused by name."""
    q = compile_quiet(str(fashion_paths[0]), fashion_calib).qdq_model
    info = tvm_backend.build(q, target, tmp_path, batch=None, ranges={"batch": [1, 32]})
    assert info["dynamic"] == {"batch": [1, 32]} and not info["static_batch"]
    static = tvm_backend.build(q, target, tmp_path / "static")
    if static["cpu_schedule"].get("kernels"):     # hosts with packed kernels: the dynamic build has them too
        assert info["cpu_schedule"]["kernels"] == static["cpu_schedule"]["kernels"]
    r, rs = tvm_backend.Runner(tmp_path), tvm_backend.Runner(tmp_path / "static")
    for b in (1, 5, 32):
        x = {"input": fashion_calib["input"][:b]}
        got = r.run(x)[0]
        assert got.shape[0] == b
        np.testing.assert_array_equal(got, rs.run(x)[0])     # bit for bit the static build, run in chunks
    x = {"input": fashion_calib["input"][:7]}
    ref = ort_backend.make_session(q, optimize=False).run(None, x)[0]    # and the QDQ semantics
    np.testing.assert_allclose(r.run(x)[0], ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(QccError, match=r"'input' axis 0 \(batch\) is 33; this build takes 1..32"):
        r.run({"input": np.concatenate([fashion_calib["input"]] * 2)[:33]})


def test_dense_over_a_symbolic_sequence_is_the_static_build(tmp_path, target):
    """MatMul + bias + GELU-free epilogue over [batch, sequence, K] with both dims symbolic, K not a
    multiple of 4 and N not of 16: every fused function gets its schedule rule (none falls back to
    TVM's unscheduled code, as the VNNI dense did under a row-tail predicate: 100x slower), and each
    sequence length gives bit for bit what a static build of that shape gives."""
    nodes = [oh.make_node("MatMul", ["x", "W1"], ["m"]), oh.make_node("Add", ["m", "B1"], ["h"]),
             oh.make_node("Relu", ["h"], ["r"]), oh.make_node("MatMul", ["r", "W2"], ["y"])]
    model = make_model(nodes, [("x", ["N", "S", 30])], [("y", ["N", "S", 20])],
                       {"W1": _w(30, 40), "B1": _w(40), "W2": _w(40, 20)})
    q = compile_quiet(model, {"x": _data((6, 30))}).qdq_model
    info = tvm_backend.build(q, target, tmp_path, batch=None)
    assert set(info["dynamic"]) == {"batch", "S"}, info["dynamic"]
    assert "failed" not in info["cpu_schedule"].get("functions", {}), info["cpu_schedule"]
    r = tvm_backend.Runner(tmp_path)
    for shape in ((1, 1), (2, 5), (1, 8)):
        x = {"x": _data((shape[1], 30), shape[0])}
        static = tvm_backend.build(q, target, tmp_path / f"s{shape}", input_shapes={"x": [*shape, 30]},
                                   batch=shape[0])
        assert "failed" not in static["cpu_schedule"].get("functions", {}), static["cpu_schedule"]
        got = r.run(x)[0]
        np.testing.assert_array_equal(got, tvm_backend.Runner(tmp_path / f"s{shape}").run(x)[0])
        assert verify.end_to_end(q, [got], x)["y"]["within_step"] >= 0.999


def test_symbolic_image_size_one_library_for_two_sizes(tmp_path, target):
    """A fully convolutional graph with symbolic H, W (stride-1 and stride-2 convs, a residual add, a
    depthwise conv), every fused function scheduled by its rule: one build runs 8x8 and 12x10 inputs within one quantization step of onnxruntime on the QDQ graph."""
    nodes = [oh.make_node("Conv", ["x", "W1", "B1"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("Relu", ["a"], ["r"]),
             oh.make_node("Conv", ["r", "W2", "B2"], ["b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             oh.make_node("Add", ["a", "b"], ["s"]),
             oh.make_node("Conv", ["s", "Wd", "Bd"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16),
             oh.make_node("Conv", ["d", "W3", "B3"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])]
    model = make_model(nodes, [("x", ["N", 3, "H", "W"])], [("y", ["N", 16, "h", "w"])],
                       {"W1": _w(16, 3, 3, 3), "B1": _w(16), "W2": _w(16, 16, 3, 3), "B2": _w(16),
                        "Wd": _w(16, 1, 3, 3), "Bd": _w(16), "W3": _w(16, 16, 3, 3), "B3": _w(16)})
    q = compile_quiet(model, {"x": _data((3, 8, 8))}).qdq_model
    info = tvm_backend.build(q, target, tmp_path, batch=None)
    assert set(info["dynamic"]) == {"batch", "H", "W"}, info["dynamic"]
    assert "failed" not in info["cpu_schedule"].get("functions", {}), info["cpu_schedule"]
    r = tvm_backend.Runner(tmp_path)
    for shape in ((1, 3, 8, 8), (2, 3, 12, 10)):
        x = {"x": _data(shape[1:], shape[0])}
        got = r.run(x)[0]
        assert got.shape == (shape[0], 16, (shape[2] + 1) // 2, (shape[3] + 1) // 2)
        assert verify.end_to_end(q, [got], x)["y"]["within_step"] == 1.0


def test_docs_snippet_loads_model_so_with_plain_tvm(tmp_path, target, fashion_paths, fashion_calib):
    """The code block in docs/tvm.md runs with only numpy + tvm and reproduces the Runner's output."""
    import ast
    import re
    import subprocess
    import sys
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "tvm.md").read_text()
    snippet = re.search(r"<!-- plain-tvm-snippet -->\s*```python\n(.*?)```", doc, re.S).group(1)
    assert "qcc" not in snippet
    q = compile_quiet(str(fashion_paths[0]), fashion_calib).qdq_model
    tvm_backend.build(q, target, tmp_path / "build")
    x = fashion_calib["input"][:1]
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    want = tvm_backend.Runner(tmp_path / "build").run({"input": x})[0]
    assert np.array_equal(np.array(printed["logits"]), want.round(3))
