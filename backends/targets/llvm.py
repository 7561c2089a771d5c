"""--target llvm (x86-64): integer code for this kind of CPU, built by TVM into model.so."""

from qcc.target_record import Target

from . import TVM, TVM_SCHEMES

TARGET = Target("llvm", "integer code built by TVM (model.so)", aliases=("x86-64",), **TVM_SCHEMES, rank=10,
                output="a library (model.so)", options=frozenset({"tune", "shapes"}),
                configure=f"{TVM}.target:configure", build=f"{TVM}.native:build_llvm",
                runner=f"{TVM}.runtime:open_runner",
                verify="run here, against onnxruntime", samples=16)
