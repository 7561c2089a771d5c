"""--target aarch64: a board folder (model.so cross-built by TVM, a C++ runner), run here under qemu."""

from qcc.target_record import Target

from . import EDGE_HELP, EDGE_SCHEMES, TVM

TARGET = Target("aarch64", EDGE_HELP, **EDGE_SCHEMES, rank=30, output="an artifact folder",
                configure=f"{TVM}.cross:configure_aarch64", build=f"{TVM}.cross:build_aarch64_artifact",
                runner=f"{TVM}.cross:open_runner", layout="tree",
                build_tools=("aarch64-linux-gnu-g++", "aarch64-linux-gnu-objdump"), tools=("qemu-aarch64",),
                verify="run under qemu-aarch64, against onnxruntime", samples=2)
