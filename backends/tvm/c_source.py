"""The `c` target: a standalone C99 source tree for DSPs and microcontrollers, no TVM runtime.

TVM 0.27 has no AOT executor, so qcc writes the graph runner itself. The integer Relax module
(lowering/) goes through TVM's CPU legalisation and fusion (LegalizeOps, AnnotateTIROpPattern,
FoldConstant, FuseOps, FuseTIR); what is left of ``main`` is a straight line of
``call_tir(kernel, args) -> buffer`` calls. Each fused kernel goes through TVM's C code generator
(``tvm.tirx.build(..., target={"kind": "c"})``, one ``kernels.c``) after its elementwise blocks are
inlined (``inline_elementwise``: otherwise every step of a requantisation chain is a workspace
tensor), and ``model.c`` replays main's call sequence:

* weights and other constants become ``static const`` arrays;
* every intermediate buffer gets an offset in one static arena, chosen greedily (largest first, lowest
  offset free over the buffer's live range [defining call, last use]);
* each kernel is called through TVM's packed C ABI with DLTensor descriptors built on the stack;
  its argument checks still run, and a failure is reported through ``qcc_model_last_error()``.

The generated kernels need three symbols that would come from the TVM runtime
(``TVMBackendAllocWorkspace``, ``TVMBackendFreeWorkspace``, ``TVMFFIErrorSetRaisedFromCStrParts``);
``qcc_runtime.c`` provides them over a static LIFO workspace sized from the kernels' own requests,
and ``qcc_tvm_abi.h`` declares the few DLPack / tvm-ffi types the kernels use, so no TVM header is
needed either.

TVM's C printer writes float constants with 7 significant digits, which does not round-trip every
float32 (a requantisation scale could move by one ulp); ``exact_float_literals`` replaces each such
literal by the C99 hex literal of the kernel's exact constant.

This module turns the Relax module into the call sequence, the arena plan and the kernels, and
builds / runs the tree; the text of the tree's files is written by c_tree.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qcc.errors import QccError

from . import compat, exactness
from .artifact_io import IO_SPEC, ArtifactIO, chunks, input_shapes_from, read_outputs, write_inputs, write_spec
from .c_tree import _C_TYPES, ABI_HEADER, MAKEFILE, RUNTIME_C, header_source, main_source, model_source
from .compat import relax, s_tir, tirx
from .pipeline import lower

C_DIR = "c"
ALIGN = 64


# ---------------------------------------------------------------------------------------------
# From Relax to a call sequence
# ---------------------------------------------------------------------------------------------

def fuse(mod):
    """TVM's CPU legalisation + fusion (the first half of the default pipeline), for target c."""
    cpu = compat.cpu_generic_pipeline()
    tgt = compat.make_target({"kind": "c"})
    with tgt:
        seq = cpu.library_dispatch_passes(tgt) + cpu.legalize_passes(tgt) + [
            relax.transform.DeadCodeElimination(["main"])]
        return compat.run_passes(seq, mod)


class Buffer:
    def __init__(self, name: str, dtype: str, shape: list[int], kind: str, value: np.ndarray | None = None):
        self.name, self.dtype, self.shape, self.kind, self.value = name, dtype, shape, kind, value
        self.offset = None
        self.first = self.last = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype if self.dtype != "bool" else "uint8").itemsize


def inline_elementwise(mod):
    """Inline every elementwise block of each fused kernel into its consumer (s_tir compute_inline).

    Unscheduled fused kernels materialise each step of the requantisation chain (int64 cast,
    multiply, shift, ...) as a workspace tensor; inlined, only the reductions' accumulators remain.
    Integer expressions are unchanged, and float ones are evaluated in float either way
    (FLT_EVAL_METHOD 0 on SSE / NEON, no contraction under -std=c99). Returns (module, blocks inlined)."""
    count = 0
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        sch = s_tir.Schedule(func)
        root = sch.get_sblock("root")
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
        for block in reversed(sch.get_child_blocks(root)):
            if sch.get(block).name_hint in outputs:
                continue
            try:
                sch.compute_inline(block)
                count += 1
            except s_tir.schedule.ScheduleError:     # a reduction, or read by several blocks
                pass
        mod[gv] = sch.mod["main"]
    return mod, count


def call_sequence(mod) -> tuple[list, list[Buffer], list[Buffer], dict]:
    """main as [(kernel name, [arg buffers])], its input and output buffers, and all buffers by id."""
    main = mod["main"]
    bufs: dict = {}           # relax var / constant -> Buffer
    order: list[Buffer] = []

    def tensor(expr, kind, name):
        shape, dtype = compat.tensor_shape(expr), compat.tensor_dtype(expr)
        if shape is None or dtype is None or any(not isinstance(d, int) for d in shape):
            raise QccError(f"the c target needs static tensor shapes ({name} has {shape})")
        if dtype not in _C_TYPES:
            raise QccError(f"the c target has no C type for dtype {dtype} ({name})")
        b = Buffer(name, dtype, shape, kind, compat.const_numpy(expr) if kind == "const" else None)
        order.append(b)
        return b

    inputs = [tensor(p, "input", p.name) for p in main.params]
    for p, b in zip(main.params, inputs):
        bufs[p] = b
    calls = []
    blocks = main.body.blocks
    for block in blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Var):          # an alias
                bufs[binding.var] = bufs[value]
                continue
            if compat.op_name(value) is None or not value.op.name == "relax.call_tir":
                raise QccError(f"the c target can only replay call_tir bindings, found {type(value).__name__} "
                               f"{compat.op_name(value) or ''}")
            if len(value.args) > 2:
                raise QccError("the c target does not support call_tir with symbolic shape arguments")
            args = []
            for a in compat.call_tir_args(value):
                if isinstance(a, compat.Constant):
                    if a not in bufs:
                        bufs[a] = tensor(a, "const", f"c{len(order)}")
                    args.append(bufs[a])
                elif a in bufs:
                    args.append(bufs[a])
                else:
                    raise QccError(f"the c target cannot pass {type(a).__name__} to a kernel")
            out = tensor(binding.var, "temp", binding.var.name)
            bufs[binding.var] = out
            calls.append((value.args[0].name_hint, args + [out]))
    result = main.body.body
    fields = list(result.fields) if isinstance(result, relax.Tuple) else [result]
    outputs = []
    for f in fields:
        b = bufs.get(f)
        if b is None or b.kind != "temp":
            raise QccError("the c target needs every model output to be computed by a kernel")
        b.kind = "output"
        outputs.append(b)
    return calls, inputs, outputs, order


def plan_arena(calls, buffers: list[Buffer]) -> int:
    """Greedy static memory plan for the intermediate buffers; returns the arena size in bytes."""
    for i, (_, args) in enumerate(calls):
        for b in args:
            if b.first is None:
                b.first = i
            b.last = i
    temps = sorted((b for b in buffers if b.kind == "temp"), key=lambda b: (-b.nbytes, b.first))
    placed: list[Buffer] = []
    size = 0
    for b in temps:
        live = sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: p.offset)
        offset = 0
        for p in live:
            if offset + b.nbytes <= p.offset:
                break
            offset = max(offset, _align(p.offset + p.nbytes))
        b.offset = offset
        placed.append(b)
        size = max(size, _align(offset + b.nbytes))
    return size


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------

_TVM_INCLUDES = re.compile(r'#include "tvm/[^"]+"\n')
# TVM's C printer writes a float32 FloatImm as printf("%e") + "f": the sign is part of the text but
# outside the capture (the literal's magnitude is looked up, the sign stays as printed), and infinity
# and NaN come out as `inff` / `nanf`, which are no C identifiers.
_FLOAT_LITERAL = re.compile(r"(?<![\w.])(\d\.\d{6}e[+-]\d{2,3})f")
_NONFINITE_LITERAL = re.compile(r"(?<![\w.])(inf|nan)f(?![\w.])")
_C99_NONFINITE = {"inf": "INFINITY", "nan": "NAN"}     # <math.h>, which TVM's kernels include
# Values TVM's own lowering writes into kernels (fast_softmax's max starts at -FLT_MAX): candidates
# beside the kernel's constants, so they come out bit-exact even where the script lacks them.
FLOAT32_WELL_KNOWN = (float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny),
                      float(np.finfo(np.float32).smallest_subnormal))


_SCRIPT_FLOAT = re.compile(r"(?<![\w.])-?(?:\d+\.\d*(?:e[+-]?\d+)?|\d+e[+-]?\d+|inf|nan)(?![\w.])")


def _float_imms(func) -> set[float]:
    """The float constants of a PrimFunc, read from its TVMScript (printed with full precision;
    0.27 has no Python TIR visitor). Extra numbers (shapes are ints) only widen the candidate set."""
    return {float(t) for t in _SCRIPT_FLOAT.findall(func.script(show_meta=False)) if t not in ("inf", "nan", "-inf", "-nan")}


def exact_float_literals(src: str, values: set[float]) -> tuple[str, int]:
    """Replace each 7-digit float32 literal by the hex literal of the constant it was printed from.

    7 digits do not tell neighbouring float32s apart, so a literal must match exactly one candidate
    (the kernels' constants and FLOAT32_WELL_KNOWN) by magnitude, or the build stops: a literal
    that matches none could be any of several floats. inf / NaN become C99's INFINITY / NAN."""
    by_text: dict[str, set[float]] = {}
    with np.errstate(over="ignore"):
        mags = {abs(float(np.float32(v))) for v in (*values, *FLOAT32_WELL_KNOWN)}
    for f32 in mags:
        if np.isfinite(f32):
            by_text.setdefault(f"{f32:.6e}", set()).add(f32)

    replaced = 0

    def sub(m):
        nonlocal replaced
        cands = by_text.get(m.group(1))
        if not cands:
            raise QccError(f"internal error: float literal {m.group(0)} in the C kernels matches no constant")
        if len(cands) > 1:
            raise QccError(f"internal error: float literal {m.group(0)} is ambiguous ({sorted(cands)})")
        (v,) = cands
        replaced += 1
        return f"{v.hex()}f"

    src = _FLOAT_LITERAL.sub(sub, src)
    return _NONFINITE_LITERAL.sub(lambda m: _C99_NONFINITE[m.group(1)], src), replaced


def kernels_source(mod, names: set[str]) -> tuple[str, dict]:
    """C source of the fused kernels (TVM's c codegen) with qcc's ABI header and exact floats."""
    funcs = {gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and gv.name_hint in names}
    lib = compat.build_tir(funcs, {"kind": "c"})
    src = lib.inspect_source()
    values = set()
    for f in funcs.values():
        values |= _float_imms(f)
    src, replaced = exact_float_literals(src, values)
    src = _TVM_INCLUDES.sub("", src, count=0)
    src = '#include "qcc_tvm_abi.h"\n' + src
    workspace = max((_kernel_workspace(body) for body in re.split(r"\nTVM_DLL int32_t ", src)), default=0)
    return src, {"float_literals_made_exact": replaced, "workspace_bytes": workspace}


_WS_ALLOC = re.compile(r"TVMBackendAllocWorkspace\(\d+, \w+, \(uint64_t\)(\d+)ULL")


def _kernel_workspace(body: str) -> int:
    # a kernel's workspace requests are all live at most at once: their aligned sum bounds the LIFO arena
    return sum(_align(int(n)) for n in _WS_ALLOC.findall(body))

def build_c(qdq_model, out_dir: Path, input_shapes: dict | None = None) -> dict:
    """Write the C tree to out_dir/c (see the module docstring); returns the build info."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    mod, spec, integer_ops, fallback = lower(qdq_model, input_shapes, batch=1)
    fused, inlined = inline_elementwise(fuse(mod))
    calls, inputs, outputs, buffers = call_sequence(fused)
    arena = plan_arena(calls, buffers)
    t_lower = time.perf_counter() - t0
    t1 = time.perf_counter()
    kernels, kinfo = kernels_source(fused, {c[0] for c in calls})
    t_codegen = time.perf_counter() - t1
    tmp = Path(tempfile.mkdtemp(prefix=".c.", dir=out_dir)) if out_dir.exists() else None
    if tmp is None:
        out_dir.mkdir(parents=True)
        tmp = Path(tempfile.mkdtemp(prefix=".c.", dir=out_dir))
    try:
        files = {
            "qcc_tvm_abi.h": ABI_HEADER,
            "qcc_model.h": header_source(inputs, outputs, calls, arena, kinfo["workspace_bytes"], spec),
            "kernels.c": kernels,
            "model.c": model_source(calls, inputs, outputs, buffers, arena),
            "qcc_runtime.c": RUNTIME_C,
            "qcc_main.c": main_source(inputs, outputs),
            "Makefile": MAKEFILE,
        }
        for name, text in files.items():
            (tmp / name).write_text(text)
        if (out_dir / C_DIR).exists():
            shutil.rmtree(out_dir / C_DIR)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes 0700; the tree follows the umask like mkdir
        tmp.rename(out_dir / C_DIR)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    write_spec(out_dir, {**spec, "target": {"kind": "c"}})
    weights = sum(b.nbytes for b in buffers if b.kind == "const")
    return {
        "target": {"kind": "c"},
        "mcpu": None,
        "integer_ops": integer_ops,
        "float_fallback": fallback,
        "inputs": spec["inputs"],
        "static_batch": True,
        "kernels": len({c[0] for c in calls}),
        "calls": len(calls),
        "memory": {"weights_bytes": weights, "arena_bytes": arena, "workspace_bytes": kinfo["workspace_bytes"],
                   "static_total_bytes": weights + arena + kinfo["workspace_bytes"]},
        "float_literals_made_exact": kinfo["float_literals_made_exact"],
        "blocks_inlined": inlined,
        "build_s": round(time.perf_counter() - t0, 3),
        "timings": {"import_lower_fuse_s": round(t_lower, 3), "codegen_s": round(t_codegen, 3)},
        "versions": compat.check_versions(),
        "files": {"c_source": C_DIR, "io": IO_SPEC},
    }


# ---------------------------------------------------------------------------------------------
# Building and running the tree (host gcc, or aarch64 gcc under qemu)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Toolchain:
    """The programs that build the tree for one CPU and run its qcc_main here."""
    name: str
    cc: str
    ar: str
    size: str
    run: tuple[str, ...] = ()        # the emulator command line qcc_main runs under (none: natively)


TOOLCHAINS = {
    "host": Toolchain("host", "gcc", "ar", "size"),
    "aarch64": Toolchain("aarch64", "aarch64-linux-gnu-gcc", "aarch64-linux-gnu-ar", "aarch64-linux-gnu-size",
                         ("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu")),
}


def toolchain_of(toolchain: "str | Toolchain") -> Toolchain:
    return TOOLCHAINS[toolchain] if isinstance(toolchain, str) else toolchain


def make(tree: Path, build: Path, toolchain: "str | Toolchain" = "host", cflags: str = "-O2") -> Path:
    """Build the tree with its Makefile into `build`; returns the qcc_main path."""
    tc = toolchain_of(toolchain)
    missing = [t for t in (tc.cc, tc.ar, "make", *tc.run[:1]) if shutil.which(t) is None]
    if missing:
        raise QccError(f"building the C tree for {tc.name} needs {', '.join(missing)}")
    cmd = ["make", "-s", "-C", str(tree), f"CC={tc.cc}", f"AR={tc.ar}", f"BUILD={build}", f"CFLAGS={cflags}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise QccError(f"make of the C tree failed: {' | '.join((proc.stderr or proc.stdout).strip().splitlines()[-5:])}")
    return build / "qcc_main"


def code_size(build: Path, toolchain: "str | Toolchain" = "host") -> dict:
    """Bytes per object and section group from `size -A`: code (.text), rodata (weights, strings),
    data, bss (arena + workspace)."""
    tool = toolchain_of(toolchain).size
    groups = {"code": (".text",), "rodata": (".rodata",), "data": (".data",), "bss": (".bss",)}
    sizes = {}
    for name in ("model", "kernels", "qcc_runtime"):
        proc = subprocess.run([tool, "-A", str(build / f"{name}.o")], capture_output=True, text=True, check=True)
        row = dict.fromkeys(groups, 0)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                for group, prefixes in groups.items():
                    if parts[0].startswith(prefixes):
                        row[group] += int(parts[1])
        sizes[name] = row
    sizes["total"] = {k: sum(v[k] for v in sizes.values()) for k in groups}
    return sizes


class CRunner(ArtifactIO):
    """Builds an artifact's C tree (host gcc, or aarch64 gcc + qemu) and runs its qcc_main."""

    def __init__(self, folder, toolchain: "str | Toolchain" = "host", cflags: str = "-O2"):
        self.folder = Path(folder)
        if not (self.folder / C_DIR / "Makefile").is_file():
            raise QccError(f"{self.folder} has no C tree ({C_DIR}/Makefile)")
        self.spec = json.loads((self.folder / IO_SPEC).read_text())
        self.toolchain = toolchain_of(toolchain)
        self._tmp = tempfile.TemporaryDirectory(prefix="qcc-c-")
        self.build = Path(self._tmp.name)
        self.exe = make(self.folder / C_DIR, self.build, toolchain, cflags)

    def sizes(self) -> dict:
        return code_size(self.build, self.toolchain)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays, n, n_batches = chunks(self.spec, feeds)
        with tempfile.TemporaryDirectory(prefix="qcc-c-run-") as tmp:
            in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
            in_dir.mkdir()
            out_dir.mkdir()
            write_inputs(in_dir, arrays)
            cmd = [*self.toolchain.run, str(self.exe), str(in_dir), str(out_dir), str(n_batches)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise QccError(f"the C build failed to run: {proc.stderr.strip()[-300:]}")
            return read_outputs(out_dir, n, n_batches)


# ---------------------------------------------------------------------------------------------
# The c target as the compiler drives it (its record: qcc/backends/targets/c.py)
# ---------------------------------------------------------------------------------------------

def configure(options) -> dict:
    """`qcc compile --target c`: portable C99, so neither --mcpu nor --mattr applies."""
    if options.mattr is not None:
        raise QccError("--mattr applies to --target aarch64, not 'c'")
    if options.mcpu is not None:
        raise QccError("--target c emits portable C99: --mcpu does not apply (pass CFLAGS to make instead)")
    return {"kind": "c"}


def build_artifact(job, runner=CRunner, toolchain: str = "host") -> dict:
    """Write the tree into the artifact folder, then (its toolchain installed) build it with
    `runner` (default: the host gcc) and run it on a few samples against onnxruntime on the same
    QDQ graph; info["code_size_<toolchain>"] is what that build measured."""
    info = build_c(job.qdq_model, job.folder, input_shapes=input_shapes_from(job.calib))
    job.log(f"{job.name} build: {info['build_s']:.1f} s, integer ops {info['integer_ops']}, "
            f"{len(info['float_fallback'])} float fallbacks")

    def code_size(built, info):
        info[f"code_size_{toolchain}"] = built.sizes()

    return exactness.check_with_runner(job, info, runner, after_run=code_size)


def open_runner(folder: Path, threads: int | None = None) -> CRunner:
    """The c target's runner (the tree built with the host gcc; `threads` does not apply)."""
    return CRunner(folder)
