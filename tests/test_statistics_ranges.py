"""Streaming statistics (TensorStats) and clipping-range selection (select_range)."""

from __future__ import annotations

import numpy as np
import pytest

from qcc.qparams import dequantize_values, quantize_values, range_to_qparams
from qcc.qtypes import QType
from qcc.ranges import select_range
from qcc.statistics import HIST_BINS, TensorStats, channel_axis


def _stream(x: np.ndarray, sizes) -> TensorStats:
    st = TensorStats()
    start = 0
    for n in sizes:
        st.update(x[start:start + n])
        start += n
    assert start == len(x)
    return st


def _batchings(n: int, rng) -> list[list[int]]:
    cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
    random = np.diff(np.concatenate([[0], cuts, [n]])).tolist()
    return [[n], [1] * n, random]


def _check_histogram(st: TensorStats, data: np.ndarray) -> None:
    """Counts are kept exactly and every value sits in its bin on the final grid, give or take one bin:
    the streamed CDF is within one bin of np.histogram's CDF on the same edges."""
    data = data[np.isfinite(data)].ravel()
    assert st.hist.sum() == data.size
    ref, _ = np.histogram(np.clip(data, -st.hist_range, st.hist_range), bins=st.bin_edges)
    c_st, c_ref = np.cumsum(st.hist), np.cumsum(ref)
    lower = np.concatenate([[0], c_ref[:-1]])
    upper = np.concatenate([c_ref[1:], [c_ref[-1]]])
    assert np.all(c_st >= lower) and np.all(c_st <= upper)
    assert st.hist_range >= np.abs(data).max()


@pytest.mark.parametrize("shape", [(48, 3, 5, 5), (40, 7, 6), (64, 9)])
def test_streaming_equals_one_shot(shape):
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 5, size=shape[channel_axis(len(shape))])
         .reshape([-1 if i == channel_axis(len(shape)) else 1 for i in range(len(shape))])).astype(np.float32)
    x[5] *= 40  # one batch element far larger than the rest: the histogram range must grow
    one = TensorStats()
    one.update(x)
    for sizes in _batchings(len(x), rng):
        st = _stream(x, sizes)
        assert st.min == one.min == float(x.min())
        assert st.max == one.max == float(x.max())
        assert st.count == x.size
        axis = channel_axis(x.ndim)
        expect = np.abs(x).max(axis=tuple(i for i in range(x.ndim) if i != axis))
        np.testing.assert_array_equal(st.channel_absmax, expect)
        if x.ndim == 3:
            tok = np.abs(x).max(axis=-1)
            assert st.tokens == tok.size
            assert st.token_absmax_max == pytest.approx(float(tok.max()), rel=0, abs=0)
            assert st.token_absmax_mean == pytest.approx(float(tok.astype(np.float64).mean()), rel=1e-6)
        _check_histogram(st, x)


def test_histogram_range_doubling_keeps_counts_and_bins():
    rng = np.random.default_rng(3)
    # growing magnitudes force many doublings; a zero-only first batch starts from a tiny range
    parts = [np.zeros(100, np.float32)] + [rng.standard_normal(5000).astype(np.float32) * 10.0**k
                                           for k in range(-3, 4)]
    st = TensorStats()
    for p in parts:
        st.update(p)
    data = np.concatenate(parts)
    _check_histogram(st, data)
    # zeros stay in the bin right above zero
    half = HIST_BINS // 2
    assert st.hist[half] >= 100
    # same data in one shot: identical counts per bin when the final range is the same
    one = TensorStats()
    one.update(data)
    _check_histogram(one, data)


def test_doubling_puts_values_in_right_bins():
    # hand-checkable: values at known positions, range doubled 3 times
    st = TensorStats()
    st.update(np.array([1.0, -1.0], np.float32))              # R = 1
    st.update(np.array([0.3, -0.3, 0.0], np.float32))
    st.update(np.array([7.9], np.float32))                     # R -> 8
    assert st.hist_range == 8.0
    width = 2 * st.hist_range / HIST_BINS
    for v in [1.0, -1.0, 0.3, -0.3, 0.0, 7.9]:
        idx = int(np.floor(v / width)) + HIST_BINS // 2
        idx = min(idx, HIST_BINS - 1)
        assert st.hist[max(idx - 1, 0):idx + 2].sum() >= 1, v
    assert st.hist.sum() == 6


def test_nonfinite_values_are_counted_not_ranged():
    st = TensorStats()
    st.update(np.array([0.5, -2.0, np.nan, 1.0], np.float32))
    st.update(np.array([np.inf, -np.inf, 3.0], np.float32))
    st.update(np.array([np.nan, np.nan], np.float32))
    st.update(np.array([-0.25], np.float32))
    assert st.nonfinite == 5
    assert st.count == 5
    assert st.hist.sum() == 5
    lo, hi = select_range(st, "minmax", QType.UINT8, False)
    # the range covers the finite data (to a bin width), not the +-inf sentinels
    width = 2 * st.hist_range / HIST_BINS
    assert -2.0 - width <= lo <= -2.0 and 3.0 <= hi <= 3.0 + width
    assert np.isfinite(lo) and np.isfinite(hi)


def test_nonfinite_batch_still_updates_channel_absmax():
    x = np.ones((2, 3, 4), np.float32)
    x[0, 0, 0] = -np.inf   # an attention-mask sentinel
    x[1, :, 2] = 9.0       # channel 2 peaks in the same batch
    st = TensorStats()
    st.update(x)
    np.testing.assert_array_equal(st.channel_absmax, [1.0, 1.0, 9.0, 1.0])


# ---------------------------------------------------------------------------------------------
# select_range
# ---------------------------------------------------------------------------------------------

def _stats(x: np.ndarray, batch: int = 50_000) -> TensorStats:
    st = TensorStats()
    for i in range(0, len(x), batch):
        st.update(x[i:i + batch])
    return st


def test_minmax_returns_observed_extremes_including_zero():
    st = _stats(np.array([-0.75, 0.5, 2.25], np.float32))
    assert select_range(st, "minmax", QType.UINT8, False) == (-0.75, 2.25)
    assert select_range(st, "minmax", QType.INT8, True) == (-2.25, 2.25)
    pos = _stats(np.array([0.5, 1.0, 2.5], np.float32))
    assert select_range(pos, "minmax", QType.UINT8, False) == (0.0, 2.5)
    assert select_range(pos, "minmax", QType.UINT8, True) == (0.0, 2.5)  # non-negative: unsigned range kept
    neg = _stats(np.array([-3.0, -1.0], np.float32))
    assert select_range(neg, "minmax", QType.UINT8, False) == (-3.0, 0.0)


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_gaussian(p):
    rng = np.random.default_rng(int(p * 100))
    x = rng.standard_normal(400_000).astype(np.float32) * 1.7
    st = _stats(x)
    ref = float(np.percentile(np.abs(x), p))
    lo, hi = select_range(st, "percentile", QType.INT8, True, percentile=p)
    assert lo == -hi
    assert abs(hi - ref) <= 0.02 * ref, (hi, ref)
    # asymmetric: each tail gets half the mass, so on symmetric data both ends match |x|'s percentile
    lo, hi = select_range(st, "percentile", QType.UINT8, False, percentile=p)
    assert abs(hi - ref) <= 0.02 * ref and abs(-lo - ref) <= 0.02 * ref, (lo, hi, ref)
    # non-negative data: the percentile of x itself
    r = np.abs(x)
    lo, hi = select_range(_stats(r), "percentile", QType.UINT8, False, percentile=p)
    assert lo == 0.0 and abs(hi - ref) <= 0.02 * ref


def _gaussian_with_outliers(n=1_000_000, outliers=(15.0, -15.0), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.choice(n, size=len(outliers), replace=False)] = outliers
    return x


def _mse_of(x, lo, hi, qtype):
    s, z = range_to_qparams(lo, hi, qtype, symmetric=(lo == -hi))
    y = dequantize_values(quantize_values(x, s, z, qtype), s, z)
    return float(np.mean((y.astype(np.float64) - x) ** 2))


def test_mse_threshold_with_outliers():
    x = _gaussian_with_outliers()
    st = _stats(x)
    lo, hi = select_range(st, "mse", QType.INT8, True)
    assert 2.0 <= hi <= 6.0 and lo == -hi, (lo, hi)
    # reference: brute-force MSE on the raw samples over symmetric thresholds
    grid = np.linspace(1.0, 15.0, 57)
    errs = [_mse_of(x, -t, t, QType.INT8) for t in grid]
    best = min(errs)
    assert 2.0 <= grid[int(np.argmin(errs))] <= 6.0  # the scenario is well posed
    assert _mse_of(x, lo, hi, QType.INT8) <= 1.05 * best
    # and far better than not clipping
    assert _mse_of(x, -15.0, 15.0, QType.INT8) > 2 * best


def test_mse_keeps_range_when_nothing_to_clip():
    x = np.random.default_rng(5).uniform(-1, 1, 200_000).astype(np.float32)
    lo, hi = select_range(_stats(x), "mse", QType.UINT8, False)
    # uniform data: clipping only adds error, the optimum is (almost) the full range
    assert lo <= -0.9 and hi >= 0.9


@pytest.mark.parametrize("n,outliers", [
    (100_000, (50.0,) * 3 + (-50.0,) * 2),
    (1_000_000, (15.0, -15.0)),
    (200_000, (30.0, -30.0, 30.0)),
    (200_000, (90.0, -90.0, 90.0, -90.0)),
])
def test_entropy_threshold_with_outliers(n, outliers):
    x = _gaussian_with_outliers(n, outliers, seed=n)
    lo, hi = select_range(_stats(x), "entropy", QType.INT8, True)
    assert 2.0 <= hi <= 6.0 and lo == -hi, (lo, hi)


@pytest.mark.parametrize("outlier", [20.0, 40.0])
def test_entropy_relu_like_data_uint8(outlier):
    # non-negative data with a few outliers (a ReLU output): unsigned levels, threshold in the bulk
    x = np.abs(_gaussian_with_outliers(300_000, (outlier,) * 3, seed=3))
    x[: len(x) // 2] = 0.0  # half exact zeros, as after a ReLU
    lo, hi = select_range(_stats(x), "entropy", QType.UINT8, False)
    assert lo == 0.0 and 2.0 <= hi <= 6.0, (lo, hi)


def test_entropy_asymmetric_lopsided_uint8():
    # like a normalized image: 70% background at -0.81, foreground spread over [0, 2]
    rng = np.random.default_rng(0)
    x = np.where(rng.random(300_000) < 0.7, -0.81, rng.uniform(0.0, 2.0, 300_000)).astype(np.float32)
    st = _stats(x)
    for method in ("minmax", "percentile", "mse"):  # the other methods keep the foreground
        assert select_range(st, method, QType.UINT8, False)[1] >= 1.9, method
    lo, hi = select_range(st, "entropy", QType.UINT8, False)
    assert lo <= -0.8 and hi >= 1.5, (lo, hi)


def test_empty_and_constant_stats_give_valid_range():
    st = TensorStats()
    for method in ("minmax", "percentile", "entropy", "mse"):
        lo, hi = select_range(st if method == "minmax" else _stats(np.zeros(10, np.float32)), method,
                              QType.UINT8, False)
        assert lo <= 0 <= hi and hi > lo
