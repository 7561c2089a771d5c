"""Graph-pass figures: one JSON object per line on stdout.

    python benchmarks/passes.py [--n-calib 64] [--n-eval 512]

- equalization: MobileNetV2 W8A8 (int8, mse calibration), same calibration / evaluation crops, same
  run, cross-layer equalization off and on, per-tensor and per-channel weights, with bias correction;
  plus the equalized float graph's max relative error vs the original on the evaluation crops.
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=512)
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    bench_equalization(args.n_calib, args.n_eval)


if __name__ == "__main__":
    main()
