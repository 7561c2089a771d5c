"""Scales / zero points (range_to_qparams, weight_scales) and the quantize / dequantize arithmetic,
checked against onnxruntime's QuantizeLinear / DequantizeLinear and ml_dtypes."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from conftest import make_model, session
from qcc.qparams import dequantize_values, quantize_values, range_to_qparams, weight_scales
from qcc.qtypes import QType

EPS32 = float(np.finfo(np.float32).eps)
ONNX_TYPE = {QType.UINT8: TP.UINT8, QType.INT8: TP.INT8, QType.INT4: TP.INT4, QType.INT32: TP.INT32,
             QType.FP8_E4M3: TP.FLOAT8E4M3FN, QType.FP8_E5M2: TP.FLOAT8E5M2}
OPSET = {QType.UINT8: 13, QType.INT8: 13, QType.INT4: 21, QType.FP8_E4M3: 19, QType.FP8_E5M2: 19}
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------
# onnxruntime reference
# ---------------------------------------------------------------------------------------------

def _ort_qdq(x: np.ndarray, scale, zero_point, qtype: QType, axis: int | None):
    """(q as returned by ORT or None when numpy can't hold it, dequantized x) from ORT."""
    scale = np.asarray(scale, np.float32)
    zp = np.asarray(zero_point).astype(qtype.numpy_dtype)
    vals = zp.astype(np.float32 if qtype.is_float else np.int64).reshape(-1).tolist()
    z = oh.make_tensor("z", ONNX_TYPE[qtype], list(zp.shape), vals)
    kw = {} if axis is None else {"axis": axis}
    nodes = [oh.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **kw),
             oh.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **kw)]
    outputs = [("y", list(x.shape))]
    want_q = qtype in (QType.UINT8, QType.INT8, QType.FP8_E4M3)
    if want_q:
        outputs.append(("q", list(x.shape), ONNX_TYPE[qtype]))
    model = make_model(nodes, [("x", list(x.shape))], outputs, opset=OPSET[qtype])
    model.graph.initializer.extend([nh.from_array(scale, "s"), z])
    res = session(model, optimize=False).run(None, {"x": x})
    return (res[1] if want_q else None), res[0]


def _same_float(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal float arrays (distinguishes -0 from +0)."""
    a = np.ascontiguousarray(a, np.float32)
    b = np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _tie_data(rng, shape, scale, zp, qtype, axis):
    """Random values, exact ties x = (k + 0.5) * s, and values far outside the range (saturation)."""
    s = np.asarray(scale, np.float32)
    z = np.asarray(zp, np.float64)
    if axis is not None:
        bshape = [1] * len(shape)
        bshape[axis] = -1
        s, z = s.reshape(bshape), z.reshape(bshape)
    lo_k, hi_k = qtype.qmin - 12, qtype.qmax + 12
    k = rng.integers(lo_k, hi_k, size=shape) - np.rint(z)
    ties = ((k + 0.5) * s).astype(np.float32)
    rand = (rng.uniform(lo_k, hi_k, size=shape) - z) * s
    pick = rng.random(shape)
    x = np.where(pick < 0.5, ties, rand).astype(np.float32)
    x.reshape(-1)[:4] = [1e9, -1e9, 0.0, -0.0]
    return x


# ---------------------------------------------------------------------------------------------
# quantize_values / dequantize_values == onnxruntime, bit for bit
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qtype,zp", [(QType.UINT8, 113), (QType.INT8, -7), (QType.INT8, 0), (QType.UINT8, 0)])
@pytest.mark.parametrize("scale", [0.0173, 0.0625, 3.7e-4])
def test_integer_per_tensor_matches_ort(qtype, zp, scale):
    rng = np.random.default_rng(abs(zp) + int(scale * 1e4))
    s = np.float32(scale)
    x = _tie_data(rng, (4000,), s, zp, qtype, None)
    q_ort, y_ort = _ort_qdq(x, s, zp, qtype, None)
    q = quantize_values(x, s, zp, qtype)
    assert q.dtype == qtype.numpy_dtype
    assert np.array_equal(q, q_ort), f"{np.sum(q != q_ort)} codes differ from onnxruntime"
    assert _same_float(dequantize_values(q, s, zp), y_ort)
    # the ties really are ties and round to even
    exact = np.float32(x[4:]) / s
    tie = np.abs(exact - np.floor(exact) - 0.5) == 0
    assert tie.sum() > 500
    inside = tie & (np.rint(exact) + zp >= qtype.qmin) & (np.rint(exact) + zp <= qtype.qmax)
    assert np.all((q[4:][inside].astype(np.int64) - zp) % 2 == 0)


@pytest.mark.parametrize("qtype", [QType.UINT8, QType.INT8])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_integer_per_axis_matches_ort(qtype, axis):
    rng = np.random.default_rng(10 + axis)
    shape = (6, 5, 7)
    n = shape[axis]
    scale = rng.uniform(1e-3, 0.2, size=n).astype(np.float32)
    zp = rng.integers(qtype.qmin, qtype.qmax + 1, size=n) if qtype == QType.UINT8 else rng.integers(-20, 20, size=n)
    x = _tie_data(rng, shape, scale, zp, qtype, axis)
    q_ort, y_ort = _ort_qdq(x, scale, zp, qtype, axis)
    q = quantize_values(x, scale, zp, qtype, axis=axis)
    assert np.array_equal(q, q_ort)
    assert _same_float(dequantize_values(q, scale, zp, axis=axis), y_ort)


def test_int4_per_axis_matches_ort():
    rng = np.random.default_rng(4)
    scale = rng.uniform(0.01, 0.1, size=6).astype(np.float32)
    zp = np.zeros(6, np.int64)
    x = _tie_data(rng, (6, 40), scale, zp, QType.INT4, 0)
    _, y_ort = _ort_qdq(x, scale, zp, QType.INT4, 0)
    q = quantize_values(x, scale, zp, QType.INT4, axis=0)
    assert q.dtype == ml_dtypes.int4
    assert _same_float(dequantize_values(q, scale, zp, axis=0), y_ort)


def _fp8_grid_data(rng, dtype, scale):
    """Every finite FP8 value, every midpoint between neighbours (ties), random values, and values
    beyond the largest finite one (saturation), all times `scale`."""
    grid = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    grid = np.unique(grid[np.isfinite(grid)])
    mids = ((grid[:-1].astype(np.float64) + grid[1:]) / 2).astype(np.float32)
    fmax = float(grid.max())
    extra = np.array([fmax * 1.01, -fmax * 1.01, fmax * 1e3, -fmax * 1e3, fmax * 1.0625, 1e-30, -1e-30],
                     np.float32)
    rand = (rng.standard_normal(3000) * fmax / 8).astype(np.float32)
    return (np.concatenate([grid, mids, extra, rand]).astype(np.float64) * scale).astype(np.float32)


@pytest.mark.parametrize("qtype", [QType.FP8_E4M3, QType.FP8_E5M2])
@pytest.mark.parametrize("scale", [0.25, 0.0173])
def test_fp8_per_tensor_matches_ort(qtype, scale):
    rng = np.random.default_rng(7)
    s = np.float32(scale)
    x = _fp8_grid_data(rng, qtype.numpy_dtype, s)
    q_ort, y_ort = _ort_qdq(x, s, 0.0, qtype, None)
    q = quantize_values(x, s, 0, qtype)
    assert q.dtype == qtype.numpy_dtype
    assert not np.isnan(q.astype(np.float32)).any(), "saturating quantization must never produce NaN"
    if q_ort is not None:  # ORT hands FP8 E4M3 back as raw bytes
        assert np.array_equal(q.view(np.uint8), q_ort.view(np.uint8))
    assert _same_float(dequantize_values(q, s, 0), y_ort)
    # saturation: far outside the range clips to the largest finite value
    fmax = float(ml_dtypes.finfo(qtype.numpy_dtype).max)
    big = quantize_values(np.array([1e30, -1e30], np.float32), s, 0, qtype).astype(np.float32)
    assert big.tolist() == [fmax, -fmax]


@pytest.mark.parametrize("qtype", [QType.FP8_E4M3, QType.FP8_E5M2])
def test_fp8_per_axis_matches_ort(qtype):
    rng = np.random.default_rng(8)
    scale = rng.uniform(1e-3, 1.0, size=5).astype(np.float32)
    fmax = float(ml_dtypes.finfo(qtype.numpy_dtype).max)
    x = (rng.standard_normal((3, 5, 64)) * fmax / 4 * scale.reshape(1, 5, 1)).astype(np.float32)
    x[0, :, 0] = 2 * fmax * scale  # saturating per channel
    _, y_ort = _ort_qdq(x, scale, np.zeros(5), qtype, 1)
    q = quantize_values(x, scale, np.zeros(5), qtype, axis=1)
    assert _same_float(dequantize_values(q, scale, np.zeros(5), axis=1), y_ort)


def test_fp8_rounding_matches_ml_dtypes_round_to_nearest_even():
    # x / s is the exact value in float32; ml_dtypes' cast is round-to-nearest-even.
    rng = np.random.default_rng(9)
    for dtype in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        qtype = QType.FP8_E4M3 if dtype is ml_dtypes.float8_e4m3fn else QType.FP8_E5M2
        v = (rng.standard_normal(5000) * 30).astype(np.float32)
        s = np.float32(0.5)
        expect = np.clip(v / s, qtype.qmin, qtype.qmax).astype(dtype)
        assert np.array_equal(quantize_values(v, s, 0, qtype).view(np.uint8), expect.view(np.uint8))


def test_narrow_range_drops_qmin():
    x = np.array([-10.0, -1.0, 0.0, 1.0, 10.0], np.float32)
    q = quantize_values(x, np.float32(0.01), 0, QType.INT8, narrow=True)
    assert q.tolist() == [-127, -100, 0, 100, 127]
    q4 = quantize_values(x, np.float32(0.1), 0, QType.INT4, narrow=True)
    assert q4.astype(np.int8).tolist() == [-7, -7, 0, 7, 7]


# ---------------------------------------------------------------------------------------------
# range_to_qparams
# ---------------------------------------------------------------------------------------------

def _max_roundtrip_error(lo, hi, scale, zp, qtype, n=2001):
    x = np.linspace(lo, hi, n).astype(np.float32)
    x = np.clip(x, np.float32(lo), np.float32(hi))
    y = dequantize_values(quantize_values(x, scale, zp, qtype), scale, zp)
    return float(np.abs(y.astype(np.float64) - x).max()), float(np.abs(x).max())


def test_asymmetric_uint8_exact_values():
    s, z = range_to_qparams(-1.0, 3.0, QType.UINT8, symmetric=False)
    assert isinstance(z, int)
    assert s == np.float32(4.0 / 255)
    assert z == 64  # round(0 - (-1) / (4/255)) = round(63.75)
    assert dequantize_values(quantize_values(np.float32(0.0), s, z, QType.UINT8), s, z) == 0.0


def test_range_always_includes_zero():
    # a strictly positive range is widened to [0, hi]: zero point 0, hi at code 255
    s, z = range_to_qparams(2.0, 5.0, QType.UINT8, symmetric=False)
    assert z == 0 and s == np.float32(5.0 / 255)
    s, z = range_to_qparams(-5.0, -2.0, QType.UINT8, symmetric=False)
    assert z == 255 and s == np.float32(5.0 / 255)


def test_symmetric_int8():
    s, z = range_to_qparams(-0.5, 2.0, QType.INT8, symmetric=True)
    assert z == 0
    assert s == np.float32(2.0 / 127.5)
    s2, _ = range_to_qparams(-2.0, 0.5, QType.INT8, symmetric=True)
    assert s2 == s  # only the larger magnitude matters


def test_uint8_symmetric():
    s, z = range_to_qparams(-1.0, 2.0, QType.UINT8, symmetric=True)
    assert z == 128 and s == np.float32(2.0 / 127.5)
    # a non-negative tensor (e.g. ReLU output) uses the whole unsigned range with zero point 0
    s, z = range_to_qparams(0.0, 2.0, QType.UINT8, symmetric=True)
    assert z == 0 and s == np.float32(2.0 / 255)


@pytest.mark.parametrize("qtype", [QType.FP8_E4M3, QType.FP8_E5M2])
def test_fp8_qparams(qtype):
    s, z = range_to_qparams(-3.0, 1.5, qtype, symmetric=True)
    assert z == 0
    assert s == np.float32(3.0 / qtype.qmax)
    # the absmax maps exactly onto the largest finite FP8 value, nothing saturates early
    q = quantize_values(np.array([-3.0, 1.5], np.float32), s, z, qtype).astype(np.float32)
    assert q[0] == -float(ml_dtypes.finfo(qtype.numpy_dtype).max)


@pytest.mark.parametrize("qtype,sym", [(QType.UINT8, False), (QType.INT8, True), (QType.UINT8, True),
                                       (QType.FP8_E4M3, True)])
def test_power_of_two(qtype, sym):
    for lo, hi in [(-0.3, 1.7), (-5.0, 0.1), (0.0, 0.013), (-1000.0, 999.0)]:
        s_plain, _ = range_to_qparams(lo, hi, qtype, sym)
        s, z = range_to_qparams(lo, hi, qtype, sym, power_of_two=True)
        log2 = np.log2(float(s))
        assert log2 == np.round(log2), f"{s} is not a power of two"
        assert s_plain <= s < 2 * s_plain
        if not qtype.is_float:
            assert qtype.qmin <= z <= qtype.qmax
            err, _ = _max_roundtrip_error(lo, hi, s, z, qtype)
            assert err <= s / 2 * (1 + 1e-4)


@pytest.mark.parametrize("qtype,sym", [(QType.UINT8, False), (QType.INT8, True), (QType.UINT8, True),
                                       (QType.FP8_E4M3, True), (QType.INT4, True)])
def test_degenerate_range(qtype, sym):
    s, z = range_to_qparams(0.0, 0.0, qtype, sym)
    assert np.isfinite(s) and s > 0
    assert dequantize_values(quantize_values(np.zeros(3, np.float32), s, z, qtype), s, z).tolist() == [0, 0, 0]


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)


@HYP
@given(lo=finite, hi=finite, qsym=st.sampled_from([(QType.UINT8, False), (QType.INT8, True),
                                                   (QType.UINT8, True), (QType.INT8, False),
                                                   (QType.INT4, True)]),
       po2=st.booleans())
def test_roundtrip_error_within_half_step(lo, hi, qsym, po2):
    qtype, sym = qsym
    lo, hi = min(lo, hi), max(lo, hi)
    assume(hi - lo > 1e-3)
    s, z = range_to_qparams(lo, hi, qtype, sym, power_of_two=po2)
    assert qtype.qmin <= z <= qtype.qmax
    # zero is exactly representable (padding, ReLU zeros)
    assert dequantize_values(quantize_values(np.float32(0), s, z, qtype), s, z) == 0
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    err, amax = _max_roundtrip_error(lo0, hi0, s, z, qtype)
    assert err <= float(s) / 2 + 8 * EPS32 * amax, (err, float(s))


@HYP
@given(lo=finite, hi=finite, qtype=st.sampled_from([QType.FP8_E4M3, QType.FP8_E5M2]))
def test_fp8_roundtrip_relative_error(lo, hi, qtype):
    lo, hi = min(lo, hi), max(lo, hi)
    assume(max(-lo, hi) > 1e-3)
    s, z = range_to_qparams(lo, hi, qtype, True)
    x = np.linspace(min(lo, 0.0), max(hi, 0.0), 1001).astype(np.float32)
    y = dequantize_values(quantize_values(x, s, z, qtype), s, z).astype(np.float64)
    mant = 3 if qtype == QType.FP8_E4M3 else 2
    tiny = float(ml_dtypes.finfo(qtype.numpy_dtype).smallest_subnormal)
    bound = np.maximum(np.abs(x) * 2.0 ** -(mant + 1), tiny / 2 * float(s)) * (1 + 1e-5)
    assert np.all(np.abs(y - x) <= bound)


# ---------------------------------------------------------------------------------------------
# weight_scales
# ---------------------------------------------------------------------------------------------

def test_weight_scales_per_channel_conv():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * rng.uniform(0.01, 3, size=(8, 1, 1, 1)).astype(np.float32)
    w[3] = 0.0  # a dead channel
    s = weight_scales(w, QType.INT8, axis=0)
    assert s.shape == (8,) and s.dtype == np.float32
    expect = np.abs(w).max(axis=(1, 2, 3)) / np.float32(127)
    live = np.arange(8) != 3
    np.testing.assert_allclose(s[live], expect[live], rtol=1e-7)
    assert s[3] == s[live].max()  # a dead channel borrows the largest live scale (keeps its bias resolution)
    q = quantize_values(w, s, 0, QType.INT8, axis=0, narrow=True).astype(np.int32)
    assert q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q[live]).max(axis=(1, 2, 3)) == 127)  # each live channel uses its full range
    assert np.all(q[3] == 0)
    err = np.abs(dequantize_values(q.astype(np.int8), s, 0, axis=0) - w)
    assert np.all(err <= s.reshape(-1, 1, 1, 1) / 2 * (1 + 1e-5))


def test_weight_scales_other_axes_and_types():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((16, 10)).astype(np.float32)
    s1 = weight_scales(w, QType.INT8, axis=1)
    np.testing.assert_allclose(s1, np.abs(w).max(axis=0) / 127, rtol=1e-7)
    st_ = weight_scales(w, QType.INT8, axis=None)
    assert st_.shape == () and st_ == np.float32(np.abs(w).max() / np.float32(127))
    np.testing.assert_allclose(weight_scales(w, QType.INT4, axis=0), np.abs(w).max(axis=1) / 7, rtol=1e-7)
    np.testing.assert_allclose(weight_scales(w, QType.FP8_E4M3, axis=0), np.abs(w).max(axis=1) / 448, rtol=1e-7)
    p2 = weight_scales(w, QType.INT8, axis=0, power_of_two=True)
    plain = weight_scales(w, QType.INT8, axis=0)
    assert np.all(np.log2(p2) == np.round(np.log2(p2))) and np.all((p2 >= plain) & (p2 < 2 * plain))
