"""--target riscv64: the portable C tree, cross-built for 64-bit RISC-V Linux and checked under qemu."""

from qcc.target_record import Target

from . import EDGE_SCHEMES, TVM

TARGET = Target("riscv64", "RISC-V Linux boards: the C tree built for rv64gc (docs/targets.md)", **EDGE_SCHEMES,
                rank=45, output="an artifact folder",
                configure=f"{TVM}.c_riscv64:configure", build=f"{TVM}.c_riscv64:build_artifact",
                runner=f"{TVM}.c_riscv64:open_runner", layout="tree",
                build_tools=(), tools=("riscv64-linux-gnu-gcc", "qemu-riscv64", "make"),
                verify="the tree built with riscv64-linux-gnu-gcc and run under qemu-riscv64, against onnxruntime",
                samples=2)
