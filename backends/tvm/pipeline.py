"""QDQ ONNX -> Relax (TVM's ONNX frontend) -> integer Relax (lowering/) -> model.so.

The lowering every target shares (`import_relax`, `lower`) and the native build for this host's CPU
or a CUDA GPU (`build`); runtime.py runs what it builds."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from qcc.errors import QccError
from qcc.shapes import input_dims, symbol

from . import compat, cuda, fp8, onnx_converters, onnx_prep, schedules
from .artifact_io import BATCH, IO_SPEC, LIBRARY, input_shapes_from, write_spec  # noqa: F401  (re-exported)
from .compat import relax
from .lowering import lower_to_integer
from .target import validate_target

_ONNX_DTYPE = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
               onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT16: "int16",
               onnx.TensorProto.BOOL: "bool",
               onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.DOUBLE: "float64"}


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def io_spec(model: onnx.ModelProto, input_shapes: dict | None = None) -> dict:
    """Input names / dtypes / shapes and output names / dtypes. A dim is an int (static) or a symbol
    (str): the model's open dims (dim_param, -1, 0) are symbols (qcc.shapes.input_dims) unless `input_shapes`
    pins them; in `input_shapes` an int pins a dim, a str other than "batch" makes it that symbol
    (also over a static dim of the model), None or "batch" keeps the model's."""
    input_shapes = input_shapes or {}
    inputs = []
    for vi in _graph_inputs(model):
        tt = vi.type.tensor_type
        dims = input_dims(vi)
        given = input_shapes.get(vi.name)
        if given is not None:
            given = list(given)
            if not tt.HasField("shape"):
                dims = [symbol(vi.name, i) for i in range(len(given))]
            if len(given) != len(dims):
                raise QccError(f"input_shapes[{vi.name!r}] has rank {len(given)}, the model input has rank {len(dims)}")
            dims = [_given_dim(g, d) for g, d in zip(given, dims)]
        inputs.append({"name": vi.name, "dtype": _ONNX_DTYPE.get(tt.elem_type, "float32"), "shape": dims})
    outputs = [{"name": o.name, "dtype": _ONNX_DTYPE.get(o.type.tensor_type.elem_type, "float32")}
               for o in model.graph.output]
    return {"inputs": inputs, "outputs": outputs}


def _given_dim(given, model_dim):
    """An input_shapes entry over the model's dim: an int pins it, a name makes it that symbol; "batch"
    or None keeps the model's (a model fixed at batch 1 stays so)."""
    if isinstance(given, (int, np.integer)) and given > 0:
        return int(given)
    return given if isinstance(given, str) and given != BATCH else model_dim


def symbols(spec: dict) -> list[str]:
    """The symbolic dims of an io spec, in first-seen order."""
    out: list[str] = []
    for i in spec["inputs"]:
        out += [d for d in i["shape"] if isinstance(d, str) and d not in out]
    return out


def _extra_symbolic_vars(mod, declared) -> list[str]:
    """Symbolic dims the imported main defines besides the declared ones (e.g. range lengths)."""
    return sorted(compat.symbolic_var_names(mod["main"]) - set(declared))


def _import(model: onnx.ModelProto, spec: dict):
    syms = {name: compat.sym_var(name) for name in symbols(spec)}
    shape_dict = {i["name"]: [syms[d] if isinstance(d, str) else d for d in i["shape"]] for i in spec["inputs"]}
    if fp8.has_fp8(model):  # FP8 Q/DQ -> qcc's encode / decode on uint8 bits (fp8.py)
        model = _copy(model)
        fp8.prepare_onnx(model)
    try:
        with onnx_converters.patched():
            return compat.from_onnx(model, shape_dict=shape_dict)
    except Exception as exc:  # the frontend raises plain Python errors with long IR dumps
        first = str(exc).strip().splitlines()
        raise QccError(f"TVM's ONNX frontend could not import the model: {type(exc).__name__}: "
                       f"{first[-1] if first else ''}") from exc


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _static(model: onnx.ModelProto, spec: dict, sizes: dict) -> tuple[onnx.ModelProto, dict]:
    m = _copy(model)
    spec = json.loads(json.dumps(spec))
    missing = [s for s in symbols(spec) if s not in sizes]
    if missing:
        name, axis = next((i["name"], i["shape"].index(s)) for s in missing for i in spec["inputs"] if s in i["shape"])
        raise QccError(f"input {name!r} has a dynamic dimension {axis} ({missing[0]!r}) and this build is static: "
                       f"pass input_shapes={{{name!r}: [...]}} (e.g. the calibration sample shape) or build it "
                       "dynamic")
    for inp in spec["inputs"]:
        inp["shape"] = [int(sizes[d]) if isinstance(d, str) else d for d in inp["shape"]]
    onnx_prep.set_input_shapes(m, {i["name"]: i["shape"] for i in spec["inputs"]})
    onnx_prep.fold_static_shapes(m)
    return m, spec


_UNSUPPORTED_QTYPES = {
    onnx.TensorProto.FLOAT8E4M3FNUZ: "float8 e4m3fnuz", onnx.TensorProto.FLOAT8E5M2FNUZ: "float8 e5m2fnuz",
    onnx.TensorProto.INT4: "int4", onnx.TensorProto.UINT4: "uint4",
}


def check_supported(model: onnx.ModelProto) -> None:
    """The backend lowers int8 / uint8 and FP8 E4M3FN / E5M2 QDQ graphs; FNUZ FP8 and 4-bit schemes
    fail clearly, up front."""
    found = sorted({_UNSUPPORTED_QTYPES[t.data_type] for t in model.graph.initializer
                    if t.data_type in _UNSUPPORTED_QTYPES})
    if found:
        raise QccError(f"the TVM backend compiles int8 / uint8 and FP8 E4M3FN / E5M2 QDQ models; this one has "
                       f"{', '.join(found)} tensors (4-bit tensors need explicit packing): use --target onnx "
                       "for the w4a8 scheme")


def import_relax(model: onnx.ModelProto, input_shapes: dict | None = None, batch: int | None = 1,
                 sizes: dict | None = None, require_dynamic: bool = False):
    """The QDQ model as a Relax module (fake quantization: float ops between quantize / dequantize).

    ``batch``: the batch size of a static build (static shapes compile faster; the runner feeds other
    batch sizes in chunks), or None to keep every symbolic dim (io_spec) symbolic, so one library
    serves every size. ``sizes``: the value of each symbol in a static build (default: batch, and
    the build fails for any other symbol); also the fallback where a dynamic import leaves symbolic
    dims the VM cannot compute (transformers' attention-mask arithmetic) - unless ``require_dynamic``,
    then that is an error. Shape subgraphs are folded once shapes are static. Returns (module, io spec)."""
    check_supported(model)
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    onnx_prep.drop_shape_casts(model_copy)
    spec = io_spec(model_copy, input_shapes)
    declared = symbols(spec)
    reason = None
    if declared and batch is None:
        try:
            mod = _import(model_copy, spec)
            extra = _extra_symbolic_vars(mod, declared)
        except QccError as exc:
            extra = [str(exc)]
        if not extra:
            spec["static_batch"] = BATCH not in declared
            return mod, spec
        reason = f"dynamic {', '.join(declared)} leave other symbolic dims {extra[:4]}"
        if require_dynamic:
            raise QccError(f"this model cannot keep {', '.join(declared)} dynamic through TVM's ONNX import ({reason}): "
                           "build it with --static")
    sizes = {BATCH: batch or 1, **(sizes or {})}
    model_copy, spec = _static(model_copy, spec, sizes)
    spec["static_batch"] = True
    if reason:
        spec["static_batch_reason"] = reason
    return _import(model_copy, spec), spec


def lower(model: onnx.ModelProto, input_shapes: dict | None = None, batch: int | None = 1, **shapes):
    """Import (import_relax; `shapes`: its sizes / require_dynamic) and rewrite to integer Relax.
    Returns (module, spec, integer_ops, float_fallback)."""
    mod, spec = import_relax(model, input_shapes, batch, **shapes)
    mod, integer_ops, fallback = lower_to_integer(mod)
    # the float ops left between integer kernels (GELU's erf, softmax's exp, tanh): TVM's polynomial
    # approximations, which vectorize (libm's scalar erf/exp do not); here, so every target shares them
    mod = relax.transform.FastMathTransform()(mod)
    return mod, spec, integer_ops, fallback


def build(qdq_model: onnx.ModelProto, target: dict, out_dir: Path, input_shapes: dict | None = None,
          batch: int | None = 1, tune: dict | None = None, sizes: dict | None = None,
          ranges: dict | None = None, require_dynamic: bool = False) -> dict:
    """Compile a QDQ model to out_dir/model.so (+ out_dir/tvm_io.json for the runner).

    input_shapes: per input, its dims as ints (static) or symbols (str, dynamic; io_spec), e.g.
    {"x": ["batch", 3, 48, "width"]}; batch: the batch size of a static build, None to keep the
    symbols symbolic (one library for every size; import_relax); sizes: each symbol's value in a
    static build (or the fallback); ranges: {symbol: [min, max]} the runner accepts (written to
    tvm_io.json; absent: any size);
    tune: MetaSchedule tuning on x86 llvm, {"trials": N, "minutes": M or None, "quiet": bool} (tune.py)."""
    on_gpu = isinstance(target, dict) and target.get("kind") == "cuda"
    target = cuda.validate_target(target) if on_gpu else validate_target(target)
    if tune:
        from . import tune as tuning

        tuner_args = dict(tune)
        tuning.check_target(target)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mod, spec, integer_ops, fallback = lower(qdq_model, input_shapes, batch, sizes=sizes,
                                             require_dynamic=require_dynamic)
    dynamic = symbols(spec)
    if dynamic and ranges:
        spec["ranges"] = {k: [int(v[0]), None if v[1] is None else int(v[1])]
                          for k, v in ranges.items() if k in dynamic}
    t_lower = time.perf_counter() - t0
    # x86 llvm: qcc's packed int8 kernels + rule-based schedules (schedules/); elsewhere TVM's default
    tuned, schedule_info = None, {}
    if tune:
        ex, t_compile, schedule_info, tuned = tuning.compile_module(mod, target, tuner_args.pop("trials"),
                                                                    **tuner_args)
    elif on_gpu:
        ex, t_compile = cuda.compile_module(mod, target)
    else:
        ex, t_compile, schedule_info = schedules.compile_module(mod, target)
    kernels = cuda.check_kernels(ex, target) if on_gpu else None   # nvcc: a broken kernel fails the build
    t1 = time.perf_counter()
    # write next to the destination and rename, so a failed export never leaves a partial model.so
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        compat.export_library(ex, Path(tmp))
        os.replace(tmp, out_dir / LIBRARY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    t_export = time.perf_counter() - t1
    info = {
        "target": target,
        "mcpu": target.get("mcpu"),
        "integer_ops": integer_ops,
        "float_fallback": fallback,
        "inputs": spec["inputs"],
        "static_batch": spec["static_batch"],
        "dynamic": {k: spec.get("ranges", {}).get(k) for k in dynamic},
        "build_s": round(time.perf_counter() - t0, 3),
        "timings": {"import_lower_s": round(t_lower, 3), "compile_s": round(t_compile, 3),
                    "export_s": round(t_export, 3)},
        "versions": compat.check_versions(),
        "files": {"library": LIBRARY, "io": IO_SPEC},
    }
    if spec.get("static_batch_reason"):
        info["static_reason"] = spec["static_batch_reason"]
    if kernels is not None:
        info["cuda"] = kernels
    if tuned is not None:
        info["tune"] = tuned
    if schedule_info:
        info["cpu_schedule"] = schedule_info
    write_spec(out_dir, {**spec, "target": target})
    return info
