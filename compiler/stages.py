"""The stages of one `qcc compile`, each a function of an explicit CompileState (no module globals):

    load         model file / ModelProto / torch module -> onnx-ir float graph, canonicalized (opset,
                 constant folding, BatchNorm folding)
    check_data   calibration / evaluation feeds against the graph's inputs (names, shapes, dtypes, NaN)
    rewrite      the pass registry's "rewrite" phase: an equivalent float graph (equalization, ...)
    calibrate    one streaming onnxruntime run: statistics of every tensor the plan may quantize
    quantize     "weights" passes -> plan -> qparams -> QDQ graph -> "correct" passes (quantize.py),
                 checked by onnx.checker
    precision    with --max-loss: the most sensitive layers raised (int16 / float) until the loss meets
                 the budget (precision_search.py)
    report       fidelity against the float graph, per-layer SQNR, sizes, the passes' figures
    package      the artifact folder, written atomically, with the target's build (targets.py) and
                 its check against onnxruntime, report.json / report.html and the manifest

`pipeline.compile_model` runs them in this order; the tuner (autotune/evaluate.py) runs load, rewrite,
calibrate and quantize itself, caching the first three across trials. The float graph exists once,
as `state.float_model`; `state.float_proto` is its serialization for onnxruntime, made once per
version of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from . import __version__
from . import precision_search
from . import quantize as quantizing
from .artifact import (MANIFEST, QDQ_MODEL, REPORT, REPORT_HTML, file_sha256, save_json, save_model,
                       write_artifact)
from .calibrate import calibrate as collect_statistics
from .canonicalize import canonicalize
from .config import SCHEMES, QuantConfig
from .data import input_specs, validate_feeds
from .errors import QccError
from .loader import load_model
from .passes import registry as passes
from .plan import QuantPlan, build_plan
from .report import build_report
from .report_html import write_compile_report
from .trace import Trace


@dataclass
class CompileState:
    """What the stages read and write; each stage fills the fields under its name."""

    source: Any                                   # path, ModelProto, ir.Model or torch.nn.Module
    config: QuantConfig
    calib: dict[str, np.ndarray]
    eval_data: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None
    example_inputs: Any = None                    # torch sources: traced with these
    progress: bool = True
    trace: Trace = field(default_factory=Trace)
    # load
    float_model: ir.Model | None = None           # the float graph: canonicalized, then rewritten in place
    canon: dict = field(default_factory=dict)
    specs: list = field(default_factory=list)
    source_hash: str | None = None
    source_bytes: int = 0
    # calibrate
    stats: dict | None = None
    # quantize
    qdq_proto: onnx.ModelProto | None = None
    plan: QuantPlan | None = None
    encodings: dict = field(default_factory=dict)
    # report / package
    metrics: list = field(default_factory=list)   # loss_metrics.Metric records for report.fidelity.metrics
    # precision
    max_loss: float | None = None                 # --max-loss: the precision search's budget
    max_loss_metric: str = "auto"
    precision: dict | None = None
    report: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    _float_proto: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def float_proto(self) -> onnx.ModelProto:
        """float_model serialized (onnxruntime runs it); made once per version of the graph."""
        if self._float_proto is None:
            self._float_proto = ir.to_proto(self.float_model)
        return self._float_proto

    @property
    def log(self):
        return self.trace.log


def min_opset(config: QuantConfig) -> int:
    """The opset the chosen schemes need (FP8 and int4 QDQ need newer ones)."""
    schemes = [config.scheme] + [s for s in config.overrides.values() if s != "float"]
    return max(max(SCHEMES[s][0].min_opset, SCHEMES[s][2].min_opset) for s in schemes)


def load(state: CompileState) -> None:
    model = load_model(state.source, state.example_inputs)
    state.source_hash = file_sha256(Path(state.source)) if isinstance(state.source, (str, Path)) else None
    opset = min_opset(state.config)
    if state.max_loss is not None:   # the precision search may emit int16 Q / DQ
        opset = max(opset, precision_search.ladder_opset(state.config))
    state.float_model, state.canon = canonicalize(model, min_opset=opset)
    state._float_proto = None
    state.specs = input_specs(state.float_model)
    state.source_bytes = state.float_proto.ByteSize()
    c = state.canon
    state.log(f"canonicalized: opset {c['opset']}, {c['nodes']} nodes, {c['constants_folded']} constants "
              f"folded, {c['batchnorms_folded']} BatchNorms folded")


def check_data(state: CompileState) -> None:
    state.calib = validate_feeds(state.specs, state.calib, "calibration")
    if state.eval_data is not None:
        state.eval_data = validate_feeds(state.specs, state.eval_data, "evaluation")
        n = len(next(iter(state.eval_data.values())))
        if state.labels is not None and len(state.labels) != n:
            raise QccError(f"labels have {len(state.labels)} entries but the evaluation set has {n} samples")


def rewrite(state: CompileState) -> None:
    """The equivalence-preserving rewrites chosen in config.passes, before calibration, so statistics,
    bias correction and the report all see the rewritten graph (its outputs equal the original's:
    tests/test_pass_*.py)."""
    ctx = passes.PassContext(state.float_model, state.float_proto, state.config, state.calib)
    passes.run_phase("rewrite", ctx, state.trace)
    state._float_proto = ctx.float_proto          # the runner serialized it after each rewrite


def calibrate(state: CompileState) -> None:
    tensors = sorted(build_plan(state.float_model, state.config).roots())
    state.stats = collect_statistics(state.float_proto, tensors, state.calib, batch_size=state.config.calib_batch_size,
                                     memory_mb=state.config.calib_memory_mb, progress=state.progress)


def quantize(state: CompileState) -> None:
    state.config, model, state.plan, state.encodings = quantizing.with_passes(
        state.float_model, state.float_proto, state.config, state.stats, state.calib, state.trace)
    state.qdq_proto = ir.to_proto(model)
    try:
        onnx.checker.check_model(state.qdq_proto)
    except onnx.checker.ValidationError as exc:
        raise QccError(f"internal error: emitted QDQ model is invalid: {str(exc).splitlines()[0]}") from None


def precision(state: CompileState) -> None:
    """With a loss budget: raise the most sensitive layers' precision until the loss meets it."""
    if state.max_loss is not None:
        state.precision = precision_search.search(state, state.max_loss, state.max_loss_metric)


def report(state: CompileState) -> None:
    state.report = build_report(state.float_proto, state.qdq_proto, state.plan, state.encodings, state.calib,
                                state.eval_data, state.labels, progress=state.progress, metrics=state.metrics)
    qdq_bytes = state.qdq_proto.ByteSize()
    state.report.update({
        "canonicalize": state.canon,
        "timings": state.trace.timings,
        "passes": state.trace.passes,
        **({"precision": state.precision} if state.precision else {}),
        "size": {"fp32_bytes": state.source_bytes, "qdq_bytes": qdq_bytes,
                 "ratio": qdq_bytes / state.source_bytes if state.source_bytes else None},
    })


def package(state: CompileState, target: str, backend, out_dir: Path, force: bool) -> Path:
    """The manifest, and with out_dir the artifact folder (atomic: a failed build leaves nothing);
    `backend` is targets.prepare's build for the target (None: the QDQ graph is the artifact)."""
    source = state.source
    state.manifest = {
        "format": 1, "qcc_version": __version__, "target": target, "config": state.config.to_dict(),
        "inputs": [vars(s) for s in state.specs],
        "outputs": [{"name": o.name} for o in state.qdq_proto.graph.output],
        "source": {"path": str(source) if isinstance(source, (str, Path)) else None, "sha256": state.source_hash},
        "encodings": state.encodings,
        "files": {"qdq_model": QDQ_MODEL, "report": REPORT},
    }
    if out_dir is None:
        return None
    report, manifest = state.report, state.manifest

    def writer(folder: Path) -> None:
        save_model(state.qdq_proto, folder / QDQ_MODEL)
        manifest["hashes"] = {QDQ_MODEL: file_sha256(folder / QDQ_MODEL)}
        if backend is not None:   # the target's build into the folder, checked where it can run
            with state.trace.timed("tvm_build_s"):
                report["backend"], files, hashed = backend.build(folder, state.qdq_proto, state.calib,
                                                                 state.eval_data, state.log)
            manifest["backend"] = {k: report["backend"][k] for k in ("target", "mcpu", "static_batch")}
            manifest["files"].update(files)
            manifest["hashes"].update({key: file_sha256(folder / path) for key, path in hashed.items()})
        save_json(folder / REPORT, report)
        manifest["files"]["report_html"] = REPORT_HTML
        save_json(folder / MANIFEST, manifest)
        write_compile_report(folder / REPORT_HTML, report, manifest)

    return write_artifact(Path(out_dir), force, writer)
