"""Range (clipping) selection from calibration statistics: minmax, percentile, entropy (KL), MSE.

Each method maps a tensor's `TensorStats` and its target type to a clipping range [lo, hi] with
lo <= 0 <= hi (zero must be exactly representable: padding and ReLU outputs are zeros).

16-bit types (int16 activations, W8A16): the histogram has HIST_BINS = 4096 bins over [-R, R], 16x
coarser than int16's 65536 levels, so a bin center says nothing about its samples' rounding error.
There, "mse" scores each candidate range by its clipping error on the histogram plus the uniform
rounding noise step^2 / 12 of every sample inside it (resolution-independent), and "entropy" is
minmax (a KL search over 32768 levels on 2048 bins per side cannot resolve a threshold; it already
returned the full range). "percentile" is unchanged (a tail mass, whatever the type).
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
        if qtype.bits <= 8:
            lo, hi = _entropy_range(stats, qtype, symmetric, lo, hi)
    elif method == "mse":
        lo, hi = (_mse if qtype.bits <= 8 else _mse_fine)(stats, qtype, symmetric, lo, hi)
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


def _entropy_range(stats: TensorStats, qtype: QType, symmetric: bool, lo: float, hi: float) -> tuple[float, float]:
    """KL calibration per side: a symmetric type clips |x| once; an asymmetric one clips the positive
    and the negative tail separately (a lopsided tensor keeps its long side)."""
    half = HIST_BINS // 2
    width = stats.hist_range / half
    pos, neg = stats.hist[half:], stats.hist[:half][::-1]
    if qtype.is_float or qtype == QType.INT4:
        levels = 16 if qtype == QType.INT4 else 128
    else:
        levels = 128 if (symmetric or (lo < 0 < hi)) else 256
    if symmetric:
        t = _kl_threshold(pos + neg, levels) * width
        return max(lo, -t), min(hi, t)
    new_hi = min(hi, _kl_threshold(pos, levels) * width) if hi > 0 else hi
    new_lo = max(lo, -_kl_threshold(neg, levels) * width) if lo < 0 else lo
    return new_lo, new_hi


def _kl_threshold(hist: np.ndarray, levels: int) -> int:
    """TensorRT's entropy calibration on a one-sided histogram: the number of bins i whose clipped
    reference P (outliers piled into bin i-1) is closest in KL to its `levels`-level quantization Q.
    Bin 0 (exact zeros: ReLU outputs, padding) is its own level, never smeared into neighbours; P and
    Q are smoothed so empty bins don't make every candidate infinite."""
    nz = np.nonzero(hist)[0]
    if nz.size == 0:
        return 1
    last = int(nz[-1]) + 1
    if last <= levels:
        return last
    hist = hist.astype(np.float64)
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    best_kl, best_i = np.inf, last
    step = max(1, (last - levels) // 256)  # <= 256 candidates keeps this O(bins * 256)
    for i in range(levels, last + 1, step):
        p = hist[:i].copy()
        if i < hist.size:
            p[i - 1] += tail[i]
        # levels-1 contiguous chunks of bins 1..i-1; each chunk's mass spread over its non-empty bins
        bounds = 1 + (np.arange(levels) * (i - 1)) // (levels - 1)
        body = hist[1:i]
        filled = body > 0
        sums = np.add.reduceat(body, bounds[:-1] - 1)
        counts = np.add.reduceat(filled.astype(np.float64), bounds[:-1] - 1)
        q = np.empty(i)
        q[0] = hist[0]
        q[1:] = np.repeat(sums / np.maximum(counts, 1), np.diff(bounds)) * filled
        kl = _kl(_smooth(p), _smooth(q))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return best_i


def _smooth(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    p = p / max(p.sum(), 1e-30)
    zero = p == 0
    n_zero, n_nonzero = int(zero.sum()), int(p.size - zero.sum())
    if n_zero == 0 or n_nonzero == 0:
        return p
    return np.maximum(p + eps * zero - (eps * n_zero / n_nonzero) * ~zero, 1e-12)


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


def _alpha_search(stats: TensorStats, symmetric: bool, lo: float, hi: float, error) -> tuple[float, float]:
    """[lo, hi] * alpha for the alpha in [0.2, 1] (81 steps) with the smallest
    error(bin centers, counts, a_lo, a_hi) over the histogram's non-empty bins."""
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
        err = error(centers, counts, a_lo, a_hi)
        if err < best:
            best, best_alpha = err, alpha
    return lo * best_alpha, hi * best_alpha


def _mse(stats: TensorStats, qtype: QType, symmetric: bool, lo: float, hi: float) -> tuple[float, float]:
    """Shrink [lo, hi] by a factor alpha in [0.2, 1] minimizing the histogram-weighted squared error
    of round-to-nearest fake quantization (bin centers stand for their samples)."""
    return _alpha_search(stats, symmetric, lo, hi, lambda c, n, a_lo, a_hi:
                         np.sum(n * (fake_quantize(c, a_lo, a_hi, qtype) - c) ** 2))


def _mse_fine(stats: TensorStats, qtype: QType, symmetric: bool, lo: float, hi: float) -> tuple[float, float]:
    """_mse for types finer than the histogram (int16): candidate [lo, hi] * alpha scored by
    sum_bins count * (clip(c) - c)^2 (the clipped samples' error at their bin centers) plus
    n_inside * step^2 / 12 (round-to-nearest noise of the samples in range, step from range_to_qparams)."""
    from .qparams import range_to_qparams

    def error(c, n, a_lo, a_hi):
        scale, _ = range_to_qparams(a_lo, a_hi, qtype, symmetric)
        clipped = np.clip(c, a_lo, a_hi)
        return np.sum(n * (clipped - c) ** 2) + n[clipped == c].sum() * float(scale) ** 2 / 12.0

    return _alpha_search(stats, symmetric, lo, hi, error)


def fake_quantize(x: np.ndarray, lo: float, hi: float, qtype: QType) -> np.ndarray:
    """Quantize-dequantize x with the grid a [lo, hi] range gives on qtype (for range search only)."""
    from .qparams import range_to_qparams, quantize_values, dequantize_values

    scale, zp = range_to_qparams(lo, hi, qtype, symmetric=(lo == -hi))
    return dequantize_values(quantize_values(x, scale, zp, qtype), scale, zp)
