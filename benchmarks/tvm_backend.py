"""TVM backend figures: one JSON object per line on stdout.

    python benchmarks/tvm_backend.py [--only exactness,compile,latency] [--models fashion-cnn,mobilenetv2,...]

- exactness: per zoo model, the TVM llvm build vs onnxruntime on the SAME qcc QDQ model:
    layerwise   teacher-forced (every layer fed onnxruntime's own quantized inputs): fraction of
                quantized-tensor elements within one quantization step, and bit-exact
    end_to_end  fraction of output elements within one step (the output quantizer's scale, or for
                float outputs the scale of the nearest upstream QuantizeLinear), next to the same
                figure for onnxruntime fused vs unfused (the rounding-tie noise floor)
    fidelity    qcc's metrics vs FP32 for TVM, onnxruntime fused, onnxruntime unfused
- compile: MobileNetV2, qcc compile (64 calibration images incl. calibration, bias correction, report)
  + TVM build, wall seconds on this machine (the CI machine has 2 cores)
- latency: batch 1, median of --runs runs, one process, 2 threads: the TVM artifact (untuned default
  pipeline), onnxruntime FP32, onnxruntime int8 QDQ from onnxruntime.quantization.quantize_static
  (U8/S8 per-channel MinMax, same calibration data), and onnxruntime on qcc's QDQ model
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402

import qcc  # noqa: E402
from qcc import models  # noqa: E402
from qcc.backends import onnxruntime as ort_backend  # noqa: E402
from qcc.backends import tvm as tvm_backend  # noqa: E402
from qcc.backends.tvm import verify  # noqa: E402
from ort_baseline import ort_quantize_static  # noqa: E402

THREADS = 2
# name -> (n_calib, n_eval, layerwise samples)
ZOO = {
    "fashion-cnn": (256, 1000, 64),
    "mobilenetv2": (64, 64, 8),
    "ppocr-cls": (64, 64, 16),
    "ppocr-det": (32, 16, 4),
    "minilm-2layer": (64, 64, 16),
}


def emit(**kv) -> None:
    print(json.dumps(kv, default=float), flush=True)


def _subset(feeds: dict, n: int) -> dict:
    return {k: v[:n] for k, v in feeds.items()}


def _entry(name: str, n_calib: int, n_eval: int):
    entry = models.get(name, n_calib=n_calib, n_eval=n_eval)
    feeds = entry.eval if entry.eval is not None else entry.calib
    return entry, feeds


def exactness(name: str, target: dict, work: Path) -> None:
    n_calib, n_eval, n_layer = ZOO[name]
    entry, feeds = _entry(name, n_calib, n_eval)
    t0 = time.perf_counter()
    res = qcc.compile_model(str(entry.onnx_path), entry.calib, progress=False)
    t_qcc = time.perf_counter() - t0
    q = res.qdq_model
    shapes = verify.input_shapes_from(entry.calib)
    info = tvm_backend.build(q, target, work / name, input_shapes=shapes)
    runner = tvm_backend.Runner(work / name)
    outs = runner.run(feeds)
    e2e = verify.end_to_end(q, outs, feeds)
    fid = verify.fidelity_vs_fp32(res.float_model, q, outs, feeds, entry.labels)
    lw = verify.layerwise(q, _subset(feeds, n_layer), work / f"{name}-forced", target)
    mod, *_ = tvm_backend.lower(q, shapes)
    heavy = tvm_backend.heavy_ops(mod)
    emit(figure="exactness", model=name, n_eval=len(next(iter(feeds.values()))), n_layerwise=n_layer,
         layerwise_within_1_step=lw["within_1_step"],
         layerwise_bit_exact=float(np.mean([t["exact"] for t in lw["per_tensor"].values()])),
         layerwise_quantized_tensors=lw["tensors"], layerwise_worst={lw["worst_tensor"]: lw["worst"]},
         layerwise_float_outputs=lw["float_outputs"], end_to_end=e2e, fidelity=fid,
         integer_ops=info["integer_ops"], float_fallback=info["float_fallback"],
         heavy_ops={"integer": sum(h["out"] == "int32" for h in heavy),
                    "float": sum(h["out"] != "int32" for h in heavy)},
         qcc_compile_s=round(t_qcc, 2), tvm_build_s=info["build_s"], mcpu=info["mcpu"])


def compile_time(target: dict, work: Path) -> None:
    entry = models.get("mobilenetv2", n_calib=64, n_eval=1)
    t0 = time.perf_counter()
    res = qcc.compile_model(str(entry.onnx_path), entry.calib, progress=False)
    t_qcc = time.perf_counter() - t0
    info = tvm_backend.build(res.qdq_model, target, work / "compile-mnv2")
    total = time.perf_counter() - t0
    emit(figure="compile_time", model="mobilenetv2", n_calib=64, cpus=os.cpu_count(),
         qcc_compile_s=round(t_qcc, 2), qcc_timings=res.report.get("timings"),
         tvm_build_s=info["build_s"], tvm_timings=info["timings"], total_s=round(total, 2), bar_s=60,
         ok=total <= 60)


def _median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e3)


def latency(name: str, target: dict, work: Path, runs: int) -> None:
    n_calib = min(ZOO[name][0], 32)
    entry, feeds = _entry(name, n_calib, 1)
    one = _subset(feeds, 1)
    res = qcc.compile_model(str(entry.onnx_path), entry.calib, progress=False)
    shapes = verify.input_shapes_from(entry.calib)
    info = tvm_backend.build(res.qdq_model, target, work / f"lat-{name}", input_shapes=shapes)
    runner = tvm_backend.Runner(work / f"lat-{name}")
    fig = {"tvm_int8_ms": _median_ms(lambda: runner.run(one), runs)}
    sessions = {"ort_fp32_ms": ort_backend.make_session(entry.onnx_path, threads=THREADS),
                "ort_qcc_qdq_ms": ort_backend.make_session(res.qdq_model, threads=THREADS)}
    try:
        ort_q = ort_quantize_static(entry.onnx_path, entry.calib, work / f"{name}.ort_qdq.onnx")
        sessions["ort_int8_quantize_static_ms"] = ort_backend.make_session(ort_q, threads=THREADS)
    except Exception as exc:  # noqa: BLE001 - report, don't abort the other figures
        fig["ort_quantize_static_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    for key, sess in sessions.items():
        fig[key] = _median_ms(lambda s=sess: s.run(None, one), runs)
    emit(figure="latency", model=name, batch=1, threads=THREADS, runs=runs, mcpu=info["mcpu"],
         **{k: round(v, 3) if isinstance(v, float) else v for k, v in fig.items()},
         tvm_vs_ort_int8=round(fig["tvm_int8_ms"] / fig.get("ort_int8_quantize_static_ms", np.nan), 1),
         note="TVM: rule-based schedules (backends/tvm/schedules), no tuning")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="exactness,compile,latency")
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--latency-models", default="mobilenetv2,fashion-cnn,ppocr-cls,minilm-2layer")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--mcpu", default=None)
    args = ap.parse_args(argv)
    only = set(args.only.split(","))
    target = tvm_backend.detect_target(mcpu=args.mcpu)
    emit(figure="target", target=target, cpus=os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="qcc-tvm-bench-") as tmp:
        work = Path(tmp)
        if "compile" in only:
            compile_time(target, work)
        if "exactness" in only:
            for name in args.models.split(","):
                exactness(name, target, work)
        if "latency" in only:
            for name in args.latency_models.split(","):
                latency(name, target, work, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
