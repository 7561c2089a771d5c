"""Streaming per-tensor statistics with bounded memory.

One `TensorStats` per calibrated tensor sees every calibration batch once and keeps only:
min / max, per-channel abs-max (channel axis 1 for rank-4 NCHW, the last axis otherwise), per-token
abs-max summary (rank >= 3: max over channels of each token; mean and max over tokens), and a
symmetric histogram on [-R, R] whose range doubles when a batch exceeds it (pairs of bins merge,
so no batch is ever re-read and memory stays O(bins)).
"""

from __future__ import annotations

import numpy as np

HIST_BINS = 4096  # over [-R, R]; 2048 per side, as TensorRT's entropy calibration uses


def channel_axis(rank: int) -> int | None:
    if rank <= 1:
        return None
    return 1 if rank == 4 else rank - 1


class TensorStats:
    __slots__ = ("min", "max", "count", "channel_absmax", "token_absmax_sum", "token_absmax_max", "tokens",
                 "hist", "hist_range", "nonfinite")

    def __init__(self) -> None:
        self.min = np.inf
        self.max = -np.inf
        self.count = 0
        self.channel_absmax: np.ndarray | None = None
        self.token_absmax_sum = 0.0
        self.token_absmax_max = 0.0
        self.tokens = 0
        self.hist = np.zeros(HIST_BINS, dtype=np.int64)
        self.hist_range = 0.0
        self.nonfinite = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):  # min / max propagate NaN and reach any inf
            # -inf / inf sentinels (attention masks) are counted and mark the range, but the
            # histogram and channel statistics see only the finite values
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - finite.sum())
            if np.isneginf(x).any():
                self.min = -np.inf
            if np.isposinf(x).any():
                self.max = np.inf
            x_finite = x[finite]
            if x_finite.size:
                self.min = min(self.min, float(x_finite.min()))
                self.max = max(self.max, float(x_finite.max()))
                self.count += x_finite.size
                self._histogram(x_finite, float(np.abs(x_finite).max()))
            self._channels(np.where(finite, x, 0.0))
            return
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += x.size
        self._channels(x)
        self._histogram(x, max(-lo, hi))  # = max |x|, without another pass

    def _channels(self, x: np.ndarray) -> None:
        axis = channel_axis(x.ndim)
        if axis is None:
            return
        a = np.abs(x)
        reduce_axes = tuple(i for i in range(x.ndim) if i != axis)
        ch = a.max(axis=reduce_axes)
        if self.channel_absmax is None or self.channel_absmax.shape != ch.shape:
            self.channel_absmax = ch if self.channel_absmax is None else np.maximum(self.channel_absmax, ch)
        else:
            np.maximum(self.channel_absmax, ch, out=self.channel_absmax)
        if x.ndim >= 3 and axis == x.ndim - 1:
            tok = a.max(axis=-1)
            self.token_absmax_sum += float(tok.sum())
            self.token_absmax_max = max(self.token_absmax_max, float(tok.max()))
            self.tokens += tok.size

    def _histogram(self, x: np.ndarray, amax: float) -> None:
        if self.hist_range == 0.0:
            self.hist_range = amax if amax > 0 else 1e-8
        while amax > self.hist_range:
            self._double_range()
        half = HIST_BINS // 2
        width = self.hist_range / half
        # bin = floor(x / width) + half, clipped; one float32 buffer, floored in place
        scaled = np.divide(x, np.float32(width))
        np.floor(scaled, out=scaled)
        idx = scaled.astype(np.intp)
        idx += half
        np.clip(idx, 0, HIST_BINS - 1, out=idx)
        self.hist += np.bincount(idx.ravel(), minlength=HIST_BINS)

    def _double_range(self) -> None:
        quarter = HIST_BINS // 4
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        self.hist = np.zeros(HIST_BINS, dtype=np.int64)
        self.hist[quarter:quarter + merged.size] = merged
        self.hist_range *= 2.0

    # ---- derived views -------------------------------------------------------------------------
    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    @property
    def bin_edges(self) -> np.ndarray:
        return np.linspace(-self.hist_range, self.hist_range, HIST_BINS + 1)

    @property
    def token_absmax_mean(self) -> float:
        return self.token_absmax_sum / self.tokens if self.tokens else 0.0

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Histogram of |x| on [0, R] with HIST_BINS/2 bins, and its bin width."""
        half = HIST_BINS // 2
        return self.hist[half:] + self.hist[:half][::-1], self.hist_range / half

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "count": self.count, "nonfinite": self.nonfinite,
                "token_absmax_mean": self.token_absmax_mean, "token_absmax_max": self.token_absmax_max}
