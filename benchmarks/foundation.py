"""Foundation figures (issue: qcc compile): one JSON object per line on stdout.

    python benchmarks/foundation.py [--only fashion,mobilenetv2,minilm,fp8,memory]

- fashion:      bundled CNN, int8, labelled accuracy on the full 10k Fashion-MNIST test set
- mobilenetv2:  W8A8 per-channel, 64 calibration / 512 evaluation crops; qcc next to onnxruntime's
                quantize_static (QDQ, U8/S8, per-channel) with MinMax and Percentile, same data, same run
- minilm:       W8A8 pooled-embedding cosine vs FP32 on real sentences; onnxruntime MinMax / Percentile
- fp8:          FP8 E4M3 weights and activations on MiniLM and MobileNetV2
- memory:       peak RSS of load + canonicalize + calibration for MiniLM on 256 samples (own process)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import qcc
from qcc import metrics, models
from qcc.backends import onnxruntime as ort_backend

sys.path.insert(0, str(Path(__file__).parent))
from ort_baseline import ort_quantize_static  # noqa: E402


def emit(**kv) -> None:
    print(json.dumps(kv, default=float), flush=True)


def evaluate(model_path, data, output=0):
    return ort_backend.run_all(ort_backend.make_session(model_path), data, batch_size=32)[output]


def ort_quantize(model_path: Path, calib: dict, method: str, per_channel: bool = True) -> Path:
    return ort_quantize_static(model_path, calib, Path(tempfile.mkdtemp()) / f"ort_{method}.onnx", method, per_channel)


def qcc_compile(entry, **cfg):
    t = time.perf_counter()
    r = qcc.compile_model(str(entry.onnx_path), entry.calib, eval_data=entry.eval, labels=entry.labels,
                          config=qcc.QuantConfig(**cfg), progress=False)
    return r, time.perf_counter() - t


def bench_fashion():
    e = models.get("fashion-cnn")
    r, secs = qcc_compile(e)
    m = r.report["fidelity"]["outputs"]["logits"]
    emit(bench="fashion-cnn", scheme="int8", samples=len(e.labels), accuracy_fp32=m["accuracy_fp32"],
         accuracy_int8=m["accuracy_quantized"], drop_points=m["accuracy_drop_points"], compile_s=secs)


def bench_mobilenet():
    e = models.get("mobilenetv2")
    ref = evaluate(e.onnx_path, e.eval)
    for label, cfg in [("qcc mse+bias-correction", {}), ("qcc percentile", {"calibration": "percentile", "passes": []})]:
        r, secs = qcc_compile(e, **cfg)
        m = r.report["fidelity"]["outputs"]["logits"]
        emit(bench="mobilenetv2", tool=label, scheme="int8 per-channel", agreement=m["agreement"],
             agreement_confident=m["agreement_confident"], kl=m["kl"], compile_s=secs)
    for method in ("MinMax", "Percentile"):
        try:
            q = evaluate(ort_quantize(e.onnx_path, e.calib, method), e.eval)
            m = metrics.classification(ref, q)
            emit(bench="mobilenetv2", tool=f"onnxruntime quantize_static {method}", scheme="int8 per-channel",
                 agreement=m["agreement"], agreement_confident=m["agreement_confident"], kl=m["kl"])
        except Exception as exc:  # report, don't hide: the comparison tool itself failing is a finding
            emit(bench="mobilenetv2", tool=f"onnxruntime quantize_static {method}", error=str(exc)[:200])


def bench_minilm():
    e = models.get("minilm")
    ref = evaluate(e.onnx_path, e.eval)
    r, secs = qcc_compile(e)
    emit(bench="minilm", tool="qcc", scheme="int8", cosine=r.report["fidelity"]["outputs"]["embedding"]["cosine"],
         samples=len(ref), compile_s=secs)
    for method in ("MinMax", "Percentile"):
        try:
            q = evaluate(ort_quantize(e.onnx_path, e.calib, method), e.eval)
            emit(bench="minilm", tool=f"onnxruntime quantize_static {method}", scheme="int8",
                 cosine=metrics.cosine(ref, q))
        except Exception as exc:
            emit(bench="minilm", tool=f"onnxruntime quantize_static {method}", error=str(exc).splitlines()[0][:200])


def bench_fp8():
    for name in ("minilm", "mobilenetv2"):
        e = models.get(name)
        r, secs = qcc_compile(e, scheme="fp8-e4m3")
        m = next(iter(r.report["fidelity"]["outputs"].values()))
        keys = ("cosine",) if name == "minilm" else ("agreement", "agreement_confident", "kl", "cosine")
        emit(bench=name, tool="qcc", scheme="fp8-e4m3", **{k: m[k] for k in keys}, compile_s=secs)


_MEMORY_CHILD = """
import resource, json, onnx_ir as ir
from qcc import models, QuantConfig
from qcc.loader import load_model
from qcc.canonicalize import canonicalize
from qcc.plan import build_plan
from qcc.calibrate import calibrate
def vm_hwm_mb():  # peak RSS of this process image (ru_maxrss is inherited across fork+exec on Linux)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
e = models.get("minilm", n_calib=256, n_eval=1)
before = vm_hwm_mb()
m, _ = canonicalize(load_model(str(e.onnx_path)))
tensors = sorted(build_plan(m, QuantConfig()).roots())
stats = calibrate(ir.to_proto(m), tensors, e.calib, progress=False)
print(json.dumps({"samples": len(e.calib["input_ids"]), "tensors": len(tensors),
                  "peak_rss_mb": vm_hwm_mb(), "rss_before_load_mb": before}))
"""


def bench_memory():
    models.get("minilm", n_calib=1, n_eval=1)  # export/cache the model outside the measured process
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD], capture_output=True, text=True, check=True)
    emit(bench="minilm-calibration-memory", **json.loads(proc.stdout.strip().splitlines()[-1]))


BENCHES = {"fashion": bench_fashion, "mobilenetv2": bench_mobilenet, "minilm": bench_minilm, "fp8": bench_fp8,
           "memory": bench_memory}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", default=",".join(BENCHES))
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in args.only.split(","):
        BENCHES[name]()


if __name__ == "__main__":
    main()
