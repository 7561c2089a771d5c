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
- crossquant | repquant | affinequant: all-MiniLM-L6 W8A8 with that pass off and on (RepQuant: LN
  reparameterization, then + the log-sqrt(2) Softmax quantizer); CrossQuant rows carry the
  quantization kernel. minilm-table: those and the combinations, one table, same run:

    python benchmarks/passes.py --only minilm-table
- noisyquant | bias-correction-analytic | adaround | mixed-precision: MobileNetV2 (64 calibration / 512
  evaluation crops) and the bundled Fashion-MNIST CNN (256 calibration images, 10k test images) with the
  pass off and on, same data, same run: fidelity vs FP32 (Fashion: + accuracy) and the emitted weight
  bytes vs int8. W4A8 rows (adaround, mixed-precision) use 4-bit per-channel weights; NoisyQuant W8A8
  per-tensor; analytic bias correction only has BN statistics on the Fashion CNN (the MobileNetV2 export
  has its BatchNorms folded by torch.onnx already).

    python benchmarks/passes.py --only adaround --only mixed-precision
"""

from __future__ import annotations

import argparse
import dataclasses
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


# all-MiniLM-L6 W8A8 transformer passes: each row one compile, same sentences, same run (bias correction on)
MINILM_VARIANTS = {
    "crossquant": [[], ["crossquant"]],
    "repquant": [[], ["repquant"], ["repquant", "repquant-softmax"]],
    "affinequant": [[], ["affinequant"]],
    "minilm-table": [[], ["smoothing"], ["crossquant"], ["repquant"], ["repquant", "repquant-softmax"],
                     ["affinequant"], ["smoothing", "crossquant"], ["affinequant", "crossquant"],
                     ["affinequant", "repquant"]],
}


def bench_minilm_passes(which: str, n_calib: int | None, n_eval: int | None,
                        variants: list[str] | None = None) -> None:
    """all-MiniLM-L6 W8A8 (int8, mse, per-channel weights, bias correction): pooled-embedding cosine vs
    FP32 with each transformer pass (combination) off / on, plus the rewritten float graph's max
    relative error vs the original and, with CrossQuant, the quantization kernel (fraction of
    calibration activations rounded to zero) of the static per-tensor, per-token and CrossQuant
    quantizers on its sites."""
    from qcc.passes import crossquant

    e = models.get("minilm", n_calib=n_calib, n_eval=n_eval)
    ref = ort_backend.run_all(ort_backend.make_session(e.onnx_path), e.eval)[0]
    for passes in MINILM_VARIANTS[which]:
        if variants and ("+".join(passes) or "off") not in variants:
            continue
        cmd = "--passes " + ",".join(passes + ["bias-correction"])
        t = time.perf_counter()
        r = qcc.compile_model(str(e.onnx_path), e.calib, eval_data=e.eval,
                              config=qcc.QuantConfig(passes=passes + ["bias-correction"]), progress=False)
        secs = time.perf_counter() - t
        extra = {}
        if passes:
            got = ort_backend.run_all(ort_backend.make_session(r.float_model), e.eval)[0]
            extra["float_max_rel_err"] = float(np.abs(got - ref).max() / np.abs(ref).max())
        meta = {p.key: p.value for p in r.float_model.metadata_props}
        if crossquant.KERNEL_KEY in meta:
            extra["quant_kernel"] = json.loads(meta[crossquant.KERNEL_KEY])
        emb = r.report["fidelity"]["outputs"]["embedding"]
        emit(bench=which if which.startswith("minilm") else f"minilm-{which}", variant="+".join(passes) or "off", scheme="int8", granularity="per-channel",
             passes=passes + ["bias-correction"], qcc_compile=cmd, calib=len(e.calib["input_ids"]),
             eval=len(e.eval["input_ids"]), cosine=emb["cosine"], compile_s=secs, **extra)


# CNN passes: (model, scheme, granularity, [passes off, passes on, ...]) per benchmark name
CNN_VARIANTS = {
    "noisyquant": [("mobilenetv2", "int8", "per-tensor", [["bias-correction"], ["noisyquant", "bias-correction"]]),
                   ("fashion-cnn", "int8", "per-tensor", [["bias-correction"], ["noisyquant", "bias-correction"]])],
    "bias-correction-analytic": [("mobilenetv2-bn", "int8", "per-tensor",
                                  [[], ["bias-correction-analytic"], ["bias-correction"]]),
                                 ("fashion-cnn", "w4a8", "per-channel",
                                  [[], ["bias-correction-analytic"], ["bias-correction"],
                                   ["bias-correction-analytic", "bias-correction"]])],
    "adaround": [("mobilenetv2", "w4a8", "per-channel", [["bias-correction"], ["adaround", "bias-correction"]]),
                 ("fashion-cnn", "w4a8", "per-channel", [["bias-correction"], ["adaround", "bias-correction"]])],
    "mixed-precision": [("mobilenetv2", "w4a8", "per-channel",
                         [["mixed-precision", "bias-correction"], ["mixed-precision", "adaround", "bias-correction"]]),
                        ("fashion-cnn", "w4a8", "per-channel",
                         [["mixed-precision", "bias-correction"], ["mixed-precision", "adaround", "bias-correction"]])],
}


def _mobilenetv2_with_batchnorm() -> str:
    """MobileNetV2 exported with its BatchNorm nodes kept (the zoo's export folds them), so that
    canonicalization folds them itself and keeps their statistics for analytic bias correction."""
    import tempfile
    import warnings

    import torch

    from qcc.models.mobilenet_v2 import load_mobilenet_v2

    path = os.path.join(tempfile.mkdtemp(prefix="qcc-bench-"), "mobilenetv2-bn.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(load_mobilenet_v2().eval(), (torch.zeros(1, 3, 224, 224),), path, dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return path


def bench_cnn_passes(which: str, a) -> None:
    """MobileNetV2 (n_calib / n_eval natural-image crops) and the bundled Fashion-MNIST CNN (its 256
    calibration images, the 10k test set): fidelity vs FP32 (and accuracy) with the pass off and on,
    same data, same run; weight bytes of the emitted QDQ graph relative to int8; for float rewrites the
    rewritten float graph's max relative error vs the original."""
    from qcc.passes import mixed_precision

    for name, scheme, granularity, variants in CNN_VARIANTS[which]:
        if name not in a.cnn_models.split(","):
            continue
        e = (models.get(name.split("-")[0], n_calib=a.n_calib, n_eval=a.n_eval) if name.startswith("mobilenetv2")
             else models.get(name, n_eval=a.n_eval_fashion))
        if name == "mobilenetv2-bn":
            e = dataclasses.replace(e, onnx_path=_mobilenetv2_with_batchnorm())
        ref = None
        for passes in variants:
            cfg = qcc.QuantConfig(scheme=scheme, granularity=granularity, passes=passes, weight_budget=a.weight_budget)
            t = time.perf_counter()
            r = qcc.compile_model(str(e.onnx_path), e.calib, eval_data=e.eval, labels=e.labels, config=cfg,
                                  progress=False)
            secs = time.perf_counter() - t
            out = next(iter(r.report["fidelity"]["outputs"].values()))
            used, int8 = mixed_precision.qdq_weight_bytes(r.qdq_model)
            extra = {k: out[k] for k in ("accuracy_fp32", "accuracy_quantized", "accuracy_drop_points") if k in out}
            if "noisyquant" in passes:
                if ref is None:
                    ref = ort_backend.run_all(ort_backend.make_session(e.onnx_path), e.eval)[0]
                got = ort_backend.run_all(ort_backend.make_session(r.float_model), e.eval)[0]
                extra["float_max_rel_err"] = float(np.abs(got - ref).max() / np.abs(ref).max())
            model_arg = name if name != "mobilenetv2-bn" else "mobilenetv2-bn.onnx(BatchNorm kept: _mobilenetv2_with_batchnorm)"
            cmd = (f"qcc compile {model_arg} --scheme {scheme} --granularity {granularity} --passes {','.join(passes) or 'none'}"
                   + (f" --weight-budget {a.weight_budget}" if "mixed-precision" in passes else ""))
            emit(bench=f"{name}-{which}", scheme=scheme, granularity=granularity, passes=passes, qcc_compile=cmd,
                 calib=len(next(iter(e.calib.values()))), eval=len(next(iter(e.eval.values()))),
                 agreement=out["agreement"], agreement_confident=out["agreement_confident"], kl=out["kl"],
                 weight_bytes_vs_int8=used / int8, compile_s=secs,
                 pass_s={k: v for k, v in r.report["timings"].items()
                         if k in ("mixed_precision_s", "adaround_s", "noisyquant_s")}, **extra)


BENCHES = {"equalization": lambda a: bench_equalization(a.n_calib, a.n_eval),
           "smoothing": lambda a: bench_smoothing(a.n_calib_minilm, a.n_eval_minilm)}
BENCHES.update({name: (lambda a, name=name: bench_minilm_passes(name, a.n_calib_minilm, a.n_eval_minilm,
                                                                  a.variants and a.variants.split(",")))
                for name in MINILM_VARIANTS})
DEFAULT_BENCHES = ["equalization", "smoothing", "minilm-table"]   # the table covers the per-pass rows
BENCHES.update({name: (lambda a, name=name: bench_cnn_passes(name, a)) for name in CNN_VARIANTS})
DEFAULT_BENCHES += list(CNN_VARIANTS)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=512)
    p.add_argument("--n-calib-minilm", type=int, default=None, help="default: the zoo's (64)")
    p.add_argument("--n-eval-minilm", type=int, default=None, help="default: the zoo's (256)")
    p.add_argument("--n-eval-fashion", type=int, default=10000, help="Fashion-MNIST test images (CNN passes)")
    p.add_argument("--weight-budget", type=float, default=0.6, help="mixed-precision rows: bytes vs int8 weights")
    p.add_argument("--cnn-models", default="mobilenetv2,mobilenetv2-bn,fashion-cnn",
                   help="models of the CNN-pass rows (comma-separated)")
    p.add_argument("--only", choices=sorted(BENCHES), action="append", help="run only these (repeatable)")
    p.add_argument("--variants", help="MiniLM pass benches: only these rows, e.g. off,smoothing+crossquant")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in args.only or DEFAULT_BENCHES:
        BENCHES[name](args)


if __name__ == "__main__":
    main()
