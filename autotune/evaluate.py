"""One tuning trial: QuantConfig -> metrics (loss, fidelity, size, latency), with the costly parts cached.

A trial runs the stages of `qcc compile` (qcc.stages: load -> rewrite -> calibrate -> quantize, then
fidelity), but keeps what does not depend on the clipping / type choices across trials:

    canonical float graph      per minimum opset (FP8 / int4 schemes need a newer opset)
    rewritten float graph      per (opset, passes): the passes rewrite the float graph
    calibration statistics     per rewritten float graph (keyed by its bytes' hash): min/max and
                               histograms don't depend on the clipping method, scheme or granularity
    FP32 reference outputs     per rewritten float graph, on the evaluation set

Calibration runs with a fixed batch size (`calib_batch_size`), so a tensor's statistics are the same
whichever set of tensors is calibrated with it; a trial needing a tensor not yet in the cache
calibrates just that tensor. The same config compiled by `compile_model` (with the same fixed batch
size) therefore gives the same QDQ graph and the same fidelity: `TrialEvaluator.export` does exactly
that to write the winning artifact.

Loss (lower is better), one number per trial: a metric of compiler/loss_metrics.py's registry
(accuracy, disagreement, confident-disagreement, kl, cosine, ctc-line-exact, box-f1) or a user's
MODULE:FUNCTION, on the FP32 and quantized outputs of the evaluation set. "auto" picks accuracy with
labels, else confident-disagreement for [N, C] class scores, else cosine. A user metric is tried once
at start (FP32 against itself), so an import error or a non-number fails before the first trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from qcc import pipeline, stages, targets
from qcc import quantize as quantizing
from qcc.backends import onnxruntime as ort_backend
from qcc.calibrate import calibrate
from qcc.config import QuantConfig
from qcc.data import validate_feeds
from qcc import loss_metrics
from qcc.errors import QccError
from qcc.metrics import fidelity
from qcc.plan import build_plan
from qcc.statistics import TensorStats
from qcc.trace import Trace

LOSSES = (loss_metrics.AUTO, *loss_metrics.names())   # or a user's MODULE:FUNCTION
CALIB_BATCH = 32          # fixed so statistics don't depend on which tensors are calibrated together
LATENCY_RUNS = 30
LATENCY_TVM = ("llvm", "x86-64")   # targets whose built library runs here; onnx latency is onnxruntime's
REWRITE_CACHE = 8         # rewritten float graphs kept (statistics are kept for every graph seen)
# config fields no float-graph rewrite reads: trials differing only in these share one rewritten graph
REWRITE_FREE = {"calibration", "percentile", "power_of_two", "exclude", "overrides", "mask_threshold",
                "weight_budget", "bias_int32"}


class TrialEvaluator:
    """Evaluates QuantConfigs on one model and one data set; see the module docstring."""

    def __init__(self, model: str | Path, calib: dict[str, np.ndarray], eval_data: dict[str, np.ndarray] | None = None,
                 labels: np.ndarray | None = None, *, target: str = "onnx", loss: str = "auto",
                 latency: bool = False, calib_batch_size: int = CALIB_BATCH, mcpu: str | None = None):
        if loss not in LOSSES and ":" not in loss:
            raise QccError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}, or give MODULE:FUNCTION")
        targets.get(target)   # QccError for an unknown target, naming those this build supports
        self.model = str(model)
        self.target, self.latency, self.mcpu = target, latency, mcpu
        self.calib_batch_size = calib_batch_size
        loaded = self._loaded(QuantConfig())          # the canonical float graph: inputs, outputs, size
        base = self._base = loaded.float_proto
        specs = loaded.specs
        self.calib = validate_feeds(specs, calib, "calibration")
        self.eval_data = validate_feeds(specs, eval_data, "evaluation") if eval_data is not None else None
        data = self.eval_data if self.eval_data is not None else self.calib
        self.labels = None if labels is None or self.eval_data is None else np.asarray(labels)
        if self.labels is not None and len(self.labels) != len(next(iter(data.values()))):
            raise QccError(f"labels have {len(self.labels)} entries but the evaluation set has "
                           f"{len(next(iter(data.values())))} samples")
        self.source_bytes = base.ByteSize()
        self.output_names = [o.name for o in base.graph.output]
        self._rewritten: dict[str, tuple[ir.Model, onnx.ModelProto, str]] = {}
        self._stats: dict[str, dict[str, TensorStats]] = {}
        self._reference: dict[str, list[np.ndarray]] = {}
        self.loss = self._resolve_loss(loss)          # the metric's name (a user's: MODULE:FUNCTION)
        self.metric = loss_metrics.resolve(self.loss)
        if self.metric.user:                          # fail now, not as every trial's error
            _, proto, digest = self.float_graph(self.with_batch(QuantConfig()))
            ref = self.reference(proto, digest)
            loss_metrics.evaluate(self.metric, ref, ref, self.labels)

    # ---- caches --------------------------------------------------------------------------------
    def _loaded(self, config: QuantConfig) -> stages.CompileState:
        """The load stage's state for config (a fresh graph each call: rewrites change it in place)."""
        state = stages.CompileState(self.model, config, getattr(self, "calib", None), progress=False)
        stages.load(state)
        return state

    def float_graph(self, config: QuantConfig) -> tuple[ir.Model, onnx.ModelProto, str]:
        """The canonicalized, rewritten float graph for config (the in-memory model, which carries
        canonicalization metadata such as folded BatchNorms, its proto, and the proto's hash).
        Callers must not modify the model."""
        fields = {k: v for k, v in config.to_dict().items() if k not in REWRITE_FREE}
        key = json.dumps([stages.min_opset(config), fields], sort_keys=True, default=str)
        if key not in self._rewritten:
            state = self._loaded(config)
            stages.rewrite(state)
            proto = state.float_proto
            if len(self._rewritten) >= REWRITE_CACHE:
                self._rewritten.pop(next(iter(self._rewritten)))
            self._rewritten[key] = (state.float_model, proto, hashlib.sha256(proto.SerializeToString()).hexdigest())
        return self._rewritten[key]

    def statistics(self, float_proto: onnx.ModelProto, digest: str, tensors: set[str]) -> dict[str, TensorStats]:
        stats = self._stats.setdefault(digest, {})
        missing = sorted(t for t in tensors if t not in stats)
        if missing:
            stats.update(calibrate(float_proto, missing, self.calib, batch_size=self.calib_batch_size,
                                   progress=False))
        return stats

    def reference(self, float_proto: onnx.ModelProto, digest: str) -> list[np.ndarray]:
        if digest not in self._reference:
            self._reference[digest] = self._run(float_proto)
        return self._reference[digest]

    def _run(self, proto: onnx.ModelProto) -> list[np.ndarray]:
        data = self.eval_data if self.eval_data is not None else self.calib
        session = ort_backend.make_session(proto)
        parts = [session.run(self.output_names, b)
                 for b in ort_backend.batches(data, ort_backend.batch_size_for(proto, 32))]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.output_names))]

    # ---- a trial -------------------------------------------------------------------------------
    def with_batch(self, config: QuantConfig) -> QuantConfig:
        """config with the fixed calibration batch size the caches assume."""
        return dataclasses.replace(config, calib_batch_size=self.calib_batch_size)

    def quantize(self, config: QuantConfig) -> tuple[onnx.ModelProto, onnx.ModelProto, str]:
        """(float graph, QDQ graph, float-graph hash) for config: compile_model's quantization stages,
        in its order, on cached statistics (tests/test_autotune.py checks both give the same graph)."""
        config = self.with_batch(config)
        float_model, float_proto, digest = self.float_graph(config)
        stats = self.statistics(float_proto, digest, build_plan(float_model, config).roots())
        _, model, _, _ = quantizing.with_passes(float_model, float_proto, config, stats, self.calib, Trace())
        qdq = ir.to_proto(model)
        onnx.checker.check_model(qdq)  # as compile does: an invalid graph is a failed trial
        return float_proto, qdq, digest

    def __call__(self, config: QuantConfig) -> dict[str, Any]:
        t0 = time.perf_counter()
        float_proto, qdq, digest = self.quantize(config)
        ref = self.reference(float_proto, digest)
        q = self._run(qdq)
        outputs = fidelity(ref, q, self.output_names, self.labels)
        metrics: dict[str, Any] = {"loss": loss_metrics.evaluate(self.metric, ref, q, self.labels), "fidelity": outputs,
                                   "size_bytes": qdq.ByteSize(), "size_ratio": qdq.ByteSize() / self.source_bytes}
        if self.latency:
            metrics["latency_ms"] = self.measure_latency(qdq)
        metrics["seconds"] = time.perf_counter() - t0
        return metrics

    def measure_latency(self, qdq: onnx.ModelProto) -> float:
        """Median batch-1 latency (ms): onnxruntime on the QDQ graph for --target onnx, the TVM-built
        library for llvm targets."""
        data = self.eval_data if self.eval_data is not None else self.calib
        feeds = {k: v[:1] for k, v in data.items()}
        if self.target in LATENCY_TVM:
            from qcc.backends import tvm as tvm_backend

            with tempfile.TemporaryDirectory(prefix="qcc-tune-") as tmp:
                tvm_backend.build(qdq, tvm_backend.detect_target(kind="llvm", mcpu=self.mcpu), Path(tmp),
                                  input_shapes=tvm_backend.input_shapes_from(self.calib))
                runner = tvm_backend.Runner(Path(tmp))
                return _median_ms(lambda: runner.run(feeds))
        session = ort_backend.make_session(qdq, threads=1)
        return _median_ms(lambda: session.run(None, feeds))

    def export(self, config: QuantConfig, out_dir: str | Path, force: bool = False, log=None):
        """Write the artifact for config with qcc's own compile (same statistics batch size, so the
        same QDQ graph the trial measured)."""
        return pipeline.compile_model(self.model, self.calib, config=self.with_batch(config), target=self.target,
                                      eval_data=self.eval_data, labels=self.labels, out_dir=out_dir,
                                      force=force, progress=False, mcpu=self.mcpu, log=log, metrics=[self.loss])

    def _resolve_loss(self, loss: str) -> str:
        """loss with "auto" decided, checked against the model's outputs (on two samples)."""
        data = self.eval_data if self.eval_data is not None else self.calib
        session = ort_backend.make_session(self._base)
        outs = session.run(self.output_names, {k: v[:2] for k, v in data.items()})
        if loss == loss_metrics.AUTO:
            return loss_metrics.auto(outs, self.labels)
        if loss in loss_metrics.METRICS:
            reason = loss_metrics.METRICS[loss].needs(outs, self.labels)
            if reason:
                raise QccError(f"loss {loss!r} needs {reason}")
        return loss


def _median_ms(fn, warmup: int = 3, runs: int = LATENCY_RUNS) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)
