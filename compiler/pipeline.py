"""`qcc compile`, start to end:

    load -> canonicalize -> validate data -> rewrite (equalization, smoothing: opt-in) -> plan -> calibrate
    (float graph, streaming stats) -> re-plan with statistics (masks stay float) -> clipping ranges
    -> scales / zero points -> emit QDQ (-> bias correction) -> check -> fidelity + per-layer SQNR report
    -> artifact folder (atomic; llvm targets: + TVM build of model.so, checked against onnxruntime)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_passes

from . import __version__
from .artifact import (MANIFEST, QDQ_MODEL, REPORT, REPORT_HTML, check_output_dir, file_sha256, save_json,
                       save_model, write_artifact)
from .calibrate import calibrate
from .canonicalize import canonicalize
from .config import SCHEMES, QuantConfig
from .data import input_specs, validate_feeds
from .errors import QccError
from .loader import load_model
from .plan import QuantPlan, build_plan
from .qparams import range_to_qparams
from .passes import registry as passes
from .passes.bias_correction import apply_shift
from .qdq import emit_qdq
from .ranges import select_range
from .report import build_report
from .report_html import write_compile_report
from .trace import Trace

from . import targets  # the target registry (compiler/targets.py): every target check and build asks it


@dataclass
class CompileResult:
    qdq_model: onnx.ModelProto
    float_model: onnx.ModelProto
    plan: QuantPlan
    report: dict
    manifest: dict
    out_dir: Path | None


def compile_model(model: Any, calib: dict[str, np.ndarray], *, config: QuantConfig | None = None,
                  target: str = "onnx", eval_data: dict[str, np.ndarray] | None = None,
                  labels: np.ndarray | None = None, out_dir: str | Path | None = None, force: bool = False,
                  progress: bool = True, example_inputs: Any = None, mcpu: str | None = None,
                  log=None, mattr: list[str] | None = None, arch: str | None = None,
                  tune_trials: int | None = None, tune_minutes: float | None = None) -> CompileResult:
    config = config or QuantConfig()
    log = log or (lambda msg: None)
    passes.validate(config)   # unknown pass, a config it refuses, a missing optional package: before any work
    tune = targets.check_options(target, arch=arch, tune_trials=tune_trials, tune_minutes=tune_minutes,
                                 progress=progress)   # an unknown target, or a flag it does not take
    if out_dir is not None:
        check_output_dir(Path(out_dir), force)  # fail before any work, not after
    # no output folder, a scheme the target does not lower, a flag it refuses: before calibrating
    backend = targets.prepare(target, config, out_dir, mcpu=mcpu, mattr=mattr, arch=arch, tune=tune, log=log)
    trace = Trace(log)
    timings = trace.timings
    t = time.perf_counter()

    ir_model = load_model(model, example_inputs)
    source_hash = file_sha256(Path(model)) if isinstance(model, (str, Path)) else None
    ir_model, canon = canonicalize(ir_model, min_opset=_min_opset(config))
    timings["load_canonicalize_s"] = time.perf_counter() - t
    log(f"canonicalized: opset {canon['opset']}, {canon['nodes']} nodes, {canon['constants_folded']} constants "
        f"folded, {canon['batchnorms_folded']} BatchNorms folded")

    specs = input_specs(ir_model)
    calib = validate_feeds(specs, calib, "calibration")
    if eval_data is not None:
        eval_data = validate_feeds(specs, eval_data, "evaluation")
        if labels is not None and len(labels) != len(next(iter(eval_data.values()))):
            raise QccError(f"labels have {len(labels)} entries but the evaluation set has "
                           f"{len(next(iter(eval_data.values())))} samples")
    float_proto = ir.to_proto(ir_model)
    source_bytes = float_proto.ByteSize()
    float_proto = rewrite(ir_model, float_proto, config, calib, trace)

    t = time.perf_counter()
    draft = build_plan(ir_model, config)
    stats = calibrate(float_proto, sorted(draft.roots()), calib, batch_size=config.calib_batch_size,
                      memory_mb=config.calib_memory_mb, progress=progress)
    timings["calibrate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    config, ir_model, plan, encodings = quantize_with_passes(ir_model, float_proto, config, stats, calib, trace)
    qdq_proto = ir.to_proto(ir_model)
    try:
        onnx.checker.check_model(qdq_proto)
    except onnx.checker.ValidationError as exc:
        raise QccError(f"internal error: emitted QDQ model is invalid: {str(exc).splitlines()[0]}") from None
    timings["quantize_s"] = time.perf_counter() - t

    t = time.perf_counter()
    report = build_report(float_proto, qdq_proto, plan, encodings, calib, eval_data, labels, progress=progress)
    timings["report_s"] = time.perf_counter() - t
    qdq_bytes = qdq_proto.ByteSize()
    report.update({
        "canonicalize": canon,
        "timings": timings,
        "passes": trace.passes,
        "size": {"fp32_bytes": source_bytes, "qdq_bytes": qdq_bytes,
                 "ratio": qdq_bytes / source_bytes if source_bytes else None},
    })
    manifest = {
        "format": 1, "qcc_version": __version__, "target": target, "config": config.to_dict(),
        "inputs": [vars(s) for s in specs],
        "outputs": [{"name": o.name} for o in ir_model.graph.outputs],
        "source": {"path": str(model) if isinstance(model, (str, Path)) else None, "sha256": source_hash},
        "encodings": encodings,
        "files": {"qdq_model": QDQ_MODEL, "report": REPORT},
    }
    if out_dir is not None:
        def writer(folder: Path) -> None:
            save_model(qdq_proto, folder / QDQ_MODEL)
            manifest["hashes"] = {QDQ_MODEL: file_sha256(folder / QDQ_MODEL)}
            if backend is not None:   # the target's build into the folder, checked where it can run
                t_build = time.perf_counter()
                report["backend"], files, hashed = backend.build(folder, qdq_proto, calib, eval_data, log)
                manifest["backend"] = {k: report["backend"][k] for k in ("target", "mcpu", "static_batch")}
                manifest["files"].update(files)
                manifest["hashes"].update({key: file_sha256(folder / path) for key, path in hashed.items()})
                timings["tvm_build_s"] = time.perf_counter() - t_build
            save_json(folder / REPORT, report)
            manifest["files"]["report_html"] = REPORT_HTML
            save_json(folder / MANIFEST, manifest)
            write_compile_report(folder / REPORT_HTML, report, manifest)

        out_dir = write_artifact(Path(out_dir), force, writer)
    return CompileResult(qdq_proto, float_proto, plan, report, manifest, Path(out_dir) if out_dir else None)


def rewrite(ir_model: ir.Model, float_proto: onnx.ModelProto, config: QuantConfig, calib,
            trace: Trace) -> onnx.ModelProto:
    """The equivalence-preserving rewrites chosen in config.passes (the registry's "rewrite" phase),
    applied to the float graph before calibration, so statistics, bias correction and the report all
    see the rewritten graph (its outputs equal the original's: tests/test_pass_*.py). Returns the
    rewritten float graph."""
    ctx = passes.PassContext(ir_model, float_proto, config, calib)
    passes.run_phase("rewrite", ctx, trace)
    return ctx.float_proto


def runtime_quantizers(model: ir.Model, plan: QuantPlan, config: QuantConfig):
    """Quantizer-changing hook: tensors quantized at run time (CrossQuant per-token scales) or with a
    non-uniform grid (RepQuant's log-sqrt(2) Softmax quantizer) leave the static plan here; the
    returned function inserts their quantizers into the QDQ graph after emission."""
    quantizers = passes.quantizers(config, model)
    for q in quantizers:
        q.take(plan)

    def emit(qdq_model: ir.Model) -> dict:
        encodings = {}
        for q in quantizers:
            encodings.update(q.emit(qdq_model))
        return encodings

    return emit


def quantize(float_proto: onnx.ModelProto, config: QuantConfig, stats,
             bias_shift: dict[str, np.ndarray] | None = None,
             weights: dict[str, np.ndarray] | None = None) -> tuple[ir.Model, QuantPlan, dict]:
    """A fresh copy of the float graph -> (AdaRound weights, bias shift applied) -> plan -> qparams -> QDQ graph."""
    model = ir.serde.deserialize_model(float_proto)
    if weights:
        from .passes import adaround

        adaround.apply_weights(model, weights)
    if bias_shift:
        apply_shift(model, build_plan(model, config, stats).roles, bias_shift)
    plan = build_plan(model, config, stats)
    emit_runtime = runtime_quantizers(model, plan, config)
    ranges = assign_qparams(plan, stats, config)
    encodings = emit_qdq(model, plan, config.power_of_two)
    encodings.update(emit_runtime(model))
    for name, (lo, hi) in ranges.items():
        if name in encodings:
            encodings[name]["range"] = [lo, hi]
    ir_passes.RemoveUnusedNodesPass()(model)
    return model, plan, encodings


def quantize_with_passes(float_model: ir.Model, float_proto: onnx.ModelProto, config: QuantConfig, stats,
                         calib, trace: Trace) -> tuple[QuantConfig, ir.Model, QuantPlan, dict]:
    """The registry's "weights" passes (mixed precision overrides, AdaRound weights, analytic bias
    shifts), the QDQ graph, then its "correct" passes (measured bias correction, which quantizes
    again). Returns (config with the passes' overrides, QDQ model, plan, encodings)."""
    ctx = passes.PassContext(float_model, float_proto, config, calib, stats=stats)
    passes.run_phase("weights", ctx, trace)
    ctx.quantized = quantize(float_proto, ctx.config, stats, ctx.analytic, ctx.weights)
    ctx.requantize = lambda shift: quantize(float_proto, ctx.config, stats, shift, ctx.weights)
    passes.run_phase("correct", ctx, trace)
    return (ctx.config, *ctx.quantized)


def assign_qparams(plan: QuantPlan, stats, config: QuantConfig) -> dict[str, tuple[float, float]]:
    """Clipping range -> (scale, zero point) for every quantized activation (shared groups use their root)."""
    ranges: dict[str, tuple[float, float]] = {}
    for name, spec in plan.activations.items():
        st = stats.get(spec.root)
        if st is None or st.count == 0:
            raise QccError(f"no calibration statistics for tensor {spec.root!r} (it was never computed)")
        if spec.root not in ranges:
            ranges[spec.root] = select_range(st, config.calibration, spec.qtype, spec.symmetric, config.percentile)
        lo, hi = ranges[spec.root]
        spec.scale, spec.zero_point = range_to_qparams(lo, hi, spec.qtype, spec.symmetric, config.power_of_two)
        ranges[name] = (lo, hi)
    return ranges


def _min_opset(config: QuantConfig) -> int:
    schemes = [config.scheme] + [s for s in config.overrides.values() if s != "float"]
    return max(max(SCHEMES[s][0].min_opset, SCHEMES[s][2].min_opset) for s in schemes)
