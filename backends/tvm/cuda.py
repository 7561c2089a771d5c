"""`--target cuda --arch sm_80|sm_86|sm_89|sm_90`: qcc's integer / FP8 Relax compiled for NVIDIA GPUs.

What TVM 0.27 gets wrong on CUDA, and what qcc does instead:

* The default CUDA pipeline's dlight ``gpu.Matmul`` rule (its tensor-core path) crashes on int8
  matmuls larger than 64 (``fragment_info_``). qcc's pipeline is the default one with that rule
  left out: int8 x int8 -> int32 conv2d / matmul keep dlight's GEMV / reduction / fallback
  schedules, and nvcc turns their 4-wide int8 dot products into ``dp4a``.
* FP8 casts fused into an epilogue produce invalid CUDA (``__nv_fp8x2_e4m3 has no member "x"``).
  qcc never emits a float -> FP8 cast: FP8 values are made by qcc's integer encode (fp8.py) and
  stored as bits (a uint8 -> FP8 reinterpret). conv2d / matmul on FP8-dequantized operands take the
  FP8 tensors themselves (fp8.operands_to_fp8: the scales move after the accumulation), so the
  kernels read ``__nv_fp8_e4m3`` / ``__nv_fp8_e5m2`` and the GPU converts them in hardware
  (``cvt.rn.f16x2.e4m3x2``), accumulating in float32. TVM 0.27 has no FP8 tensor-core (mma)
  schedule, so these are CUDA-core kernels.
* FP8 is refused below sm_89 (Ada / Hopper are the first GPUs with FP8 hardware).

The exported library embeds CUDA *source* (TVM compiles it when it is loaded on a GPU), so the
artifact builds on a machine without one. To make a broken kernel fail the build rather than the
deployment, ``check_kernels`` compiles that source with nvcc for the chosen arch (cubin and PTX)
and records their sizes, how many ``dp4a`` / FP8 ``cvt`` instructions the PTX has and how many kernels
read FP8 operands.
"""

from __future__ import annotations

import re
import shutil
import time

import tvm
from qcc.errors import QccError
from tvm import relax

from . import compat, fp8

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
FP8_ARCHS = ("sm_89", "sm_90")


def make_target(arch: str | None) -> dict:
    """The TVM target dict for `arch` (QccError on an arch qcc does not build for)."""
    if arch is None:
        raise QccError(f"--target cuda needs --arch (one of {', '.join(ARCHS)})")
    if arch not in ARCHS:
        raise QccError(f"unsupported CUDA arch {arch!r}; choose from {', '.join(ARCHS)}")
    return {"kind": "cuda", "arch": arch}


def check_schemes(arch: str, schemes) -> None:
    """FP8 schemes need sm_89+ (raised before calibrating)."""
    fp8 = sorted(s for s in schemes if str(s).startswith("fp8"))
    if fp8 and arch not in FP8_ARCHS:
        raise QccError(f"{', '.join(fp8)} needs a GPU with FP8 support (--arch {' or '.join(FP8_ARCHS)}); "
                       f"{arch} has none: use an int8 scheme on {arch}")


def configure(options) -> dict:
    """`qcc compile --target cuda --arch sm_XX` -> the TVM target dict, refusing FP8 schemes below sm_89
    (the target registry's `configure`: qcc/targets.py)."""
    target = make_target(options.arch)
    check_schemes(options.arch, options.schemes)   # FP8 needs sm_89+
    return target


def validate_target(target: dict) -> dict:
    if not isinstance(target, dict) or target.get("kind") != "cuda":
        raise QccError(f"expected a CUDA target dict like {{'kind': 'cuda', 'arch': 'sm_89'}}, got {target!r}")
    make_target(target.get("arch"))
    return dict(target)


def pipeline(target):
    """TVM's default CUDA Relax pipeline without dlight's gpu.Matmul rule (see the module doc)."""
    from tvm.relax.backend.cuda import pipeline as cuda_pipeline
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            legalize = [p for p in cuda_pipeline.legalize_passes(target) if p.info.name != "ApplyDefaultSchedule"]
            schedule = dl.ApplyDefaultSchedule(dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                                               dl.gpu.Fallback())
            seq = tvm.transform.Sequential(cuda_pipeline.library_dispatch_passes(target) + legalize + [schedule]
                                           + cuda_pipeline.dataflow_lower_passes(target)
                                           + cuda_pipeline.finalize_passes(target))
            return seq(mod)

    return _pipeline


def compile_module(mod, target: dict):
    """Returns (executable, seconds). FP8 graphs (sm_89+ only) get FP8 conv2d / matmul operands."""
    arch = validate_target(target)["arch"]
    tgt = compat.make_target(target)
    t0 = time.perf_counter()
    if fp8.fp8_ops(mod):
        check_schemes(arch, ["fp8"])
        mod, _ = fp8.operands_to_fp8(mod, "fp8")
    ex = tvm.compile(mod, target=tgt, relax_pipeline=pipeline(tgt))
    return ex, time.perf_counter() - t0


def cuda_source(ex) -> str:
    """The CUDA C source of every kernel in an executable."""
    out = []

    def walk(m):
        if m.kind == "cuda":
            out.append(m.inspect_source())
        for i in m.imports:
            walk(i)

    walk(ex.mod)
    return "\n".join(out)


def _kernel_bodies(src: str) -> list[str]:
    """The text of each kernel definition (declaration line to the next kernel)."""
    starts = [m.start() for m in re.finditer(r'extern "C" __global__ void [^;{]*\{', src)]
    return [src[a:b] for a, b in zip(starts, starts[1:] + [len(src)])]


def kernel_names(src: str) -> list[str]:
    return sorted(set(re.findall(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(', src)))


def nvcc_compile(src: str, arch: str) -> tuple[bytes, str]:
    """CUDA source -> (cubin, PTX) with nvcc for `arch`; QccError if nvcc is missing or rejects it."""
    from tvm.support import nvcc

    if shutil.which("nvcc") is None:
        raise QccError("--target cuda compiles every generated kernel with nvcc to prove it builds; nvcc is not "
                       "on PATH (install the CUDA toolkit)")
    try:
        with compat.make_target(make_target(arch)):  # without a current target compile_cuda probes for a GPU
            cubin = nvcc.compile_cuda(src, target_format="cubin", arch=arch, compiler="nvcc")
            ptx = nvcc.compile_cuda(src, target_format="ptx", arch=arch, compiler="nvcc").decode()
    except Exception as exc:  # noqa: BLE001 - nvcc's diagnostics arrive as a RuntimeError
        errors = [line for line in str(exc).splitlines() if "error" in line]
        raise QccError(f"nvcc rejected the generated CUDA for {arch}: {(errors or [str(exc)])[0][:300]}") from None
    return cubin, ptx


def check_kernels(ex, target: dict) -> dict:
    """Compile the executable's CUDA source with nvcc for target["arch"] (a broken kernel fails the
    build). Returns what the build report records."""
    arch = validate_target(target)["arch"]
    src = cuda_source(ex)
    if not src:
        raise QccError("internal error: the CUDA build has no CUDA kernels")
    t0 = time.perf_counter()
    cubin, ptx = nvcc_compile(src, arch)
    return {
        "arch": arch,
        "kernels": len(kernel_names(src)),
        "source_bytes": len(src),
        "nvcc": {"ok": True, "cubin_bytes": len(cubin), "ptx_bytes": len(ptx),
                 "seconds": round(time.perf_counter() - t0, 2)},
        "dp4a": {"source": src.count("__dp4a"), "ptx": len(re.findall(r"\bdp4a\.", ptx))},
        "fp8": {"kernels_with_fp8_operands": sum("__nv_fp8" in k for k in _kernel_bodies(src)),
                "cvt_in_ptx": len(re.findall(r"cvt\.[a-z0-9.]*e[45]m[23]", ptx))},
    }


def has_gpu() -> bool:
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime at all
        return False


def load_vm(path):
    """The library's Relax VM on GPU 0 (QccError without one)."""
    if not has_gpu():
        raise QccError(f"{path} is a CUDA build and this machine has no CUDA GPU")
    lib = tvm.runtime.load_module(str(path))
    return relax.VirtualMachine(lib, tvm.cuda(0))


def to_device(array):
    import numpy as np

    return tvm.runtime.tensor(np.ascontiguousarray(array), device=tvm.cuda(0))
