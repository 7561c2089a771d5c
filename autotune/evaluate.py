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

Loss (lower is better), one number per trial:
    accuracy      with labels: 100 * (accuracy_fp32 - accuracy_quantized), in accuracy points
    disagreement  without labels: 100 * (1 - agreement where FP32 max-probability >= 0.5), in points
    kl            mean KL(FP32 || quantized) over the evaluation samples
    cosine        100 * (1 - cosine(FP32, quantized)) for outputs that are not class scores
"auto" picks accuracy with labels, else disagreement for [N, C] class scores, else cosine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
from qcc.errors import QccError
from qcc.metrics import fidelity
from qcc.plan import build_plan
from qcc.statistics import TensorStats
from qcc.trace import Trace

LOSSES = ("auto", "accuracy", "disagreement", "kl", "cosine")
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
        if loss not in LOSSES:
            raise QccError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
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
        self.loss = self._resolve_loss(loss)

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
        outputs = fidelity(ref, self._run(qdq), self.output_names, self.labels)
        metrics: dict[str, Any] = {"loss": loss_of(outputs, self.loss), "fidelity": outputs,
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
                                      force=force, progress=False, mcpu=self.mcpu, log=log)

    def _resolve_loss(self, loss: str) -> str:
        first = self._classifier_output()
        if loss == "auto":
            if self.labels is not None and first is not None:
                return "accuracy"
            return "disagreement" if first is not None else "cosine"
        if loss == "accuracy" and (self.labels is None or first is None):
            raise QccError("loss 'accuracy' needs --labels and a model with [N, C] class scores")
        if loss in ("disagreement", "kl") and first is None:
            raise QccError(f"loss {loss!r} needs a model output of [N, C] class scores")
        return loss

    def _classifier_output(self) -> str | None:
        data = self.eval_data if self.eval_data is not None else self.calib
        session = ort_backend.make_session(self._base)
        outs = session.run(self.output_names, {k: v[:2] for k, v in data.items()})
        for name, out in zip(self.output_names, outs):
            if np.issubdtype(out.dtype, np.floating) and out.ndim == 2 and out.shape[1] > 1:
                return name
        return None


def loss_of(outputs: dict[str, dict], kind: str) -> float:
    """The trial's loss from per-output fidelity (see the module docstring)."""
    for entry in outputs.values():
        if kind == "accuracy" and "accuracy_drop_points" in entry:
            return float(entry["accuracy_drop_points"])
        if kind == "disagreement" and "agreement_confident" in entry:
            v = entry["agreement_confident"]
            return 100.0 * (1.0 - (v if not math.isnan(v) else entry["agreement"]))
        if kind == "kl" and "kl" in entry:
            return float(entry["kl"])
    cos = [e["cosine"] for e in outputs.values() if "cosine" in e]
    return 100.0 * (1.0 - min(cos)) if cos else float("inf")


def _median_ms(fn, warmup: int = 3, runs: int = LATENCY_RUNS) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)
