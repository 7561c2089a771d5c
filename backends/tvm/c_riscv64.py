"""The riscv64 target: the portable C tree (c_source.py) cross-built for 64-bit RISC-V Linux boards.

TVM's wheels carry no RISC-V runtime, so the runtime-free C tree is the route onto these boards:
``qcc compile --target riscv64`` writes the same tree as ``--target c``, builds it with Debian's
``riscv64-linux-gnu-gcc`` for rv64gc (the Linux profile: integer multiply, atomics, float and double,
compressed) and runs it under ``qemu-riscv64`` against onnxruntime on the same QDQ graph. On a board:
``make -C c CC=gcc`` and ``./build/qcc_main IN OUT N`` (docs/targets.md). The kernels are integer
C with int32 accumulators, so the codes are the host build's, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

from qcc.errors import QccError

from . import c_source
from .c_source import CRunner, Toolchain

SYSROOT = "/usr/riscv64-linux-gnu"
RISCV64 = Toolchain("riscv64", "riscv64-linux-gnu-gcc", "riscv64-linux-gnu-ar", "riscv64-linux-gnu-size",
                    ("qemu-riscv64", "-L", SYSROOT))
CFLAGS = "-O2 -march=rv64gc -mabi=lp64d"


class RiscvRunner(CRunner):
    """The artifact's C tree built for riscv64, run under qemu-riscv64."""

    def __init__(self, folder, cflags: str = CFLAGS):
        super().__init__(folder, RISCV64, cflags)


def configure(options) -> dict:
    """`qcc compile --target riscv64`: the C tree's code is chosen by its compiler flags, not TVM's."""
    if options.mcpu is not None or options.mattr is not None:
        raise QccError("--target riscv64 builds portable C for rv64gc: --mcpu / --mattr do not apply "
                       "(pass CFLAGS to make on the board instead)")
    return {"kind": "c"}


def build_artifact(job) -> dict:
    """The c target's build (c_source.build_artifact), checked with the riscv64 build under qemu."""
    info = c_source.build_artifact(job, RiscvRunner, RISCV64.name)
    info["target"] = "riscv64"
    return info


def open_runner(folder: Path, threads: int | None = None) -> RiscvRunner:
    """The riscv64 target's runner (qemu-riscv64 here; `threads` does not apply: the tree is serial)."""
    return RiscvRunner(folder)
