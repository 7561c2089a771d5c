"""Statistic points: what a pass needs to see of the float graph, collected in one onnxruntime run.

A pass declares {key: (tensor, collector)} (passes/registry.py `Pass.statistics`); `collect` runs the
graph once with every requested tensor as an extra output, batch by batch, and hands each batch to
its collectors. The reductions are exact (max, min, concatenation), so one run gives what separate
runs gave; row sampling draws from its generator in batch order, then point order. Separate from the passes
that apply the statistics (as NNCF's algorithms are: statistic points, then apply).
"""

from __future__ import annotations

import numpy as np
import onnx

from .backends import onnxruntime as ort_backend

BATCH = 16


class ChannelMax:
    """Per-channel max over samples and positions: axis 1 of NC... tensors."""

    def __init__(self):
        self.value = None

    def update(self, x: np.ndarray, share: float) -> None:
        m = x.max(axis=(0, 2, 3)) if x.ndim == 4 else x.reshape(x.shape[0], x.shape[1], -1).max((0, 2))
        self.value = m if self.value is None else np.maximum(self.value, m)

    def result(self):
        return self.value


class LastAxisMinMax:
    """(per-channel min, per-channel max) over every row, the last axis being the channel."""

    def __init__(self):
        self.lo = self.hi = None

    def update(self, x: np.ndarray, share: float) -> None:
        x = x.reshape(-1, x.shape[-1])
        lo, hi = x.min(0), x.max(0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def result(self):
        return self.lo, self.hi


class AbsMaxRows:
    """(max |x_j| over every row, a random sample of at most `max_rows` rows [R, K]); each batch
    contributes rows in proportion to its share of the samples. Points may share one generator
    `rng`: it is drawn from in point order within each batch."""

    def __init__(self, max_rows: int, rng: np.random.Generator):
        self.max_rows = max_rows
        self.rng = rng
        self.amax = None
        self.rows: list[np.ndarray] = []

    def update(self, x: np.ndarray, share: float) -> None:
        x = x.reshape(-1, x.shape[-1])
        m = np.abs(x).max(axis=0)
        self.amax = m if self.amax is None else np.maximum(self.amax, m)
        take = min(len(x), int(np.ceil(self.max_rows * share)))
        self.rows.append(x[self.rng.choice(len(x), take, replace=False)].astype(np.float32))

    def result(self):
        return self.amax, np.concatenate(self.rows)[:self.max_rows]


class FirstSamples:
    """The tensor's values on the first `n` samples."""

    def __init__(self, n: int):
        self.n = n
        self.parts: list[np.ndarray] = []
        self.seen = 0

    def update(self, x: np.ndarray, share: float) -> None:
        if self.seen < self.n:
            self.parts.append(x[:self.n - self.seen])
            self.seen += len(self.parts[-1])

    def result(self):
        return np.concatenate(self.parts)


def collect(float_model: onnx.ModelProto, points: dict, feeds: dict[str, np.ndarray],
            batch_size: int = BATCH) -> dict:
    """{key: (tensor, collector)} -> {key: collector.result()}, from one run of `float_model`.
    Batches that no collector still needs (every FirstSamples point full, nothing else) are skipped."""
    if not points:
        return {}
    names = sorted({tensor for tensor, _ in points.values()})
    session = ort_backend.make_session(ort_backend.with_outputs(float_model, names), few_runs=True)
    n_samples = len(next(iter(feeds.values())))
    limit = n_samples
    if all(isinstance(c, FirstSamples) for _, c in points.values()):
        limit = min(n_samples, max(c.n for _, c in points.values()))
    feeds = {k: v[:limit] for k, v in feeds.items()}
    for batch in ort_backend.batches(feeds, ort_backend.batch_size_for(float_model, batch_size)):
        share = len(next(iter(batch.values()))) / limit
        values = dict(zip(names, session.run(names, batch)))
        for tensor, collector in points.values():
            collector.update(values[tensor], share)
    return {key: collector.result() for key, (tensor, collector) in points.items()}
