"""Calibration: run the float graph on calibration batches and stream statistics of chosen tensors.

Only one batch of activations is alive at a time; each tensor's `TensorStats` folds the batch in and
the batch is dropped. The batch size is chosen from a memory budget after measuring one sample.
"""

from __future__ import annotations

import numpy as np
import onnx
from tqdm import tqdm

from .backends import onnxruntime as ort_backend
from .data import n_samples
from .errors import QccError
from .statistics import TensorStats


def calibrate(model: onnx.ModelProto, tensors: list[str], feeds: dict[str, np.ndarray],
              batch_size: int | None = None, memory_mb: int = 512, progress: bool = True,
              threads: int | None = None) -> dict[str, TensorStats]:
    """Stream statistics of `tensors` over all samples in `feeds`."""
    tensors = list(dict.fromkeys(tensors))
    graph_inputs = {i.name for i in model.graph.input}
    internal = [t for t in tensors if t not in graph_inputs]
    session = ort_backend.make_session(ort_backend.with_outputs(model, internal), threads=threads,
                                       few_runs=True)
    names = [o.name for o in session.get_outputs()]
    stats = {t: TensorStats() for t in tensors}
    total = n_samples(feeds)
    fixed_batch = ort_backend.fixed_batch(model)

    bar = tqdm(total=total, desc="calibrate", unit="sample", disable=not progress, leave=False)
    start = 0
    while start < total:
        size = 1 if (fixed_batch or batch_size is None) else batch_size
        batch = {k: v[start:start + size] for k, v in feeds.items()}
        try:
            outs = session.run(names, batch)
        except Exception as exc:  # e.g. a symbolic input dim the model's ops can't actually take
            raise QccError(f"onnxruntime could not run the float model on the calibration data: "
                           f"{str(exc).strip().splitlines()[0][:300]}") from None
        by_name = dict(zip(names, outs))
        for t in tensors:
            value = batch[t] if t in graph_inputs else by_name.get(t)
            if value is not None and np.issubdtype(np.asarray(value).dtype, np.floating):
                stats[t].update(value)
        if batch_size is None and not fixed_batch:
            # size the next batches from what one sample costs
            per_sample = sum(o.nbytes for o in outs) / max(len(next(iter(batch.values()))), 1)
            batch_size = int(max(1, min(64, memory_mb * 2**20 // max(per_sample, 1))))
        del outs, by_name
        n = len(next(iter(batch.values())))
        bar.update(n)
        start += n
    bar.close()
    return stats
