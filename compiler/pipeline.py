"""`qcc compile`, start to end: the stages of compiler/stages.py, in order, on one CompileState.

    check options (passes, target flags, output folder: before any work) -> load -> check data
    -> rewrite (equalization, smoothing, ...: opt-in) -> calibrate (float graph, streaming stats)
    -> quantize (plan, ranges, scales / zero points, QDQ; weights and correction passes around it)
    -> report (fidelity, per-layer SQNR) -> package (atomic artifact folder; llvm, cuda, aarch64, c:
    + the target's build, checked against onnxruntime where it can run)
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from . import loss_metrics, shapes, stages, targets
from .artifact import check_output_dir
from .config import QuantConfig
from .errors import QccError
from .passes import registry as passes
from .plan import QuantPlan
from .trace import Trace

# (timings key, stage) in run order; package runs last, with the target's build
STAGES = (("load_canonicalize_s", stages.load), (None, stages.check_data), (None, stages.rewrite),
          ("calibrate_s", stages.calibrate), ("quantize_s", stages.quantize), ("precision_s", stages.precision),
          ("report_s", stages.report))


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
                  tune_trials: int | None = None, tune_minutes: float | None = None,
                  metrics: list[str] | None = None, max_loss: float | None = None,
                  dynamic: list[str] | None = None, static: bool = False) -> CompileResult:
    """dynamic / static: which input dims a built library keeps open (`--dynamic INPUT:AXIS=MIN..MAX`,
    `--static`; compiler/shapes.py; default: the model's open dims). metrics: loss metrics (compiler/loss_metrics.py names or MODULE:FUNCTION) whose values the report
    adds under fidelity.metrics. max_loss: raise layers' precision until the first metric's loss (auto
    without one) is at most this (compiler/precision_search.py)."""
    config = config or QuantConfig()
    log = log or (lambda msg: None)
    chosen = [loss_metrics.resolve(m) for m in loss_metrics.parse_list(metrics)]   # import errors: now
    if max_loss is not None and not (math.isfinite(max_loss) and max_loss >= 0):
        raise QccError(f"--max-loss must be a finite number >= 0, got {max_loss}")
    passes.validate(config)   # unknown pass, a config it refuses, a missing optional package: before any work
    shape_plan = shapes.plan(dynamic, static)
    tune = targets.check_options(target, arch=arch, tune_trials=tune_trials, tune_minutes=tune_minutes,
                                 progress=progress, shapes=shape_plan)   # an unknown target, or a flag it does not take
    if out_dir is not None:
        check_output_dir(Path(out_dir), force)  # fail before any work, not after
    # no output folder, a scheme the target does not lower, a flag it refuses: before calibrating
    backend = targets.prepare(target, config, out_dir, mcpu=mcpu, mattr=mattr, arch=arch, tune=tune,
                              shapes=shape_plan, log=log)

    state = stages.CompileState(model, config, calib, eval_data, labels, example_inputs, progress, Trace(log))
    state.metrics = chosen
    if max_loss is not None:
        state.max_loss, state.max_loss_metric = max_loss, chosen[0].name if chosen else loss_metrics.AUTO
    for key, stage in STAGES:
        with state.trace.timed(key):
            stage(state)
    folder = stages.package(state, target, backend, out_dir, force)
    return CompileResult(state.qdq_proto, state.float_proto, state.plan, state.report, state.manifest, folder)
