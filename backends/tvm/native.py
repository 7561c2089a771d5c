"""The llvm / x86-64 and cuda targets as the compiler drives them (their records: qcc/backends/targets/).

Each builds model.so into the artifact folder (pipeline.build) and checks it against onnxruntime on
the same QDQ graph on a few samples (runtime.Runner, exactness.end_to_end); a cuda build is checked
only where this machine has a GPU (its kernels were compiled by nvcc either way).
"""

from __future__ import annotations

from . import cuda, exactness
from .artifact_io import input_shapes_from
from .pipeline import build
from .runtime import Runner


def build_llvm(job) -> dict:
    """model.so for this host's CPU (MetaSchedule-tuned with job.tune), checked here."""
    info = _build(job)
    return _check(job, info)


def build_cuda(job) -> dict:
    """model.so with CUDA kernels for job.target["arch"]; run and checked only on a machine with a GPU."""
    info = _build(job)
    job.log(f"CUDA {job.target['arch']}: nvcc compiled {info['cuda']['kernels']} kernels "
            f"(cubin {info['cuda']['nvcc']['cubin_bytes']} B, dp4a in PTX: {info['cuda']['dp4a']['ptx']})")
    if not cuda.has_gpu():
        info["exactness_skipped"] = "no CUDA GPU on this machine: the kernels were compiled (nvcc), not run"
        return info
    return _check(job, info)


def _build(job) -> dict:
    info = build(job.qdq_model, job.target, job.folder, input_shapes=input_shapes_from(job.calib), tune=job.tune)
    if "tune" in info:
        job.log(f"MetaSchedule: {info['tune']['tasks']} tasks, {info['tune']['new_trials']} new trials, "
                f"{info['tune']['tuned']} tuned schedules used, database {info['tune']['db']}")
    job.log(f"TVM build: {info['build_s']:.1f} s, integer ops {info['integer_ops']}, "
            f"{len(info['float_fallback'])} float fallbacks")
    return info


def _check(job, info: dict) -> dict:
    sample = job.check_feeds()
    runner = Runner(job.folder)
    outputs = runner.run(sample)
    info["threads"] = runner.threads   # what `qcc.load` / `qcc run` use here by default (CPU affinity)
    info["exactness"] = exactness.end_to_end(job.qdq_model, outputs, sample)
    return info
