"""The text of the `c` target's source tree (c_source.py decides what goes in it).

Fixed files: ``qcc_tvm_abi.h`` (the slice of the DLPack / tvm-ffi C ABI the generated kernels use),
``qcc_runtime.c`` (the three runtime symbols they call, over static memory) and the ``Makefile``.
Generated from the call sequence and the arena plan: ``model.c`` (constants, the arena, one packed
call per kernel), ``qcc_model.h`` (the API and sizes) and ``qcc_main.c`` (a demo / test runner with
qcc_run's file protocol). No TVM here: plain strings and numpy.
"""

from __future__ import annotations

import re

import numpy as np

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
