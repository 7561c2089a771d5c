"""TVM backend: qcc's QDQ ONNX lowered to real integer code for x86 CPUs through Apache TVM.

    from qcc.backends import tvm as tvm_backend
    target = tvm_backend.detect_target()                     # {"kind": "llvm", "mcpu": "..."}
    info = tvm_backend.build(qdq_model, target, out_dir)     # out_dir/model.so + tvm_io.json
    outputs = tvm_backend.Runner(out_dir).run({"input": x})

See docs/tvm.md for the lowering and its requantization arithmetic.
"""

from .pipeline import IO_SPEC, LIBRARY, Runner, build, import_relax, input_shapes_from, io_spec, lower  # noqa: F401
from .lower import heavy_ops  # noqa: F401
from .target import detect_target, validate_target  # noqa: F401

__all__ = ["IO_SPEC", "LIBRARY", "Runner", "build", "detect_target", "heavy_ops", "import_relax",
           "input_shapes_from", "io_spec", "lower", "validate_target"]
