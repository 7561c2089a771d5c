"""Cross builds for edge targets: aarch64 boards (ahead of time, runs with a bundled runner) and
Hexagon DSPs (object code only).

aarch64: the integer Relax module (lowering/) is reshaped for Arm's int8 dot product
(dotprod_layout.py), compiled by LLVM for ``aarch64-linux-gnu`` and linked with Debian's
``aarch64-linux-gnu-g++``. The artifact folder is self-contained: ``model.so`` (the Relax VM
executable), ``lib/`` (libtvm_runtime.so and libtvm_ffi.so taken from the aarch64 apache-tvm /
apache-tvm-ffi wheels of the same versions as the compiler), ``qcc_run`` (runner_aarch64/qcc_run.cc,
compiled here for aarch64) and ``runner_io.txt`` (its input signature). Copy the folder to a board
and run ``./qcc_run . in out``. On this machine :class:`QemuRunner` runs it under qemu-aarch64.

Hexagon: TVM 0.27 has no Hexagon runtime (USE_HEXAGON is off in the wheel) and no simulator ships
here, so the build stops at an object file of the fused kernels (``model_hexagon.o``) produced by
LLVM's Hexagon backend; nothing runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from qcc.errors import QccError

from . import compat, dotprod_layout, exactness
from .artifact_io import (BATCH, IO_SPEC, LIBRARY, ArtifactIO, check_call, chunks, input_shapes_from,  # noqa: F401
                          missing_tools, read_outputs, write_atomic, write_inputs, write_spec)
from .pipeline import lower

AARCH64_TRIPLE = "aarch64-linux-gnu"
# mcpu -> LLVM features. dotprod gives sdot (4 x int8 products into an int32 lane).
AARCH64_PRESETS = {
    "cortex-a76": ["+neon", "+dotprod"],
    "cortex-a55": ["+neon", "+dotprod"],
    "cortex-a53": ["+neon"],
}
AARCH64_DEFAULT = "cortex-a76"
HEXAGON_DEFAULT = "hexagonv68"

CXX = "aarch64-linux-gnu-g++"
SYSROOT = "/usr/aarch64-linux-gnu"
QEMU = "qemu-aarch64"
RUNNER = "qcc_run"
RUNNER_IO = "runner_io.txt"
RUNTIME_DIR = "lib"
HEXAGON_OBJECT = "model_hexagon.o"
# file in the wheel -> name in the artifact's lib/ (libtvm_runtime.so finds libtvm_ffi.so via $ORIGIN)
_RUNTIME_FILES = {"apache_tvm": "tvm/lib/libtvm_runtime.so", "apache_tvm_ffi": "tvm_ffi/lib/libtvm_ffi.so"}
_RUNNER_SOURCE = Path(__file__).with_name("runner_aarch64") / "qcc_run.cc"


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

def aarch64_target(mcpu: str | None = None, mattr: list[str] | None = None) -> dict:
    """The TVM target for an aarch64 Linux board. A preset mcpu brings its features; ``mattr``
    (e.g. ["+neon", "-dotprod"]) replaces them."""
    mcpu = mcpu or AARCH64_DEFAULT
    if not compat.is_valid_cpu(mcpu, AARCH64_TRIPLE):
        raise QccError(f"LLVM does not know mcpu={mcpu!r} for aarch64; presets: {', '.join(AARCH64_PRESETS)}")
    if mattr is None:
        mattr = AARCH64_PRESETS.get(mcpu, ["+neon"])
    target = {"kind": "llvm", "mtriple": AARCH64_TRIPLE, "mcpu": mcpu, "mattr": list(mattr)}
    _check_mattr(target)
    return target


def hexagon_target(mcpu: str | None = None) -> dict:
    mcpu = mcpu or HEXAGON_DEFAULT
    if not compat.is_valid_cpu(mcpu, "hexagon"):
        raise QccError(f"LLVM does not know mcpu={mcpu!r} for hexagon (e.g. hexagonv66, hexagonv68, hexagonv73)")
    return {"kind": "llvm", "mtriple": "hexagon", "mcpu": mcpu}


def _check_mattr(target: dict) -> None:
    # LLVM only logs an unknown feature and drops it: refuse instead, like an unknown mcpu
    for feat in target["mattr"]:
        if not isinstance(feat, str) or len(feat) < 2 or feat[0] not in "+-":
            raise QccError(f"--mattr entries look like '+dotprod' or '-neon', got {feat!r}")
        if feat[0] == "+" and not compat.cpu_has_features(target, [feat[1:]]):
            raise QccError(f"LLVM does not know the aarch64 feature {feat[1:]!r}")


def has_dotprod(target: dict) -> bool:
    return compat.cpu_has_features(target, ["dotprod"])


# ---------------------------------------------------------------------------------------------
# Tools and the aarch64 runtime
# ---------------------------------------------------------------------------------------------

def _require(*tools: str) -> None:
    missing = missing_tools(*tools)
    if missing:
        raise QccError(f"{', '.join(missing)} not found: install Debian's qemu-user / g++-aarch64-linux-gnu "
                       "(apt-get install qemu-user gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)")


def wheel_dir() -> Path:
    """Where the aarch64 apache-tvm / apache-tvm-ffi wheels are kept ($QCC_AARCH64_WHEELS)."""
    return Path(os.environ.get("QCC_AARCH64_WHEELS", "~/.cache/qcc/aarch64-wheels")).expanduser()


def _download_hint(folder: Path) -> str:
    return (f"pip download --platform manylinux_2_28_aarch64 --only-binary=:all: --no-deps "
            f"apache-tvm=={compat.TVM_VERSION} apache-tvm-ffi=={compat.FFI_VERSION} -d {folder}")


def runtime_wheels() -> dict[str, Path]:
    """The aarch64 wheels of exactly the versions the compiler is (the runtime must match it)."""
    folder = wheel_dir()
    found = {}
    for dist, version in (("apache_tvm", compat.TVM_VERSION), ("apache_tvm_ffi", compat.FFI_VERSION)):
        hits = sorted(folder.glob(f"{dist}-{version}-*aarch64*.whl"))
        if not hits:
            raise QccError(f"no aarch64 {dist.replace('_', '-')} {version} wheel in {folder} (the artifact "
                           f"bundles its runtime): run `{_download_hint(folder)}`")
        found[dist] = hits[0]
    return found


def copy_runtime(dest: Path) -> list[str]:
    """Extract libtvm_runtime.so and libtvm_ffi.so for aarch64 into dest; returns their names."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for dist, wheel in runtime_wheels().items():
        member = _RUNTIME_FILES[dist]
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest / Path(member).name, "wb") as out:
            shutil.copyfileobj(src, out)
        names.append(Path(member).name)
    return names


def compile_runner(out: Path, runtime: Path) -> None:
    """Build runner_aarch64/qcc_run.cc for aarch64 against the tvm-ffi headers (same version as the
    bundled libtvm_ffi.so), finding its libraries in $ORIGIN/lib on the board."""
    cmd = [CXX, "-O2", "-std=c++17", *(f"-I{i}" for i in compat.ffi_include_paths()), str(_RUNNER_SOURCE),
           "-o", str(out), f"-L{runtime}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
           f"-Wl,-rpath,$ORIGIN/{RUNTIME_DIR}"]
    check_call(cmd, "compiling the aarch64 runner")


# ---------------------------------------------------------------------------------------------
# Builds
# ---------------------------------------------------------------------------------------------

def runner_io_text(spec: dict) -> str:
    """runner_io.txt: the compiled (static) input signature and the output dtypes for qcc_run."""
    lines = []
    for inp in spec["inputs"]:
        if BATCH in inp["shape"]:
            raise QccError("the aarch64 runner needs a static batch size")
        lines.append(" ".join(["input", inp["dtype"], str(len(inp["shape"])), *map(str, inp["shape"])]))
    lines += [f"output {o['dtype']}" for o in spec["outputs"]]
    return "\n".join(lines) + "\n"


def build_aarch64(qdq_model, target: dict, out_dir: Path, input_shapes: dict | None = None) -> dict:
    """Cross-compile the QDQ model for an aarch64 board into out_dir (see the module docstring)."""
    _require(CXX)
    wheels = runtime_wheels()           # fail before compiling, not after
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mod, spec, integer_ops, fallback = lower(qdq_model, input_shapes, batch=1)
    mod, signed = dotprod_layout.prepare(mod)
    t_lower = time.perf_counter() - t0
    ex, t_compile = compat.compile_module(mod, target)
    t1 = time.perf_counter()
    write_atomic(out_dir, LIBRARY, lambda p: compat.export_library(ex, p, cross_compiler=CXX))
    runtime = copy_runtime(out_dir / RUNTIME_DIR)
    compile_runner(out_dir / RUNNER, out_dir / RUNTIME_DIR)
    t_export = time.perf_counter() - t1
    (out_dir / RUNNER_IO).write_text(runner_io_text(spec))
    write_spec(out_dir, {**spec, "target": target})
    return {
        "target": target,
        "mcpu": target.get("mcpu"),
        "dotprod": has_dotprod(target),
        "integer_ops": integer_ops,
        "float_fallback": fallback,
        "signed_activation_ops": signed,
        "inputs": spec["inputs"],
        "static_batch": True,
        "instructions": instruction_mix(out_dir / LIBRARY),
        "runtime": {"libraries": [f"{RUNTIME_DIR}/{n}" for n in runtime], "wheels": [w.name for w in wheels.values()]},
        "build_s": round(time.perf_counter() - t0, 3),
        "timings": {"import_lower_s": round(t_lower, 3), "compile_s": round(t_compile, 3),
                    "export_s": round(t_export, 3)},
        "versions": compat.check_versions(),
        "files": {"library": LIBRARY, "io": IO_SPEC, "runner": RUNNER, "runner_io": RUNNER_IO,
                  **{f"runtime_{i}": f"{RUNTIME_DIR}/{n}" for i, n in enumerate(runtime)}},
    }


def build_hexagon(qdq_model, target: dict, out_dir: Path, input_shapes: dict | None = None) -> dict:
    """Compile the fused kernels to a Hexagon object file (no runtime, nothing runs it here)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mod, spec, integer_ops, fallback = lower(qdq_model, input_shapes, batch=1)
    ex, t_compile = compat.compile_module(mod, target)
    kernels = [m for m in ex.mod.imports if m.kind == "llvm"]
    if len(kernels) != 1:
        raise QccError(f"expected one LLVM kernel module for hexagon, got {[m.kind for m in ex.mod.imports]}")
    write_atomic(out_dir, HEXAGON_OBJECT, lambda p: kernels[0].write_to_file(str(p), "o"))
    write_spec(out_dir, {**spec, "target": target, "compile_only": True})
    return {
        "target": target,
        "mcpu": target["mcpu"],
        "compile_only": True,
        "note": "Hexagon object code of the fused kernels only: TVM 0.27 has no Hexagon runtime and no "
                "simulator is available here, so nothing was run or verified",
        "integer_ops": integer_ops,
        "float_fallback": fallback,
        "inputs": spec["inputs"],
        "static_batch": True,
        "object_bytes": (out_dir / HEXAGON_OBJECT).stat().st_size,
        "build_s": round(time.perf_counter() - t0, 3),
        "timings": {"compile_s": round(t_compile, 3)},
        "versions": compat.check_versions(),
        "files": {"object": HEXAGON_OBJECT, "io": IO_SPEC},
    }


# ---------------------------------------------------------------------------------------------
# Inspecting and running
# ---------------------------------------------------------------------------------------------

# the integer multiply-accumulate family worth reporting
MIX_KEYS = ("sdot", "udot", "usdot", "smmla", "smull", "smull2", "smlal", "smlal2", "umull", "umlal", "sadalp",
            "mla", "mul", "madd", "fmla", "fmul")


def instruction_mix(library: Path, objdump: str = "aarch64-linux-gnu-objdump") -> dict:
    """Counts of aarch64 mnemonics in the library's code (all mnemonics under "all")."""
    proc = check_call([objdump, "-d", "--no-show-raw-insn", str(library)], "disassembling")
    counts: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[0].rstrip().endswith(":") and parts[0].strip()[:-1].isalnum():
            mnem = parts[1].split()[0] if parts[1].split() else ""
            if mnem:
                counts[mnem] = counts.get(mnem, 0) + 1
    return {"total": sum(counts.values()), **{k: counts.get(k, 0) for k in MIX_KEYS}}


class QemuRunner(ArtifactIO):
    """Runs an aarch64 artifact's own qcc_run under qemu-aarch64 (what a board would run)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        _require(QEMU)
        for name in (LIBRARY, RUNNER, RUNNER_IO, IO_SPEC):
            if not (self.folder / name).is_file():
                raise QccError(f"{self.folder} is not an aarch64 build ({name} missing)")
        self.spec = json.loads((self.folder / IO_SPEC).read_text())

    def command(self, in_dir: Path, out_dir: Path, batches: int, iterations: int = 0) -> list[str]:
        return [QEMU, "-L", SYSROOT, str(self.folder / RUNNER), str(self.folder), str(in_dir), str(out_dir),
                str(batches), str(iterations)]

    def run(self, feeds: dict[str, np.ndarray], iterations: int = 0) -> list[np.ndarray]:
        arrays, n, n_batches = chunks(self.spec, feeds)
        with tempfile.TemporaryDirectory(prefix="qcc-qemu-") as tmp:
            in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
            in_dir.mkdir()
            out_dir.mkdir()
            write_inputs(in_dir, arrays)
            proc = check_call(self.command(in_dir, out_dir, n_batches, iterations), "running under qemu-aarch64")
            self.last_stdout = proc.stdout
            return read_outputs(out_dir, n, n_batches)


# ---------------------------------------------------------------------------------------------
# The aarch64 and hexagon targets as the compiler drives them (their records: qcc/backends/targets/)
# ---------------------------------------------------------------------------------------------

def configure_aarch64(options) -> dict:
    """`qcc compile --target aarch64 [--mcpu] [--mattr]` -> the TVM target dict."""
    return aarch64_target(options.mcpu, options.mattr)


def configure_hexagon(options) -> dict:
    """`qcc compile --target hexagon [--mcpu]` -> the TVM target dict."""
    if options.mattr is not None:
        raise QccError("--mattr applies to --target aarch64, not 'hexagon'")
    return hexagon_target(options.mcpu)


def build_aarch64_artifact(job) -> dict:
    """Cross build into the artifact folder, then (qemu-aarch64 installed) run it on a few samples
    against onnxruntime on the same QDQ graph."""
    info = build_aarch64(job.qdq_model, job.target, job.folder, input_shapes=input_shapes_from(job.calib))
    _log_build(job, info)
    return exactness.check_with_runner(job, info, QemuRunner)


def build_hexagon_artifact(job) -> dict:
    """Object code only: nothing runs it, so nothing is checked."""
    info = build_hexagon(job.qdq_model, job.target, job.folder, input_shapes=input_shapes_from(job.calib))
    _log_build(job, info)
    info["exactness"] = {}
    return info


def _log_build(job, info: dict) -> None:
    job.log(f"{job.name} build: {info['build_s']:.1f} s, integer ops {info['integer_ops']}, "
            f"{len(info['float_fallback'])} float fallbacks")


def open_runner(folder: Path, threads: int | None = None) -> QemuRunner:
    """The aarch64 target's runner (qemu-aarch64 runs the artifact's own qcc_run; `threads` does not apply)."""
    return QemuRunner(folder)


def edge_target(name: str, mcpu: str | None = None, mattr: list[str] | None = None) -> dict:
    """The TVM target dict for `qcc compile --target aarch64|c|hexagon [--mcpu] [--mattr]` (what the
    target registry's `configure` of that target returns)."""
    from qcc import targets

    return targets.get(name).configure_target(targets.Options(mcpu=mcpu, mattr=mattr))
