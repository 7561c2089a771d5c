"""The one place that knows which Apache TVM qcc's backend is written against, and what 0.27 renamed.

qcc's TVM backend is written against apache-tvm 0.27 (with apache-tvm-ffi 0.1.14: 0.1.15 segfaults in
``tvm.ir.save_json``). 0.27 renamed a lot: ``tvm.tir`` -> ``tvm.tirx`` / ``tvm.s_tir``,
``relax.Constant`` -> ``tvm.ir.expr.GenericConst`` (``.value`` holds the tensor), ``struct_info`` ->
``.ty`` (``relax.TensorType``), and targets are JSON dicts (``{"kind": "llvm", "mcpu": "znver4"}``);
an unknown ``mcpu`` only logs an error and silently compiles for a generic CPU.

What this module owns:

* the version pin and its check, run on import: the package's ``__init__`` imports it first, so a
  wrong or missing TVM fails with one clear line before any other module touches TVM;
* the renamed names (``relax``, ``tirx``, ``s_tir``, ``te``, ``Constant``, ``TensorType``, ...) and
  the IR accessors the lowering and the c target use;
* target dicts, import (ONNX frontend), the default build, cross linking, export, load and run.

Which modules import ``tvm`` themselves: those that drive one TVM subsystem in depth, where a
wrapper per call would only rename it: ``schedules/`` (TensorIR schedules, tensor intrinsics),
``tune.py`` (MetaSchedule), ``cuda.py`` (the CUDA pipeline, nvcc, the GPU runtime),
``onnx_converters.py`` and ``coverage.py`` (the ONNX frontend's converter table). Everything else (the lowering, the
per-target builds, the runtimes) goes through the helpers below.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import time
from pathlib import Path

import numpy as np

from qcc.errors import QccError
from qcc.threads import default_threads

TVM_VERSION = "0.27.0.post1"
FFI_VERSION = "0.1.14.post1"
_BAD_FFI = {"0.1.15.post2": "segfaults in tvm.ir.save_json (and so in every MetaSchedule run)"}


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_versions() -> dict[str, str | None]:
    """The installed apache-tvm / apache-tvm-ffi versions; raises QccError on a known-bad pair."""
    tvm_v, ffi_v = _dist_version("apache-tvm"), _dist_version("apache-tvm-ffi")
    if tvm_v is None:
        raise QccError("the TVM backend needs apache-tvm (pip install apache-tvm==0.27.0.post1 "
                       "apache-tvm-ffi==0.1.14.post1)")
    if ffi_v in _BAD_FFI:
        raise QccError(f"apache-tvm-ffi {ffi_v} {_BAD_FFI[ffi_v]}; pin apache-tvm-ffi=={FFI_VERSION}")
    if not tvm_v.startswith("0.27"):
        raise QccError(f"qcc's TVM backend is written for apache-tvm {TVM_VERSION}; found {tvm_v}")
    return {"apache-tvm": tvm_v, "apache-tvm-ffi": ffi_v}


check_versions()

# TVM sizes its CPU pool once, at first use, capped at TVM_NUM_THREADS or else at half the logical
# CPUs (it assumes hyper-threading: one worker on a 2-vCPU machine, and set_threads cannot raise it).
# Unset, the cap becomes every CPU this process may use; set_threads narrows it per runner.
os.environ.setdefault("TVM_NUM_THREADS", str(default_threads()))

import tvm  # noqa: E402
from tvm import relax  # noqa: E402
from tvm import s_tir  # noqa: E402,F401  (0.27: schedules, meta_schedule; was tvm.tir.schedule)
from tvm import te  # noqa: E402,F401
from tvm import tirx  # noqa: E402  (0.27: TIR itself; was tvm.tir)
from tvm.target import codegen as _codegen  # noqa: E402

R = relax.op
Call = relax.Call
Var = relax.Var
DataflowVar = relax.DataflowVar
TensorType = relax.TensorType          # 0.27: was relax.TensorStructInfo
Constant = tvm.ir.expr.Constant        # 0.27: relax.Constant is tvm.ir.expr.GenericConst
GlobalVar = tvm.ir.expr.GlobalVar
PyExprMutator = relax.PyExprMutator
mutator = relax.expr_functor.mutator


# ---------------------------------------------------------------------------------------------
# IR accessors
# ---------------------------------------------------------------------------------------------

def tensor_dtype(expr) -> str | None:
    t = getattr(expr, "ty", None)
    return str(t.dtype) if isinstance(t, TensorType) else None


def tensor_shape(expr) -> list | None:
    """Static dims as ints, symbolic ones as the TIR variable / expression; None if unknown."""
    t = getattr(expr, "ty", None)
    if not isinstance(t, TensorType) or t.shape is None:
        return None
    shape = t.shape
    values = getattr(shape, "values", None)
    if values is None:
        return None
    return [int(v) if isinstance(v, tirx.IntImm) else v for v in values]


def const_numpy(expr) -> np.ndarray | None:
    if isinstance(expr, Constant):
        return expr.value.numpy()
    return None


def op_name(expr) -> str | None:
    """'relax.nn.conv2d' for a call to a Relax operator, 'call_tir:maximum' for call_tir."""
    if not isinstance(expr, Call):
        return None
    op = expr.op
    if isinstance(op, tvm.ir.Op):
        if op.name == "relax.call_tir" and isinstance(expr.args[0], GlobalVar):
            # the frontend's emit_te functions are named maximum, maximum1, maximum2, ...
            return "call_tir:" + re.sub(r"_?\d+$", "", expr.args[0].name_hint)
        return op.name
    return None


def rebuild_call(call, args: list):
    """The same operator call with new arguments (0.27: struct-info args are `ty_args`)."""
    return relax.Call(call.op, args, call.attrs, call.ty_args)


def symbolic_var_names(func) -> set[str]:
    return {str(v) for v in relax.analysis.defined_symbolic_vars(func)}


def call_tir_args(expr) -> list:
    return list(expr.args[1].fields)


def te_pad_widths(mod, call) -> tuple[list[int], list[int], float] | None:
    """(before, after, value) of a call_tir to the ONNX frontend's constant pad (topi.nn.pad), read
    from its PrimFunc: out[i] = if_then_else(inside, A[i - before], value). None if it is not that."""
    func = mod[call.args[0]]
    found: dict = {}

    def visit(node):
        if isinstance(node, tvm.ir.Call) and getattr(node.op, "name", "").endswith("if_then_else"):
            found.setdefault("load", node.args[1])
            found.setdefault("value", node.args[2])

    # (0.27's python API has no TIR visitor: walk the fields a TE compute's body is made of)
    stack = [func.body]
    while stack:
        node = stack.pop()
        visit(node)
        for name in ("body", "block", "value", "args", "seq", "a", "b", "condition", "then_case", "else_case"):
            child = getattr(node, name, None)
            if child is None or isinstance(child, (int, float, str)):
                continue
            if hasattr(child, "__len__") and not hasattr(child, "dtype"):
                stack.extend(c for c in child if c is not None)
            else:
                stack.append(child)
    load, value = found.get("load"), found.get("value")
    kind = lambda node: type(node).__name__    # noqa: E731  (0.27: some TIR node types are factory functions)
    if kind(load) not in ("BufferLoad", "TensorLoad") or kind(value) not in ("FloatImm", "IntImm"):
        return None
    before = []
    for ix in load.indices:
        if kind(ix) == "Var":
            before.append(0)
        elif kind(ix) == "Sub" and kind(ix.b) == "IntImm" and kind(ix.a) == "Var":
            before.append(int(ix.b.value))
        else:
            return None
    shape_in, shape_out = tensor_shape(call_tir_args(call)[0]), tensor_shape(call)
    if shape_in is None or shape_out is None or len(shape_in) != len(before):
        return None
    if not all(isinstance(d, int) for d in shape_in + shape_out):
        return None
    after = [o - i - b for i, o, b in zip(shape_in, shape_out, before)]
    return (before, after, float(value.value)) if min(after) >= 0 else None


def prim_value(expr) -> float | None:
    """A Python number from an IntImm / FloatImm / PrimValue argument (R.clip bounds)."""
    if isinstance(expr, (tirx.IntImm, tirx.FloatImm)):
        return expr.value
    value = getattr(expr, "value", None)
    if isinstance(value, (tirx.IntImm, tirx.FloatImm)):
        return value.value
    return None


def int_tuple(values) -> list[int]:
    return [int(v) for v in values]


def const(array: np.ndarray | int | float, dtype: str | None = None):
    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    return relax.const(array, str(array.dtype))


def sym_var(name: str):
    return tirx.Var(name, "int64")


def prove_equal(a, b) -> bool:
    """Two (symbolic) TIR integer expressions provably equal (ints compare as ints)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return bool(tvm.sym.Analyzer().can_prove_equal(a, b))


def simplify(expr):
    """A symbolic TIR integer expression in TVM's canonical form (an int stays an int)."""
    return expr if isinstance(expr, int) else tvm.sym.Analyzer().simplify(expr)


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

def system_triple() -> str:
    return _codegen.llvm_get_system_triple()


def is_valid_cpu(mcpu: str, triple: str | None = None) -> bool:
    return bool(_codegen.llvm_is_valid_cpu(mcpu, triple or system_triple()))


def cpu_has_features(target: dict, features: list[str]) -> bool:
    return bool(_codegen.llvm_cpu_has_features(features, make_target(target)))


def make_target(target: dict):
    if not isinstance(target, dict):
        raise QccError(f"TVM targets are JSON dicts like {{'kind': 'llvm', 'mcpu': 'haswell'}}, got {target!r}")
    return tvm.target.Target(dict(target))


# ---------------------------------------------------------------------------------------------
# Import, build, load, run
# ---------------------------------------------------------------------------------------------

def from_onnx(model, shape_dict: dict | None = None):
    from tvm.relax.frontend.onnx import from_onnx as _from_onnx

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _from_onnx(model, shape_dict=shape_dict, keep_params_in_input=False)


def compile_module(mod, target: dict):
    """Default Relax pipeline, no tuning. Returns (executable, seconds)."""
    tgt = make_target(target)
    t0 = time.perf_counter()
    ex = tvm.compile(mod, target=tgt, relax_pipeline=relax.get_default_pipeline(tgt))
    return ex, time.perf_counter() - t0


def export_library(ex, path: Path, cross_compiler: str | None = None) -> None:
    """Write the executable's shared library; `cross_compiler` (e.g. aarch64-linux-gnu-g++) links it
    for another machine."""
    if cross_compiler is None:
        ex.export_library(str(path))
        return
    from tvm.support import cc

    ex.export_library(str(path), fcompile=cc.cross_compiler(cross_compiler))


def ffi_include_paths() -> list[str]:
    """Header folders of apache-tvm-ffi (and its DLPack), for C++ built against libtvm_ffi."""
    import tvm_ffi.libinfo

    return sorted({tvm_ffi.libinfo.find_include_path(), tvm_ffi.libinfo.find_dlpack_include_path()})


def cpu_generic_pipeline():
    """TVM's generic CPU Relax pipeline module (its library dispatch / legalize pass lists)."""
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline


def run_passes(passes: list, mod):
    """Apply a list of module passes in order (tvm.transform.Sequential)."""
    return tvm.transform.Sequential(passes)(mod)


def build_tir(funcs: dict, target: dict):
    """Build PrimFuncs ({GlobalVar: PrimFunc}) alone, without Relax (0.27: tvm.tirx.build)."""
    return tvm.tirx.build(tvm.IRModule(funcs), target=make_target(target))


def load_vm(path: Path):
    lib = tvm.runtime.load_module(str(path))
    return relax.VirtualMachine(lib, tvm.cpu())


def set_threads(n: int) -> int:
    """Size TVM's CPU thread pool (process-wide) to `n` worker threads; returns the size in effect."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    if tvm.get_global_func("runtime.NumThreads")() != n:
        # mode 0: no affinity pinning, so the OS places threads on the CPUs this process may use
        tvm.get_global_func("runtime.config_threadpool")(0, n)
    return int(tvm.get_global_func("runtime.NumThreads")())


def to_device(array: np.ndarray):
    return tvm.runtime.tensor(np.ascontiguousarray(array))


def outputs_to_numpy(result) -> list[np.ndarray]:
    if hasattr(result, "numpy"):
        return [result.numpy()]
    out = []
    for item in result:
        out.extend(outputs_to_numpy(item))
    return out


def dead_code_elimination(mod):
    return relax.transform.DeadCodeElimination(["main"])(mod)


def free_vars(expr) -> list:
    """The Relax variables an expression reads."""
    return list(relax.analysis.free_vars(expr))


def bindings_and_uses(func) -> tuple[dict, dict]:
    """({var: bound value}, {var: number of reads, the function's result included}) of a Relax
    function's dataflow bindings."""
    bindings, uses = {}, {}
    for block in func.body.blocks:
        for b in block.bindings:
            bindings[b.var] = b.value
            for v in free_vars(b.value):
                uses[v] = uses.get(v, 0) + 1
    for v in free_vars(func.body.body):
        uses[v] = uses.get(v, 0) + 1
    return bindings, uses
