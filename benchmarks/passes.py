"""Graph-pass figures: one JSON object per line on stdout.

    python benchmarks/passes.py [--n-calib 64] [--n-eval 512]

- equalization: MobileNetV2 W8A8 (int8, mse calibration), same calibration / evaluation crops, same
  run, cross-layer equalization off and on, per-tensor and per-channel weights, with bias correction;
  plus the equalized float graph's max relative error vs the original on the evaluation crops.
- smoothing: all-MiniLM-L6 W8A8 (int8, mse, per-channel, with bias correction), pooled-embedding cosine
  vs FP32, same calibration / evaluation sentences, same run: smoothing off and on (the pass gives
  the MatMuls a smoothed LayerNorm copy where the residual Add also reads the LN output), plus the
  smoothed float graph's max relative error vs the original.

    python benchmarks/passes.py --only smoothing
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import qcc
from qcc import models
from qcc.backends import onnxruntime as ort_backend


def emit(**kv) -> None:
    print(json.dumps(kv, default=float), flush=True)


def bench_equalization(n_calib: int, n_eval: int) -> None:
    e = models.get("mobilenetv2", n_calib=n_calib, n_eval=n_eval)
    ref = None
    for granularity in ("per-tensor", "per-channel"):
        for passes in (["bias-correction"], ["equalization", "bias-correction"]):
            t = time.perf_counter()
            r = qcc.compile_model(str(e.onnx_path), e.calib, eval_data=e.eval,
                                  config=qcc.QuantConfig(granularity=granularity, passes=passes), progress=False)
            secs = time.perf_counter() - t
            m = r.report["fidelity"]["outputs"]["logits"]
            extra = {}
            if "equalization" in passes:
                if ref is None:
                    ref = ort_backend.run_all(ort_backend.make_session(e.onnx_path), e.eval)[0]
                eq = ort_backend.run_all(ort_backend.make_session(r.float_model), e.eval)[0]
                extra["float_max_rel_err"] = float(np.abs(eq - ref).max() / np.abs(ref).max())
            emit(bench="mobilenetv2-equalization", scheme="int8", granularity=granularity, passes=passes,
                 calib=n_calib, eval=n_eval, agreement=m["agreement"], agreement_confident=m["agreement_confident"],
                 confident_fraction=m["confident_fraction"], kl=m["kl"], compile_s=secs, **extra)


def bench_smoothing(n_calib: int | None, n_eval: int | None) -> None:
    import tempfile

    import onnx
    import onnx_ir as ir

    from qcc.canonicalize import canonicalize
    from qcc.loader import load_model
    from qcc.passes import smoothing

    e = models.get("minilm", n_calib=n_calib, n_eval=n_eval)
    ref = ort_backend.run_all(ort_backend.make_session(e.onnx_path), e.eval)[0]
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = canonicalize(load_model(str(e.onnx_path), None))
        sites, _ = smoothing.find_sites(model, duplicate=True)
        summary = smoothing.smooth(model, smoothing.collect_stats(ir.to_proto(model), sites, e.calib), sites)
        dup_path = os.path.join(tmp, "minilm_smoothed_dup.onnx")
        onnx.save(ir.to_proto(model), dup_path)
        dup = ort_backend.run_all(ort_backend.make_session(dup_path), e.eval)[0]
        alphas = [p["alpha"] for p in summary["per_site"]]
        variants = [("off", str(e.onnx_path), ["bias-correction"], {}),
                    ("smoothing", str(e.onnx_path), ["smoothing", "bias-correction"],
                     {"sites": summary["sites"], "smoothed": summary["smoothed"], "alphas": alphas,
                      "float_max_rel_err": float(np.abs(dup - ref).max() / np.abs(ref).max())})]
        for label, path, passes, extra in variants:
            t = time.perf_counter()
            r = qcc.compile_model(path, e.calib, eval_data=e.eval, config=qcc.QuantConfig(passes=passes),
                                  progress=False)
            secs = time.perf_counter() - t
            emb = r.report["fidelity"]["outputs"]["embedding"]
            emit(bench="minilm-smoothing", variant=label, scheme="int8", granularity="per-channel", passes=passes,
                 calib=len(e.calib["input_ids"]), eval=len(e.eval["input_ids"]), cosine=emb["cosine"],
                 compile_s=secs, **extra)


BENCHES = {"equalization": lambda a: bench_equalization(a.n_calib, a.n_eval),
           "smoothing": lambda a: bench_smoothing(a.n_calib_minilm, a.n_eval_minilm)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=512)
    p.add_argument("--n-calib-minilm", type=int, default=None, help="default: the zoo's (64)")
    p.add_argument("--n-eval-minilm", type=int, default=None, help="default: the zoo's (256)")
    p.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these (repeatable)")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in args.only or list(BENCHES):
        BENCHES[name](args)


if __name__ == "__main__":
    main()
