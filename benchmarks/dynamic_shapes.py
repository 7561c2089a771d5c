"""One TVM library for every input size: MobileNetV2 (zoo weights, int8 QDQ) built static (batch 1),
with a symbolic batch, and with symbolic batch, height and width; one JSON line per (build, shape):
compile seconds, the packed kernels substituted, median latency of back-to-back runs.

    python benchmarks/dynamic_shapes.py                    # static and dynamic batch (~2 min, 2 cores)
    python benchmarks/dynamic_shapes.py --builds dynamic-hw    # symbolic H, W (a ~5 min compile today)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import qcc
from qcc import models
from qcc.backends import tvm as tvm_backend

BUILDS = {   # name -> (input shape with symbols, batch of a static build or None)
    "static": (["batch", 3, 224, 224], 1),
    "dynamic-batch": (["batch", 3, 224, 224], None),
    "dynamic-hw": (["batch", 3, "H", "W"], None),
}
SHAPES = {"static": [(1, 224), (4, 224)], "dynamic-batch": [(1, 224), (4, 224)],
          "dynamic-hw": [(1, 224), (4, 224), (1, 320)]}


def median_ms(runner, feeds, runs: int) -> float:
    runner.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builds", nargs="+", choices=sorted(BUILDS), default=["static", "dynamic-batch"])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    entry = models.get("mobilenetv2", n_calib=16, n_eval=2)
    q = qcc.compile_model(str(entry.onnx_path), entry.calib, progress=False).qdq_model
    target = tvm_backend.detect_target(kind="llvm")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.builds:
            shape, batch = BUILDS[name]
            t0 = time.perf_counter()
            info = tvm_backend.build(q, target, Path(tmp) / name, input_shapes={"input": shape}, batch=batch)
            compile_s = time.perf_counter() - t0
            runner = tvm_backend.Runner(Path(tmp) / name)
            for b, hw in SHAPES[name]:
                x = {"input": rng.standard_normal((b, 3, hw, hw)).astype(np.float32)}
                print(json.dumps({"build": name, "batch": b, "size": hw, "compile_s": round(compile_s, 1),
                                  "kernels": info.get("cpu_schedule", {}).get("kernels"),
                                  "dynamic": info["dynamic"], "median_ms": round(median_ms(runner, x, args.runs), 3),
                                  "threads": runner.threads}), flush=True)


if __name__ == "__main__":
    main()
