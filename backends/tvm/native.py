"""The llvm / x86-64 and cuda targets as the compiler drives them (their records: qcc/backends/targets/).

Each builds model.so into the artifact folder (pipeline.build) and checks it against onnxruntime on
the same QDQ graph on a few samples (runtime.Runner, exactness.end_to_end); a cuda build is checked
only where this machine has a GPU (its kernels were compiled by nvcc either way).
"""

from __future__ import annotations

import numpy as np
from qcc import shapes

from . import cuda, exactness
from .pipeline import build, io_spec
from .runtime import Runner


def build_llvm(job) -> dict:
    """model.so for this host's CPU (MetaSchedule-tuned with job.tune), checked here."""
    info = _build(job)
    return _check(job, info)


def build_cuda(job) -> dict:
    """model.so with CUDA kernels for job.target["arch"]; run and checked only on a machine with a GPU."""
    info = _build(job, shapes.ShapePlan(static=True))   # GPU schedules for symbolic dims: not measured yet
    job.log(f"CUDA {job.target['arch']}: nvcc compiled {info['cuda']['kernels']} kernels "
            f"(cubin {info['cuda']['nvcc']['cubin_bytes']} B, dp4a in PTX: {info['cuda']['dp4a']['ptx']})")
    if not cuda.has_gpu():
        info["exactness_skipped"] = "no CUDA GPU on this machine: the kernels were compiled (nvcc), not run"
        return info
    return _check(job, info)


def _build(job, shape_plan=None) -> dict:
    plan = shape_plan or job.shapes
    dims = shapes.resolve(plan, io_spec(job.qdq_model)["inputs"], {k: np.shape(v) for k, v in job.calib.items()})
    info = build(job.qdq_model, job.target, job.folder, input_shapes=dims["input_shapes"],
                 batch=1 if dims["static"] else None, sizes=dims["sizes"], ranges=dims["ranges"],
                 require_dynamic=bool(plan.dynamic), tune=job.tune)
    _log_shapes(job, info)
    if "tune" in info:
        job.log(f"MetaSchedule: {info['tune']['tasks']} tasks, {info['tune']['new_trials']} new trials, "
                f"{info['tune']['tuned']} tuned schedules used, database {info['tune']['db']}")
    job.log(f"TVM build: {info['build_s']:.1f} s, integer ops {info['integer_ops']}, "
            f"{len(info['float_fallback'])} float fallbacks")
    return info


def _log_shapes(job, info: dict) -> None:
    if info["dynamic"]:
        job.log("dynamic dims: " + ", ".join(f"{k} {r[0]}..{r[1] or 'any'}" for k, r in info["dynamic"].items())
                + " (--static pins them to the calibration shape)")
    if info.get("static_reason"):
        job.log(f"static build at the calibration shape: {info['static_reason']}")


def _check(job, info: dict) -> dict:
    sample = job.check_feeds()
    runner = Runner(job.folder)
    outputs = runner.run(sample)
    info["threads"] = runner.threads   # what `qcc.load` / `qcc run` use here by default (CPU affinity)
    info["exactness"] = exactness.end_to_end(job.qdq_model, outputs, sample)
    return info
