"""--target c: a runtime-free C99 source tree (TVM's kernels as C, a static plan, a Makefile)."""

from qcc.target_record import Target

from . import EDGE_HELP, EDGE_SCHEMES, TVM

TARGET = Target("c", EDGE_HELP, **EDGE_SCHEMES, rank=40, output="an artifact folder",
                configure=f"{TVM}.c_source:configure", build=f"{TVM}.c_source:build_artifact",
                runner=f"{TVM}.c_source:open_runner", layout="tree", tools=("gcc", "make"),
                verify="the tree built with the host gcc and run, against onnxruntime", samples=2)
