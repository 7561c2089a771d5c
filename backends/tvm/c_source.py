"""The `c` target: a standalone C99 source tree for DSPs and microcontrollers, no TVM runtime.

TVM 0.27 has no AOT executor, so qcc writes the graph runner itself. The integer Relax module
(lower.py) goes through TVM's CPU legalisation and fusion (LegalizeOps, AnnotateTIROpPattern,
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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from qcc.errors import QccError

from . import compat
from .compat import relax, tirx
from .pipeline import IO_SPEC, ArtifactIO, lower

C_DIR = "c"
ALIGN = 64
_C_TYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t", "int32": "int32_t",
            "uint32": "uint32_t", "int64": "int64_t", "uint64": "uint64_t", "float32": "float", "float64": "double",
            "bool": "uint8_t"}
# DLPack type codes: 0 int, 1 uint, 2 float, 6 bool
_DL_CODE = {"int": 0, "uint": 1, "float": 2, "bool": 6}


def _dl_dtype(dtype: str) -> tuple[int, int]:
    if dtype == "bool":
        return 6, 8
    kind = re.match(r"[a-z]+", dtype).group(0)
    return _DL_CODE[kind], int(dtype[len(kind):])


def _ident(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if s and not s[0].isdigit() else "t_" + s


# ---------------------------------------------------------------------------------------------
# From Relax to a call sequence
# ---------------------------------------------------------------------------------------------

def fuse(mod):
    """TVM's CPU legalisation + fusion (the first half of the default pipeline), for target c."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    tgt = compat.make_target({"kind": "c"})
    with tgt:
        seq = cpu.library_dispatch_passes(tgt) + cpu.legalize_passes(tgt) + [
            relax.transform.DeadCodeElimination(["main"])]
        import tvm
        return tvm.transform.Sequential(seq)(mod)


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
    from tvm import s_tir

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
_FLOAT_LITERAL = re.compile(r"(?<![\w.])(\d\.\d{6}e[+-]\d{2,3})f")


_SCRIPT_FLOAT = re.compile(r"(?<![\w.])-?(?:\d+\.\d*(?:e[+-]?\d+)?|\d+e[+-]?\d+|inf|nan)(?![\w.])")


def _float_imms(func) -> set[float]:
    """The float constants of a PrimFunc, read from its TVMScript (printed with full precision;
    0.27 has no Python TIR visitor). Extra numbers (shapes are ints) only widen the candidate set."""
    return {float(t) for t in _SCRIPT_FLOAT.findall(func.script(show_meta=False)) if t not in ("inf", "nan", "-inf", "-nan")}


def exact_float_literals(src: str, values: set[float]) -> tuple[str, int]:
    """Replace each 7-digit float32 literal by the hex literal of the constant it was printed from."""
    by_text: dict[str, set[float]] = {}
    for v in values:
        f32 = struct.unpack("f", struct.pack("f", v))[0]
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
        return f"{float(v).hex()}f" if np.isfinite(v) else m.group(0)

    return _FLOAT_LITERAL.sub(sub, src), replaced


def kernels_source(mod, names: set[str]) -> tuple[str, dict]:
    """C source of the fused kernels (TVM's c codegen) with qcc's ABI header and exact floats."""
    import tvm

    funcs = {gv: f.with_attr("global_symbol", gv.name_hint) for gv, f in mod.functions_items()
             if isinstance(f, tirx.PrimFunc) and gv.name_hint in names}
    lib = tvm.tirx.build(tvm.IRModule(funcs), target=compat.make_target({"kind": "c"}))
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


# ---------------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------------

ABI_HEADER = """\
/* The slice of the DLPack / tvm-ffi C ABI that TVM's generated C kernels use (qcc, no TVM headers). */
#ifndef QCC_TVM_ABI_H
#define QCC_TVM_ABI_H
#include <stddef.h>
#include <stdint.h>
#ifndef TVM_DLL
#define TVM_DLL
#endif
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;
/* tvm-ffi's TVMFFIAny, as far as the kernels read it (type_index, v_ptr): only tensors are passed */
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  void* v_ptr;
} TVMFFIAny;
#if defined(__GNUC__) || defined(__clang__)
#define QCC_ALIGNED __attribute__((aligned(64)))
#else
#define QCC_ALIGNED
#endif
#define QCC_TVMFFI_DLTENSOR_PTR 7
void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr);
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts);
#endif
"""

RUNTIME_C = """\
/* The three runtime symbols TVM's C kernels call, over static memory (no malloc, no TVM runtime). */
#include <string.h>
#include "qcc_tvm_abi.h"
#include "qcc_model.h"

#ifndef QCC_WORKSPACE_BYTES
#define QCC_WORKSPACE_BYTES QCC_MODEL_WORKSPACE_BYTES
#endif
#define QCC_WORKSPACE_DEPTH 64

static uint8_t qcc_workspace[QCC_WORKSPACE_BYTES + 1] QCC_ALIGNED;
static size_t qcc_top;                              /* bytes in use */
static size_t qcc_start[QCC_WORKSPACE_DEPTH];       /* LIFO of allocations */
static uint8_t qcc_freed[QCC_WORKSPACE_DEPTH];
static int qcc_depth;
static char qcc_error[512];

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                               int dtype_bits_hint) {
  size_t n = (size_t)((nbytes + 63u) / 64u * 64u);
  (void)device_type; (void)device_id; (void)dtype_code_hint; (void)dtype_bits_hint;
  if (qcc_depth == QCC_WORKSPACE_DEPTH || qcc_top + n > QCC_WORKSPACE_BYTES) return NULL;
  qcc_start[qcc_depth] = qcc_top;
  qcc_freed[qcc_depth++] = 0;
  qcc_top += n;
  return qcc_workspace + qcc_start[qcc_depth - 1];
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  int i;
  (void)device_type; (void)device_id;
  for (i = qcc_depth - 1; i >= 0; --i)
    if (qcc_workspace + qcc_start[i] == (uint8_t*)ptr) break;
  if (i < 0) return -1;
  qcc_freed[i] = 1;
  while (qcc_depth > 0 && qcc_freed[qcc_depth - 1]) qcc_top = qcc_start[--qcc_depth];
  return 0;
}

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t num_parts) {
  size_t len;
  int32_t i;
  strncpy(qcc_error, kind, sizeof(qcc_error) - 1);
  strncat(qcc_error, ": ", sizeof(qcc_error) - 1 - strlen(qcc_error));
  for (i = 0; i < num_parts; ++i) {
    len = strlen(qcc_error);
    strncat(qcc_error, parts[i], sizeof(qcc_error) - 1 - len);
  }
}

const char* qcc_model_last_error(void) { return qcc_error; }
"""

MAKEFILE = """\
# qcc C target: `make` builds libqcc_model.a and the demo runner qcc_main with any C99 compiler;
# cross: make CC=aarch64-linux-gnu-gcc AR=aarch64-linux-gnu-ar
CC ?= cc
AR ?= ar
CFLAGS ?= -O2
# -std=c99 also keeps gcc from contracting a*b+c into fma (bit-exact with the x86 build)
ALL_CFLAGS = -std=c99 $(CFLAGS)
BUILD ?= build
OBJS = $(BUILD)/model.o $(BUILD)/kernels.o $(BUILD)/qcc_runtime.o

all: $(BUILD)/libqcc_model.a $(BUILD)/qcc_main

$(BUILD):
\tmkdir -p $(BUILD)

$(BUILD)/%.o: %.c qcc_model.h qcc_tvm_abi.h | $(BUILD)
\t$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libqcc_model.a: $(OBJS)
\t$(AR) rcs $@ $(OBJS)

$(BUILD)/qcc_main: $(BUILD)/qcc_main.o $(BUILD)/libqcc_model.a
\t$(CC) $(ALL_CFLAGS) $(BUILD)/qcc_main.o $(BUILD)/libqcc_model.a -o $@ $(LDFLAGS) -lm

clean:
\trm -rf $(BUILD)

.PHONY: all clean
"""


def _c_values(a: np.ndarray, dtype: str) -> str:
    flat = a.reshape(-1)
    if dtype.startswith("float"):
        suffix = "f" if dtype == "float32" else ""
        items = [(float(v).hex() + suffix) if np.isfinite(v) else ("(0.0" + suffix + "/0.0" + suffix + ")" if np.isnan(v)
                 else ("-" if v < 0 else "") + "(1.0" + suffix + "/0.0" + suffix + ")") for v in flat.tolist()]
    else:
        info = np.iinfo(dtype if dtype != "bool" else "uint8")
        suffix = "LL" if dtype == "int64" else ("ULL" if dtype == "uint64" else "")
        items = [(f"({v + 1}{suffix}-1)" if v == info.min and info.min < 0 else f"{v}{suffix}") for v in
                 flat.astype(dtype if dtype != "bool" else "uint8").tolist()]
    lines = [", ".join(items[i:i + 24]) for i in range(0, len(items), 24)]
    return ",\n  ".join(lines)


def model_source(calls, inputs, outputs, buffers, arena: int) -> str:
    out = ['/* Generated by qcc: runs the model graph by calling the fused kernels in order. */',
           '#include "qcc_tvm_abi.h"', '#include "qcc_model.h"', "",
           f"static uint8_t qcc_arena[{max(arena, 1)}] QCC_ALIGNED;", ""]
    idx = {id(b): k for k, b in enumerate(buffers)}    # stable C names: qcc_shape_<k>, qcc_const_<k>
    for name in sorted({c[0] for c in calls}):
        out.append(f"int32_t __tvm_ffi_{name}(void* self, void* args, int32_t num_args, void* result);")
    out.append("")
    for b in buffers:
        dims = ", ".join(str(d) for d in b.shape) or "1"
        out.append(f"static int64_t qcc_shape_{idx[id(b)]}[] = {{{dims}}};")
        if b.kind == "const":
            out.append(f"static const {_C_TYPES[b.dtype]} qcc_const_{idx[id(b)]}[{max(1, int(np.prod(b.shape)))}] "
                       f"QCC_ALIGNED = {{\n  {_c_values(b.value, b.dtype)}\n}};")
    out.append("")
    params = [f"const {_C_TYPES[b.dtype]}* in{i}" for i, b in enumerate(inputs)] + \
             [f"{_C_TYPES[b.dtype]}* out{i}" for i, b in enumerate(outputs)]
    out.append(f"int qcc_model_run({', '.join(params)}) {{")
    out.append("  TVMFFIAny args[QCC_MODEL_MAX_ARGS];")
    out.append("  TVMFFIAny ret;")
    out.append("  DLTensor t[QCC_MODEL_MAX_ARGS];")
    out.append("  int i;")
    where = {}
    for i, b in enumerate(inputs):
        where[id(b)] = f"(void*)in{i}"
    for i, b in enumerate(outputs):
        where[id(b)] = f"(void*)out{i}"
    for b in buffers:
        if b.kind == "const":
            where[id(b)] = f"(void*)qcc_const_{idx[id(b)]}"
        elif b.kind == "temp":
            where[id(b)] = f"(void*)(qcc_arena + {b.offset})"
    for name, args in calls:
        out.append(f"  /* {name} */")
        for j, b in enumerate(args):
            code, bits = _dl_dtype(b.dtype)
            out.append(f"  t[{j}].data = {where[id(b)]}; t[{j}].ndim = {len(b.shape)}; "
                       f"t[{j}].dtype.code = {code}; t[{j}].dtype.bits = {bits}; t[{j}].shape = qcc_shape_{idx[id(b)]};")
        out.append(f"  for (i = 0; i < {len(args)}; ++i) {{ t[i].device.device_type = 1; t[i].device.device_id = 0; "
                   "t[i].dtype.lanes = 1; t[i].strides = NULL; t[i].byte_offset = 0; "
                   "args[i].type_index = QCC_TVMFFI_DLTENSOR_PTR; args[i].zero_padding = 0; args[i].v_ptr = &t[i]; }")
        out.append(f"  if (__tvm_ffi_{name}(NULL, args, {len(args)}, &ret) != 0) return -1;")
    out.append("  return 0;")
    out.append("}")
    return "\n".join(out) + "\n"


def header_source(inputs, outputs, calls, arena: int, workspace: int, spec: dict) -> str:
    lines = ["/* qcc model: generated. All buffers are C-order; see README of the artifact (docs/targets.md). */",
             "#ifndef QCC_MODEL_H", "#define QCC_MODEL_H", "#include <stdint.h>", "",
             f"#define QCC_MODEL_NUM_INPUTS {len(inputs)}", f"#define QCC_MODEL_NUM_OUTPUTS {len(outputs)}",
             f"#define QCC_MODEL_MAX_ARGS {max(len(a) for _, a in calls)}",
             f"#define QCC_MODEL_ARENA_BYTES {arena}", f"#define QCC_MODEL_WORKSPACE_BYTES {workspace}"]
    for i, (b, meta) in enumerate(zip(inputs, spec["inputs"])):
        lines.append(f"/* input {i}: {meta['name']} {b.dtype}{b.shape} */")
        lines.append(f"#define QCC_MODEL_INPUT{i}_SIZE {int(np.prod(b.shape))}")
    for i, (b, meta) in enumerate(zip(outputs, spec["outputs"])):
        lines.append(f"/* output {i}: {meta['name']} {b.dtype}{b.shape} */")
        lines.append(f"#define QCC_MODEL_OUTPUT{i}_SIZE {int(np.prod(b.shape))}")
    params = [f"const {_C_TYPES[b.dtype]}* in{i}" for i, b in enumerate(inputs)] + \
             [f"{_C_TYPES[b.dtype]}* out{i}" for i, b in enumerate(outputs)]
    lines += ["", "/* Runs the model once. Returns 0, or -1 with the reason in qcc_model_last_error().",
              "   Not reentrant: intermediate tensors live in one static arena. */",
              f"int qcc_model_run({', '.join(params)});", "const char* qcc_model_last_error(void);", "", "#endif", ""]
    return "\n".join(lines)


def main_source(inputs, outputs) -> str:
    """qcc_main.c: a demo / test runner with qcc_run's file protocol (input<i>.bin -> output<i>.bin)."""
    ins = [(f"in{i}", _C_TYPES[b.dtype], f"QCC_MODEL_INPUT{i}_SIZE") for i, b in enumerate(inputs)]
    outs = [(f"out{i}", _C_TYPES[b.dtype], f"QCC_MODEL_OUTPUT{i}_SIZE") for i, b in enumerate(outputs)]
    s = ["/* qcc_main <input dir> <output dir> [batches]: runs the model on input<i>.bin, writes output<i>.bin",
         "   and outputs.txt (dtype, rank, shape per output). A demo of the API in qcc_model.h. */",
         "#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>", '#include "qcc_model.h"', "",
         "static FILE* open_in(const char* dir, const char* name, const char* mode) {",
         "  char path[4096];", "  FILE* f;", '  snprintf(path, sizeof(path), "%s/%s", dir, name);',
         "  f = fopen(path, mode);", '  if (!f) { fprintf(stderr, "qcc_main: cannot open %s\\n", path); exit(1); }',
         "  return f;", "}", "", "int main(int argc, char** argv) {", "  long b, batches;", "  FILE* meta;"]
    for name, ctype, size in ins + outs:
        s.append(f"  static {ctype} {name}[{size}];")
    for i, _ in enumerate(ins):
        s.append(f"  FILE* fi{i};")
    for i, _ in enumerate(outs):
        s.append(f"  FILE* fo{i};")
    s += ['  if (argc < 3) { fprintf(stderr, "usage: %s <input dir> <output dir> [batches]\\n", argv[0]); return 2; }',
          "  batches = argc > 3 ? atol(argv[3]) : 1;"]
    for i, _ in enumerate(ins):
        s.append(f'  fi{i} = open_in(argv[1], "input{i}.bin", "rb");')
    for i, _ in enumerate(outs):
        s.append(f'  fo{i} = open_in(argv[2], "output{i}.bin", "wb");')
    s.append("  for (b = 0; b < batches; ++b) {")
    for i, (name, ctype, size) in enumerate(ins):
        s.append(f"    if (fread({name}, sizeof({ctype}), {size}, fi{i}) != {size}) "
                 f'{{ fprintf(stderr, "qcc_main: input{i}.bin too short\\n"); return 1; }}')
    call_args = ", ".join(n for n, _, _ in ins + outs)
    s.append(f'    if (qcc_model_run({call_args}) != 0) {{ fprintf(stderr, "qcc_main: %s\\n", qcc_model_last_error()); '
             "return 1; }")
    for i, (name, ctype, size) in enumerate(outs):
        s.append(f"    fwrite({name}, sizeof({ctype}), {size}, fo{i});")
    s.append("  }")
    for i, _ in enumerate(ins):
        s.append(f"  fclose(fi{i});")
    for i, _ in enumerate(outs):
        s.append(f"  fclose(fo{i});")
    s.append('  meta = open_in(argv[2], "outputs.txt", "w");')
    for b in outputs:
        dims = " ".join(str(d) for d in b.shape)
        s.append(f'  fprintf(meta, "{b.dtype} {len(b.shape)} {dims}\\n");')
    s += ["  fclose(meta);", "  return 0;", "}", ""]
    return "\n".join(s)


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
    (out_dir / IO_SPEC).write_text(json.dumps({**spec, "target": {"kind": "c"}}, indent=2) + "\n")
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

TOOLCHAINS = {
    "host": {"CC": "gcc", "AR": "ar", "size": "size", "run": []},
    "aarch64": {"CC": "aarch64-linux-gnu-gcc", "AR": "aarch64-linux-gnu-ar", "size": "aarch64-linux-gnu-size",
                "run": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]},
}


def make(tree: Path, build: Path, toolchain: str = "host", cflags: str = "-O2") -> Path:
    """Build the tree with its Makefile into `build`; returns the qcc_main path."""
    tc = TOOLCHAINS[toolchain]
    missing = [t for t in (tc["CC"], tc["AR"], "make", *tc["run"][:1]) if shutil.which(t) is None]
    if missing:
        raise QccError(f"building the C tree for {toolchain} needs {', '.join(missing)}")
    cmd = ["make", "-s", "-C", str(tree), f"CC={tc['CC']}", f"AR={tc['AR']}", f"BUILD={build}", f"CFLAGS={cflags}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise QccError(f"make of the C tree failed: {' | '.join((proc.stderr or proc.stdout).strip().splitlines()[-5:])}")
    return build / "qcc_main"


def code_size(build: Path, toolchain: str = "host") -> dict:
    """Bytes per object and section group from `size -A`: code (.text), rodata (weights, strings),
    data, bss (arena + workspace)."""
    tool = TOOLCHAINS[toolchain]["size"]
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

    def __init__(self, folder, toolchain: str = "host", cflags: str = "-O2"):
        self.folder = Path(folder)
        if not (self.folder / C_DIR / "Makefile").is_file():
            raise QccError(f"{self.folder} has no C tree ({C_DIR}/Makefile)")
        self.spec = json.loads((self.folder / IO_SPEC).read_text())
        self.toolchain = toolchain
        self._tmp = tempfile.TemporaryDirectory(prefix="qcc-c-")
        self.build = Path(self._tmp.name)
        self.exe = make(self.folder / C_DIR, self.build, toolchain, cflags)

    def sizes(self) -> dict:
        return code_size(self.build, self.toolchain)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        from .cross import chunks, read_outputs

        arrays, n, n_batches = chunks(self.spec, feeds)
        with tempfile.TemporaryDirectory(prefix="qcc-c-run-") as tmp:
            in_dir, out_dir = Path(tmp) / "in", Path(tmp) / "out"
            in_dir.mkdir()
            out_dir.mkdir()
            for i, x in enumerate(arrays):
                x.tofile(in_dir / f"input{i}.bin")
            cmd = [*TOOLCHAINS[self.toolchain]["run"], str(self.exe), str(in_dir), str(out_dir), str(n_batches)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise QccError(f"the C build failed to run: {proc.stderr.strip()[-300:]}")
            return read_outputs(out_dir, n, n_batches)
