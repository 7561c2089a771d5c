"""TVM backend: qcc's QDQ ONNX lowered to real integer code for x86 CPUs through Apache TVM.

    from qcc.backends import tvm as tvm_backend
    target = tvm_backend.detect_target()                     # {"kind": "llvm", "mcpu": "..."}
    info = tvm_backend.build(qdq_model, target, out_dir)     # out_dir/model.so + tvm_io.json
    outputs = tvm_backend.Runner(out_dir).run({"input": x})

See docs/tvm.md for the lowering and its requantization arithmetic. The modules import one
another one way only (tests/test_targets_registry.py checks it), bottom to top:

    compat              the TVM version check (imported first, below) and 0.27's renamed API
    artifact_io         file names (model.so, tvm_io.json), io spec, the bundled runners' file protocol
    exactness           outputs vs onnxruntime on the same QDQ graph (no TVM)
    lowering/, fp8, fixedpoint, onnx_prep, dotprod_layout, coverage, schedules/, tune, target, cuda
                        lowering, CPU schedules, MetaSchedule, target dicts, the CUDA pipeline
    pipeline            ONNX -> integer Relax for every target; the native build (model.so)
    cross, c_source (+ c_tree)
                        the aarch64 / hexagon and c builds, with their runners
    runtime             the Relax VM runner; Runner(folder) opens any build's runner
    native, verify      the llvm / cuda builds as the compiler drives them; teacher-forced checks

Which target builds with what is the compiler's target registry (qcc/targets.py).
"""

from . import compat  # noqa: F401,I001  (first: the version check runs before anything imports tvm)
from .pipeline import IO_SPEC, LIBRARY, build, import_relax, input_shapes_from, io_spec, lower  # noqa: F401
from .lowering import heavy_ops  # noqa: F401
from .runtime import Runner  # noqa: F401
from .target import detect_target, validate_target  # noqa: F401

__all__ = ["IO_SPEC", "LIBRARY", "Runner", "build", "detect_target", "heavy_ops", "import_relax",
           "input_shapes_from", "io_spec", "lower", "validate_target"]
