"""`qcc compile`, start to end:

    load -> canonicalize -> validate data -> rewrite (equalization, smoothing: opt-in) -> plan -> calibrate
    (float graph, streaming stats) -> re-plan with statistics (masks stay float) -> clipping ranges
    -> scales / zero points -> emit QDQ (-> bias correction) -> check -> fidelity + per-layer SQNR report
    -> artifact folder (atomic; llvm targets: + TVM build of model.so, checked against onnxruntime)
"""

from __future__ import annotations

import dataclasses
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
from . import extras
from .config import PASS_NEEDS, SCHEMES, QuantConfig
from .data import input_specs, validate_feeds
from .errors import QccError
from .loader import load_model
from .plan import QuantPlan, build_plan
from .qparams import range_to_qparams
from .passes.bias_correction import analytic_shift, apply_shift, bias_site, measure_shift
from .passes.equalization import capture_pair_inputs, equalize, find_pairs, measure_preactivation_max
from .passes.smoothing import collect_stats, find_sites, smooth
from .qdq import emit_qdq
from .ranges import select_range
from .report import build_report
from .report_html import write_compile_report
from .trace import Trace

# "onnx" is QDQ only; the others build code through TVM (backends/tvm)
TVM_TARGETS = ("llvm", "x86-64", "cuda")     # model.so for this host / a CUDA GPU (--arch sm_XX, cuda.py)
EDGE_TARGETS = ("aarch64", "c", "hexagon")   # cross builds (backends/tvm/cross.py, c_source.py)
TARGETS = ("onnx",) + TVM_TARGETS + EDGE_TARGETS
EDGE_VERIFY_SAMPLES = 2            # samples an aarch64 (qemu) / c (host gcc) build is checked on
VERIFY_SAMPLES = 16                # samples the built library is checked on against onnxruntime


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
    for name in config.passes:   # an optional package a chosen pass needs: say so before any work
        if name in PASS_NEEDS:
            extras.check(PASS_NEEDS[name], f"the {name} pass")
    if target not in TARGETS:
        raise QccError(f"unknown target {target!r}; this build supports: {', '.join(TARGETS)}")
    tune = None
    if tune_trials is not None or tune_minutes is not None:   # MetaSchedule tuning (backends/tvm/tune.py)
        if target != "llvm":
            raise QccError(f"--tune applies to --target llvm (x86-64) only (got --target {target})")
        if tune_trials is None or tune_trials < 1 or (tune_minutes is not None and tune_minutes <= 0):
            raise QccError("--tune needs a positive number of trials and --tune-minutes a positive time")
        tune = {"trials": int(tune_trials), "minutes": tune_minutes, "quiet": not progress}
    if arch is not None and target != "cuda":
        raise QccError(f"--arch applies to --target cuda only (got --target {target})")
    if out_dir is not None:
        check_output_dir(Path(out_dir), force)  # fail before any work, not after
    tvm_target = None
    if target in TVM_TARGETS:
        if out_dir is None:
            raise QccError(f"target {target!r} builds a library (model.so): give an output folder")
        from .backends import tvm as tvm_backend

        schemes = {config.scheme, *(v for v in config.overrides.values() if v != "float")}
        unsupported = sorted(sch for sch in schemes if sch == "w4a8")
        if unsupported:  # refuse before calibrating, not after
            raise QccError(f"target {target!r} lowers int8 and fp8 schemes; {', '.join(unsupported)} needs "
                           "--target onnx in this version (int4 tensors need explicit packing)")
        if target == "cuda":
            from .backends.tvm import cuda

            tvm_target = cuda.make_target(arch)
            cuda.check_schemes(arch, schemes)   # FP8 needs sm_89+
        else:
            tvm_target = tvm_backend.detect_target(kind="llvm", mcpu=mcpu)
        log(f"TVM target: {tvm_target}")
    edge_target = None
    if target in EDGE_TARGETS:
        if out_dir is None:
            raise QccError(f"target {target!r} builds an artifact folder: give an output folder")
        from .backends.tvm import cross

        schemes = {config.scheme, *(v for v in config.overrides.values() if v != "float")}
        unsupported = sorted(sch for sch in schemes if sch.startswith("fp8") or sch == "w4a8")
        if unsupported:  # refuse before calibrating, not after
            raise QccError(f"target {target!r} lowers int8 schemes only; {', '.join(unsupported)} needs "
                           "--target onnx or llvm")
        edge_target = cross.edge_target(target, mcpu, mattr)
        log(f"TVM target: {edge_target}")
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
    config, weights, analytic = _weight_passes(ir_model, float_proto, config, stats, calib, trace)
    ir_model, plan, encodings = quantize(float_proto, config, stats, analytic, weights)
    if "bias-correction" in config.passes:
        t_bc = time.perf_counter()
        ir_model, plan, encodings, corrected = _bias_correction(float_proto, ir_model, plan, encodings, config,
                                                                stats, calib, analytic, weights)
        trace.pass_done("bias-correction", t_bc, {"layers": corrected}, f"bias correction: {corrected} layers")
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
            if tvm_target is not None:
                t_build = time.perf_counter()
                report["backend"] = build_tvm(qdq_proto, tvm_target, folder, calib, eval_data, log, tune=tune)
                manifest["backend"] = {k: report["backend"][k] for k in ("target", "mcpu", "static_batch")}
                manifest["files"]["library"] = report["backend"]["files"]["library"]
                manifest["files"]["io"] = report["backend"]["files"]["io"]
                manifest["hashes"]["library"] = file_sha256(folder / manifest["files"]["library"])
                timings["tvm_build_s"] = time.perf_counter() - t_build
            if edge_target is not None:
                t_build = time.perf_counter()
                report["backend"] = build_edge(target, qdq_proto, edge_target, folder, calib, eval_data, log)
                manifest["backend"] = {k: report["backend"][k] for k in ("target", "mcpu", "static_batch")}
                manifest["files"].update(_edge_files(report["backend"]["files"]))
                manifest["hashes"].update(_tree_hashes(folder, report["backend"]["files"].values()))
                timings["tvm_build_s"] = time.perf_counter() - t_build
            save_json(folder / REPORT, report)
            manifest["files"]["report_html"] = REPORT_HTML
            save_json(folder / MANIFEST, manifest)
            write_compile_report(folder / REPORT_HTML, report, manifest)

        out_dir = write_artifact(Path(out_dir), force, writer)
    return CompileResult(qdq_proto, float_proto, plan, report, manifest, Path(out_dir) if out_dir else None)


def rewrite(ir_model: ir.Model, float_proto: onnx.ModelProto, config: QuantConfig, calib,
            trace: Trace) -> onnx.ModelProto:
    """The equivalence-preserving rewrites chosen in config.passes, applied to the float graph before
    calibration, so statistics, bias correction and the report all see the rewritten graph (its
    outputs equal the original's: tests/test_pass_*.py). Returns the rewritten float graph."""
    if "equalization" in config.passes:
        t = time.perf_counter()
        pairs = find_pairs(ir_model)
        # scales chosen per pair by the pair's quantized error on a few calibration samples
        summary = equalize(ir_model, measure_preactivation_max(float_proto, pairs, calib), pairs,
                           inputs=capture_pair_inputs(float_proto, pairs, calib), per_channel=config.per_channel)
        float_proto = ir.to_proto(ir_model)
        trace.pass_done("equalization", t, summary, f"equalization: {summary['channels_scaled']}/{summary['channels']} channels in "
            f"{summary['pairs']} conv pairs")
    if "noisyquant" in config.passes:
        from .passes import noisyquant   # torch: imported only when the pass runs

        t = time.perf_counter()
        summary = noisyquant.noisyquant(ir_model, float_proto, calib)
        float_proto = ir.to_proto(ir_model)
        trace.pass_done("noisyquant", t, summary, f"noisyquant: noise on {summary['noised']}/{summary['sites']} layer inputs")
    if "smoothing" in config.passes:
        t = time.perf_counter()
        # duplicate=True: in a post-LN BERT the residual Add reads every LN output, so the MatMuls get
        # a smoothed copy of the LN and the residual keeps the original - exact, one extra LN a site
        sites, _ = find_sites(ir_model, duplicate=True)
        summary = smooth(ir_model, collect_stats(float_proto, sites, calib), sites)
        float_proto = ir.to_proto(ir_model)
        trace.pass_done("smoothing", t, summary, f"smoothing: {summary['smoothed']}/{summary['sites']} LayerNorm sites "
            f"({summary['duplicated']} through a LayerNorm copy)")
    float_proto = transformer_rewrites(ir_model, float_proto, config, calib, trace)
    return float_proto


def transformer_rewrites(ir_model: ir.Model, float_proto: onnx.ModelProto, config: QuantConfig, calib,
                         trace: Trace) -> onnx.ModelProto:
    """AffineQuant, RepQuant, CrossQuant float rewrites (in that order, after smoothing). CrossQuant
    records its sites in the model's metadata for its run-time quantizer (see runtime_quantizers)."""
    from .passes import crossquant, repquant

    if "crossquant" in config.passes and config.activation_type.is_float:
        raise QccError(f"crossquant quantizes activations to int8 per token; scheme {config.scheme!r} "
                       "has float activations")
    if "affinequant" in config.passes:
        from .passes import affinequant

        t = time.perf_counter()
        summary = affinequant.apply(ir_model, float_proto, calib)
        float_proto = ir.to_proto(ir_model)
        trace.pass_done("affinequant", t, summary, f"affinequant: {summary['sites']} sites, output error {summary['loss_ratio']:.3f}x of identity")
    if "repquant" in config.passes:
        t = time.perf_counter()
        sites = repquant.find_sites(ir_model)
        ranges = repquant.collect_channel_ranges(float_proto, [s.tensor for s in sites], calib)
        summary = repquant.reparameterize(ir_model, ranges, sites, symmetric=config.activation_symmetric)
        float_proto = ir.to_proto(ir_model)
        trace.pass_done("repquant", t, summary, f"repquant: {summary['sites']} LayerNorm sites reparameterized to one per-tensor scale")
    if "crossquant" in config.passes:
        t = time.perf_counter()
        sites = crossquant.find_sites(ir_model)
        summary = crossquant.crossquant(ir_model, crossquant.collect_stats(float_proto, sites, calib), sites)
        float_proto = ir.to_proto(ir_model)
        trace.pass_done("crossquant", t, summary, f"crossquant: {summary['sites']} sites, quantization kernel {summary['kernel']}")
    return float_proto


def runtime_quantizers(model: ir.Model, plan: QuantPlan, config: QuantConfig):
    """Quantizer-changing hook: tensors quantized at run time (CrossQuant per-token scales) or with a
    non-uniform grid (RepQuant's log-sqrt(2) Softmax quantizer) leave the static plan here; the
    returned function inserts their quantizers into the QDQ graph after emission."""
    from .passes import crossquant, repquant

    quantizers = []
    if "crossquant" in config.passes:
        quantizers.append(crossquant.RuntimeSites(model))
    if "repquant-softmax" in config.passes:
        quantizers.append(repquant.LogSoftmaxSites(model))
    for q in quantizers:
        q.take(plan)

    def emit(qdq_model: ir.Model) -> dict:
        encodings = {}
        for q in quantizers:
            encodings.update(q.emit(qdq_model))
        return encodings

    return emit


def build_tvm(qdq_proto: onnx.ModelProto, tvm_target: dict, folder: Path, calib, eval_data, log,
              tune: dict | None = None) -> dict:
    """Lower the QDQ graph to integer code (backends/tvm), build model.so into `folder`, and check the
    built library against onnxruntime on the same QDQ graph (the reference) on a few samples."""
    from .backends import tvm as tvm_backend
    from .backends.tvm import verify

    info = tvm_backend.build(qdq_proto, tvm_target, folder, input_shapes=verify.input_shapes_from(calib), tune=tune)
    if "tune" in info:
        log(f"MetaSchedule: {info['tune']['tasks']} tasks, {info['tune']['new_trials']} new trials, "
            f"{info['tune']['tuned']} tuned schedules used, database {info['tune']['db']}")
    log(f"TVM build: {info['build_s']:.1f} s, integer ops {info['integer_ops']}, "
        f"{len(info['float_fallback'])} float fallbacks")
    if tvm_target.get("kind") == "cuda":
        from .backends.tvm import cuda

        log(f"CUDA {tvm_target['arch']}: nvcc compiled {info['cuda']['kernels']} kernels "
            f"(cubin {info['cuda']['nvcc']['cubin_bytes']} B, dp4a in PTX: {info['cuda']['dp4a']['ptx']})")
        if not cuda.has_gpu():
            info["exactness_skipped"] = "no CUDA GPU on this machine: the kernels were compiled (nvcc), not run"
            return info
    data = eval_data if eval_data is not None else calib
    sample = {k: v[:VERIFY_SAMPLES] for k, v in data.items()}
    runner = tvm_backend.Runner(folder)
    outputs = runner.run(sample)
    info["threads"] = runner.threads   # what `qcc.load` / `qcc run` use here by default (CPU affinity)
    info["exactness"] = verify.end_to_end(qdq_proto, outputs, sample)
    return info


def build_edge(target: str, qdq_proto: onnx.ModelProto, tvm_target: dict, folder: Path, calib, eval_data,
               log) -> dict:
    """Cross build for aarch64 / c / hexagon (backends/tvm/cross.py, c_source.py), then, where this
    machine can run it (aarch64 under qemu-aarch64, the C tree with the host's gcc), check it against
    onnxruntime on the same QDQ graph on a few samples. Hexagon is compile-only."""
    from .backends.tvm import cross, verify

    info = cross.build_edge(target, qdq_proto, tvm_target, folder, input_shapes=verify.input_shapes_from(calib))
    log(f"{target} build: {info['build_s']:.1f} s, integer ops {info['integer_ops']}, "
        f"{len(info['float_fallback'])} float fallbacks")
    info["exactness"] = {}
    if target == "hexagon":
        return info
    tools = ["qemu-aarch64"] if target == "aarch64" else ["gcc", "make"]
    missing = cross.missing_tools(*tools)
    if missing:
        info["exactness_skipped"] = f"{', '.join(missing)} not installed: the build was not run here"
        log(f"{target} build not checked: {info['exactness_skipped']}")
        return info
    data = eval_data if eval_data is not None else calib
    sample = {k: v[:EDGE_VERIFY_SAMPLES] for k, v in data.items()}
    runner = cross.runner_for(folder)
    outputs = runner.run(sample)
    if target == "c":
        info["code_size_host"] = runner.sizes()
    info["exactness"] = verify.end_to_end(qdq_proto, outputs, sample)
    return info


def _edge_files(files: dict) -> dict:
    # Artifact.run dispatches on "library": the Runner opens the aarch64 / c build's own runner
    out = dict(files)
    out["library"] = files.get("library") or files.get("c_source")
    if out["library"] is None:
        out.pop("library")
    return out


def _tree_hashes(folder: Path, names) -> dict:
    hashes = {}
    for name in names:
        path = folder / name
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                hashes[str(f.relative_to(folder))] = file_sha256(f)
    return hashes


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


def _weight_passes(ir_model, float_proto, config, stats, calib, trace: Trace):
    """Passes that decide how weights are quantized, after calibration: mixed precision (per-tensor
    8-bit overrides under config.weight_budget), AdaRound (rounded weights for the quantizer; the float
    reference keeps its own), analytic bias correction (shifts from folded BatchNorm statistics).
    Returns (config with the overrides, AdaRound weights or None, analytic bias shifts or None)."""
    weights = analytic = None
    if "mixed-precision" in config.passes:
        from .passes import mixed_precision

        t = time.perf_counter()
        overrides, summary = mixed_precision.plan_overrides(float_proto, build_plan(ir_model, config, stats), calib,
                                                            config.weight_budget, config.per_channel)
        config = dataclasses.replace(config, overrides={**overrides, **config.overrides})
        trace.pass_done("mixed-precision", t, summary, f"mixed precision: {summary['kept_8bit']}/{summary['layers']} layers kept at 8 bits, weight bytes "
            f"{summary.get('weight_bytes_ratio', 1.0):.3f}x of int8 (budget {config.weight_budget})")
    if "adaround" in config.passes:
        from .passes import adaround   # torch: imported only when the pass runs

        t = time.perf_counter()
        weights, summary = adaround.optimize(float_proto, ir_model, build_plan(ir_model, config, stats), calib,
                                             config.per_channel)
        improved = sum(r['kept'] for r in summary)
        trace.pass_done("adaround", t, {"layers": len(summary), "improved": improved},
                        f"adaround: {improved}/{len(summary)} layers improved on nearest rounding")
    if "bias-correction-analytic" in config.passes:
        t = time.perf_counter()
        model = ir_model
        if weights:  # the shifts must see the weights the emitter will round
            from .passes import adaround

            model = ir.serde.deserialize_model(float_proto)
            adaround.apply_weights(model, weights)
            folded = {n.outputs[0].name: n.meta["folded_bn"] for n in ir_model.graph if "folded_bn" in n.meta}
            for node in model.graph:
                if node.outputs and node.outputs[0].name in folded:
                    node.meta["folded_bn"] = folded[node.outputs[0].name]
        analytic = analytic_shift(model, build_plan(model, config, stats), config.power_of_two)
        trace.pass_done("bias-correction-analytic", t, {"layers": len(analytic)},
                        f"analytic bias correction: {len(analytic)} layers")
    return config, weights, analytic


def _bias_correction(float_proto, ir_model, plan, encodings, config, stats, calib, base_shift=None, weights=None):
    """Measure each quantized linear layer's local per-channel mean output error and fold it into
    its bias (passes/bias_correction.py), then quantize again with the corrected biases. `base_shift`
    (analytic) is already in the quantized graph: the measured residual is added to it."""
    sites = {}
    for node in ir_model.graph:
        site = bias_site(node, plan.roles)
        if site is not None:
            sites[site[1]] = site[2]
    if not sites:
        return ir_model, plan, encodings, 0
    shift = measure_shift(float_proto, ir.to_proto(ir_model), sites, calib)
    for name, delta in (base_shift or {}).items():
        shift[name] = shift[name] + delta if name in shift else delta
    ir_model, plan, encodings = quantize(float_proto, config, stats, shift, weights)
    return ir_model, plan, encodings, len(shift)


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
