"""How many CPU threads compiled code and onnxruntime run on by default."""

from __future__ import annotations

import os


def default_threads() -> int:
    """The CPUs this process may run on: its affinity mask, which containers and `taskset` narrow.
    (TVM's own default halves the logical CPU count on x86, assuming hyper-threading: one thread on a
    2-vCPU machine.)"""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
