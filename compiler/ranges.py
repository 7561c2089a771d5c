"""Range (clipping) selection from calibration statistics: minmax, percentile, entropy (KL), MSE.

Each method maps a tensor's `TensorStats` and its target type to a clipping range [lo, hi] with
lo <= 0 <= hi (zero must be exactly representable: padding and ReLU outputs are zeros).
"""

from __future__ import annotations

import numpy as np

from .qtypes import QType
from .statistics import HIST_BINS, TensorStats


def select_range(stats: TensorStats, method: str, qtype: QType, symmetric: bool,
                 percentile: float = 99.999) -> tuple[float, float]:
    lo, hi = min(stats.min, 0.0), max(stats.max, 0.0)
    if not np.isfinite(lo) or not np.isfinite(hi):
        lo, hi = _finite_extent(stats)
    if stats.count == 0 or hi - lo <= 0:
        return 0.0, max(hi, 1e-8)
    if method == "minmax":
        pass
    elif method == "percentile":
        lo, hi = _percentile(stats, percentile, symmetric, lo, hi)
    elif method == "entropy":
        lo, hi = _scale_to(lo, hi, _entropy_threshold(stats, qtype, nonnegative=lo >= 0))
    elif method == "mse":
        lo, hi = _mse(stats, qtype, symmetric, lo, hi)
    else:
        raise ValueError(method)
    if symmetric:
        m = max(-lo, hi)
        lo, hi = (-m, m) if lo < 0 or not qtype_is_unsigned(qtype) else (0.0, m)
    return float(lo), float(hi)


def qtype_is_unsigned(qtype: QType) -> bool:
    return qtype == QType.UINT8


def _finite_extent(stats: TensorStats) -> tuple[float, float]:
    nz = np.nonzero(stats.hist)[0]
    if nz.size == 0:
        return 0.0, 1e-8
    edges = stats.bin_edges
    return min(float(edges[nz[0]]), 0.0), max(float(edges[nz[-1] + 1]), 0.0)


def _scale_to(lo: float, hi: float, threshold: float) -> tuple[float, float]:
    """Clip the range to |x| <= threshold on each side that reaches beyond it."""
    return max(lo, -threshold), min(hi, threshold)


def _percentile(stats: TensorStats, p: float, symmetric: bool, lo: float, hi: float) -> tuple[float, float]:
    edges = stats.bin_edges
    if symmetric or lo >= 0:
        hist, width = stats.abs_histogram()
        cdf = np.cumsum(hist) / max(hist.sum(), 1)
        t = (int(np.searchsorted(cdf, p / 100.0)) + 1) * width
        return _scale_to(lo, hi, t)
    cdf = np.cumsum(stats.hist) / max(stats.hist.sum(), 1)
    tail = (100.0 - p) / 100.0 / 2
    new_lo = float(edges[int(np.searchsorted(cdf, tail))])
    new_hi = float(edges[min(int(np.searchsorted(cdf, 1 - tail)) + 1, HIST_BINS)])
    return max(lo, min(new_lo, 0.0)), min(hi, max(new_hi, 0.0))


def _entropy_threshold(stats: TensorStats, qtype: QType, nonnegative: bool) -> float:
    """TensorRT's KL calibration on the |x| histogram: the threshold whose quantized distribution
    Q (levels bins merged and expanded back) is closest to the clipped reference P."""
    hist, width = stats.abs_histogram()
    levels = 256 if (nonnegative and qtype == QType.UINT8) else 128
    if qtype.is_float or qtype == QType.INT4:
        levels = 16 if qtype == QType.INT4 else 128
    nbins = hist.size
    last = int(np.nonzero(hist)[0][-1]) + 1 if hist.any() else nbins
    if last <= levels:
        return last * width
    best_kl, best_i = np.inf, last
    step = max(1, (last - levels) // 256)  # <= 256 candidates keeps this O(bins * 256)
    for i in range(levels, last + 1, step):
        # Bin 0 holds the exact zeros (ReLU outputs, padding); zero is exactly representable, so it
        # is its own level and never smeared into its neighbours.
        p = hist[:i].astype(np.float64).copy()
        p[i - 1] += hist[i:].sum()
        src = hist[:i].astype(np.float64)
        q = np.zeros(i)
        q[0] = src[0]
        for idx in np.array_split(np.arange(1, i), levels - 1):
            nz = src[idx] > 0
            if nz.any():
                q[idx[nz]] = src[idx].sum() / nz.sum()
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i * width


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    qs = q.sum()
    if qs == 0:
        return np.inf
    q = q / qs
    mask = p > 0
    if (q[mask] == 0).any():
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _mse(stats: TensorStats, qtype: QType, symmetric: bool, lo: float, hi: float) -> tuple[float, float]:
    """Shrink [lo, hi] by a factor alpha in [0.2, 1] minimizing the histogram-weighted squared error
    of round-to-nearest fake quantization (bin centers stand for their samples)."""
    edges = stats.bin_edges
    centers = 0.5 * (edges[:-1] + edges[1:])
    counts = stats.hist.astype(np.float64)
    nz = counts > 0
    centers, counts = centers[nz], counts[nz]
    best, best_alpha = np.inf, 1.0
    for alpha in np.linspace(0.2, 1.0, 81):
        a_lo, a_hi = lo * alpha, hi * alpha
        if symmetric:
            m = max(-a_lo, a_hi)
            a_lo, a_hi = (-m if a_lo < 0 else 0.0), m
        err = np.sum(counts * (fake_quantize(centers, a_lo, a_hi, qtype) - centers) ** 2)
        if err < best:
            best, best_alpha = err, alpha
    return lo * best_alpha, hi * best_alpha


def fake_quantize(x: np.ndarray, lo: float, hi: float, qtype: QType) -> np.ndarray:
    """Quantize-dequantize x with the grid a [lo, hi] range gives on qtype (for range search only)."""
    from .qparams import range_to_qparams, quantize_values, dequantize_values

    scale, zp = range_to_qparams(lo, hi, qtype, symmetric=(lo == -hi))
    return dequantize_values(quantize_values(x, scale, zp, qtype), scale, zp)
