"""One TVM library for every input size, against a static build of each size and onnxruntime int8.

A model is compiled once by `qcc compile --target llvm` (its open dims stay symbolic); for each shape
the same QDQ graph is also built static at that shape. Per shape, one JSON line: latency medians of
the dynamic build, the static build and onnxruntime on the QDQ graph (compiler/latency.py: each engine
in its own process, warm-up, back-to-back runs, rounds alternated, same threads), their ratios, and
the dynamic build's output against onnxruntime on the same QDQ graph (cosine; unfused onnxruntime is
the reference because its fused int8 kernels round differently from the QDQ graph's semantics: the
fused figure is printed beside it).

    python benchmarks/dynamic_shapes.py --model minilm          # all-MiniLM-L6, 5 (batch, tokens) points
    python benchmarks/dynamic_shapes.py --model minilm-2layer --runs 60
    python benchmarks/dynamic_shapes.py --model mobilenetv2     # batch 1, 4, 32 at 224
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import qcc
from qcc import models
from qcc.artifact import QDQ_MODEL
from qcc.backends import onnxruntime as ort_backend
from qcc.backends import tvm as tvm_backend
from qcc.latency import Engine, measure
from qcc.threads import default_threads


def _minilm_feeds(batch: int, tokens: int) -> dict[str, np.ndarray]:
    from qcc.models import datasets, minilm

    return minilm.tokenize(datasets.sentences(batch, seed=tokens), tokens)   # real sentences, padded to `tokens`


def _image_feeds(batch: int, size: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(size).standard_normal((batch, 3, size, size)).astype(np.float32)}


MODELS = {   # zoo name -> (shape points, feeds(*point))
    "minilm": ([(1, 16), (4, 64), (1, 128), (2, 256), (1, 512)], _minilm_feeds),
    "minilm-2layer": ([(1, 16), (4, 64), (1, 128), (2, 256), (1, 512)], _minilm_feeds),
    "mobilenetv2": ([(1, 224), (4, 224), (32, 224)], _image_feeds),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--runs", type=int, default=150, help="timed runs per engine and shape")
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    points, make_feeds = MODELS[args.model]
    threads = default_threads()
    entry = models.get(args.model, n_calib=32, n_eval=8)
    target = tvm_backend.detect_target(kind="llvm")
    with tempfile.TemporaryDirectory() as tmp:
        dyn = Path(tmp) / "dynamic"
        t0 = time.perf_counter()
        result = qcc.compile_model(str(entry.onnx_path), entry.calib, target="llvm", out_dir=dyn, progress=False)
        compile_s = time.perf_counter() - t0
        backend = result.report["backend"]
        print(json.dumps({"model": args.model, "build": "dynamic", "compile_s": round(compile_s, 1),
                          "dynamic": backend.get("dynamic"), "threads": threads}), flush=True)
        fused = ort_backend.make_session(dyn / QDQ_MODEL)
        unfused = ort_backend.make_session(dyn / QDQ_MODEL, optimize=False)
        art = qcc.load(dyn, threads=threads)
        for point in points:
            feeds = make_feeds(*point)
            got = art.run(feeds)[0]
            # a static build of this shape: the same artifact folder, its library rebuilt at the shape
            static = Path(tmp) / f"static-{'x'.join(map(str, point))}"
            shutil.copytree(dyn, static)
            t0 = time.perf_counter()
            tvm_backend.build(result.qdq_model, target, static,
                              input_shapes={k: list(v.shape) for k, v in feeds.items()}, batch=point[0])
            static_s = time.perf_counter() - t0
            ms = measure({"dynamic": Engine("qcc", str(dyn), threads), "static": Engine("qcc", str(static), threads),
                          "onnxruntime_int8": Engine("onnxruntime", str(dyn / QDQ_MODEL), threads)},
                         feeds, runs=args.runs, warmup=args.warmup)
            med = {k: v["median_ms"] for k, v in ms.items()}
            print(json.dumps({
                "model": args.model, "shape": list(point), "threads": threads, "runs": ms["dynamic"]["runs"],
                "dynamic_ms": round(med["dynamic"], 3), "static_ms": round(med["static"], 3),
                "onnxruntime_int8_ms": round(med["onnxruntime_int8"], 3),
                "dynamic_vs_static": round(med["dynamic"] / med["static"], 3),
                "dynamic_vs_onnxruntime_int8": round(med["dynamic"] / med["onnxruntime_int8"], 3),
                "static_compile_s": round(static_s, 1),
                "cosine_vs_onnxruntime_unfused": round(qcc.metrics.cosine(unfused.run(None, feeds)[0], got), 6),
                "cosine_vs_onnxruntime_fused": round(qcc.metrics.cosine(fused.run(None, feeds)[0], got), 6),
            }), flush=True)
            shutil.rmtree(static)


if __name__ == "__main__":
    main()
